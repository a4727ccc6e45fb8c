//! Status reports from nodes: what each node says about the objects it runs, folded into their
//! `status` (per node for the kinds that live on several nodes).

use std::collections::BTreeMap;

use serde_json::json;

use super::{ApiError, Applied, Change, Resource, SnapshotReport, State, StatusReport};
use crate::model::*;

/// A kind whose nodes report a [`Status`] on it.
pub(super) trait Reported: Resource {
    fn status_and_meta(&mut self) -> (&mut Status, &mut Meta);
}

macro_rules! reported {
    ($($ty:ty),*) => {$(
        impl Reported for $ty {
            fn status_and_meta(&mut self) -> (&mut Status, &mut Meta) {
                (&mut self.status, &mut self.meta)
            }
        }
    )*};
}

reported!(
    Vm,
    Pod,
    Volume,
    Nic,
    Network,
    SecurityGroup,
    Template,
    Backup,
    Replication
);

impl State {
    pub(super) fn update_statuses(
        &mut self,
        index: u64,
        node_id: &str,
        reports: &[StatusReport],
        now: &str,
    ) -> Applied {
        if !self.nodes.contains_key(node_id) {
            return Err(ApiError::not_found(Kind::Node, node_id));
        }
        let mut accepted = 0u32;
        let mut unknown = Vec::new();
        let mut changes = Vec::new();
        for report in reports {
            let mut status = report.status.clone();
            status.node_id = Some(node_id.to_string());
            status.updated_at = Some(now.to_string());
            // A volume's snapshots ride along with the volume's report.
            let snapshots_changed = report.kind == Kind::Volume
                && self
                    .volumes
                    .get_mut(&report.id)
                    .filter(|v| v.node_id.as_deref() == Some(node_id))
                    .is_some_and(|v| apply_snapshot_reports(v, &report.snapshots));
            let (id, node) = (report.id.as_str(), Some(node_id));
            // A cold move's one-off schedule (`state/cold_move.rs`) is no replication object.
            if report.kind == Kind::Replication && !self.replications.contains_key(id) {
                if let Some(c) = self.cold_move_reported(index, node_id, id, &status, now) {
                    accepted += 1;
                    changes.extend(c);
                    continue;
                }
            }
            // A VM's report counts from its node only, a volume's also before it is placed.
            let slot = match report.kind {
                Kind::Vm => self.slot::<Vm>(id, |v| v.node_id.as_deref() == node),
                Kind::Pod => self.slot::<Pod>(id, |p| p.node_id.as_deref() == node),
                Kind::Volume => {
                    self.slot::<Volume>(id, |v| v.node_id.is_none() || v.node_id.as_deref() == node)
                }
                Kind::Nic => self.slot::<Nic>(id, |_| true),
                Kind::Network => self.slot::<Network>(id, |_| true),
                Kind::SecurityGroup => self.slot::<SecurityGroup>(id, |_| true),
                Kind::Template => self.slot::<Template>(id, |_| true),
                Kind::Backup => self.slot::<Backup>(id, |b| b.node_id.as_deref() == node),
                Kind::Replication => {
                    let source = self.replication_source(id).map(String::from);
                    self.slot::<Replication>(id, |_| source.as_deref() == node)
                }
                _ => None,
            };
            let Some((slot, meta)) = slot else {
                // The target of a live migration reports the incoming VM before it owns it.
                if !(report.kind == Kind::Vm && self.migrating_to(&report.id, node_id)) {
                    unknown.push(report.id.clone());
                }
                continue;
            };
            accepted += 1;
            let status = if report.kind.is_multi_node() {
                merge_node_report(slot, node_id, status)
            } else {
                status
            };
            let mut same = slot.clone();
            same.updated_at = status.updated_at.clone();
            same.nodes.values_mut().for_each(|n| n.updated_at = None);
            let mut cmp = status.clone();
            cmp.nodes.values_mut().for_each(|n| n.updated_at = None);
            if same == cmp && !snapshots_changed {
                continue;
            }
            *slot = status;
            meta.revision = index;
            meta.updated_at = now.to_string();
            changes.push(self.change(report.kind, &report.id, "status"));
            if report.kind == Kind::Backup {
                // A backup that became ready may push older ones out of its volume's retention.
                changes.extend(self.apply_backup_retention(index, &report.id));
            }
        }
        // Migration reports ride on VM reports, whether or not the status itself changed.
        for report in reports.iter().filter(|r| r.kind == Kind::Vm) {
            if let Some(update) = &report.migration {
                changes.extend(self.migration_reported(index, node_id, &report.id, update, now));
            }
        }
        Ok((
            Json::of(&json!({"accepted": accepted, "unknown_ids": unknown})),
            changes,
        ))
    }

    /// The status and meta of object `id` of kind `R`, if `accept` takes a report on it.
    fn slot<R: Reported + 'static>(
        &mut self,
        id: &str,
        accept: impl Fn(&R) -> bool,
    ) -> Option<(&mut Status, &mut Meta)> {
        R::map_mut(self)
            .get_mut(id)
            .filter(|o| accept(o))
            .map(Reported::status_and_meta)
    }

    /// Drops a removed node's reports from every multi-node resource and re-derives their
    /// top-level status.
    pub(super) fn forget_node_reports(&mut self, index: u64, node_id: &str) -> Vec<Change> {
        let mut touched = Vec::new();
        let statuses = self
            .networks
            .iter_mut()
            .map(|(id, o)| (Kind::Network, id, &mut o.status, &mut o.meta))
            .chain(
                self.security_groups
                    .iter_mut()
                    .map(|(id, o)| (Kind::SecurityGroup, id, &mut o.status, &mut o.meta)),
            )
            .chain(
                self.templates
                    .iter_mut()
                    .map(|(id, o)| (Kind::Template, id, &mut o.status, &mut o.meta)),
            );
        for (kind, id, status, meta) in statuses {
            if status.nodes.contains_key(node_id) {
                let mut nodes = std::mem::take(&mut status.nodes);
                nodes.remove(node_id);
                *status = aggregate_node_reports(nodes, status.observed_revision);
                meta.revision = index;
                touched.push((kind, id.clone()));
            }
        }
        touched
            .into_iter()
            .map(|(kind, id)| self.change(kind, &id, "status"))
            .collect()
    }
}

/// Copies a node's snapshot reports into the volume's snapshots; true when one changed.
/// Snapshots the node does not mention keep their state (pending until it reports them).
fn apply_snapshot_reports(volume: &mut Volume, reports: &[SnapshotReport]) -> bool {
    let mut changed = false;
    for r in reports {
        if let Some(snap) = volume.snapshots.iter_mut().find(|s| s.id == r.id) {
            if snap.status != r.status {
                snap.status = r.status.clone();
                changed = true;
            }
        }
    }
    changed
}

/// Folds one node's report on a multi-node resource into its status: the report is kept under
/// the node's id and the top-level fields are re-derived from all nodes' reports.
fn merge_node_report(current: &Status, node_id: &str, report: Status) -> Status {
    let mut nodes = current.nodes.clone();
    nodes.insert(
        node_id.to_string(),
        PerNodeStatus {
            phase: report.phase,
            message: report.message,
            updated_at: report.updated_at,
            import_bytes_done: report.import_bytes_done,
            import_bytes_total: report.import_bytes_total,
        },
    );
    aggregate_node_reports(nodes, report.observed_revision)
}

/// The top-level status of a multi-node resource: a copy of the least advanced node's report
/// (failed, then anything in progress, then ready; ties go to the smallest node id), with the
/// node named in the message when more than one node reports.
pub(super) fn aggregate_node_reports(
    nodes: BTreeMap<String, PerNodeStatus>,
    observed_revision: u64,
) -> Status {
    fn rank(phase: Phase) -> u8 {
        match phase {
            Phase::Failed => 0,
            Phase::Ready | Phase::Running => 2,
            _ => 1,
        }
    }
    let worst = nodes
        .iter()
        .min_by_key(|(id, n)| (rank(n.phase), id.as_str()))
        .map(|(id, n)| (id.clone(), n.clone()));
    let Some((worst_id, worst)) = worst else {
        return Status::default();
    };
    let message = if nodes.len() > 1 && !worst.message.is_empty() {
        format!("node {worst_id}: {}", worst.message)
    } else {
        worst.message.clone()
    };
    // Neither side hides the other: a node's failure shows in the phase, and the nodes where
    // the resource is usable show in a condition (a failed import on one node never hides the
    // ready copy on another).
    let ready: Vec<&str> = nodes
        .iter()
        .filter(|(_, n)| rank(n.phase) == 2)
        .map(|(id, _)| id.as_str())
        .collect();
    let mut conditions = Vec::new();
    if nodes.len() > 1 && !ready.is_empty() && ready.len() < nodes.len() {
        conditions.push(Condition {
            kind: "ready_on_nodes".into(),
            status: "true".into(),
            message: format!(
                "ready on {} of {} nodes: {}",
                ready.len(),
                nodes.len(),
                ready.join(", ")
            ),
        });
    }
    Status {
        phase: worst.phase,
        message,
        conditions,
        node_id: Some(worst_id),
        observed_revision,
        updated_at: worst.updated_at.clone(),
        import_bytes_done: worst.import_bytes_done,
        import_bytes_total: worst.import_bytes_total,
        nodes,
        ..Status::default()
    }
}
