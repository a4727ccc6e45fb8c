//! Replication schedules in the node specs: the source (the VM's node) gets the schedule with
//! its targets, each target gets it too (it prunes the replicas it holds to `keep`), and both
//! get one [`proto::TransferGrant`] per target (id `replication-<replication id>-<target id>`)
//! that lets the source push the VM's volumes there.
//!
//! A target that is not a node (any more) or is the VM's current node (after a failover or
//! migration onto it) is left out; a VM on no node replicates nowhere.

use sha2::{Digest, Sha256};

use super::Desired;
use crate::model::{ReplicaReport, Replication};
use crate::proto;
use crate::state::State;

/// The targets replication `r` pushes to now: its spec's targets that are nodes and not the
/// source. `None` while its VM is on no node.
fn live_targets<'a>(state: &'a State, r: &'a Replication) -> Option<(&'a str, Vec<&'a str>)> {
    let source = state.vms.get(&r.spec.vm_id)?.node_id.as_deref()?;
    let targets = r
        .spec
        .targets
        .iter()
        .map(String::as_str)
        .filter(|t| *t != source && state.nodes.contains_key(*t))
        .collect();
    Some((source, targets))
}

/// The grant id of replication `id` to node `target`.
fn grant_id(id: &str, target: &str) -> String {
    format!("replication-{id}-{target}")
}

/// The grant's secret: derived from the two nodes' console secrets (never shown by the API)
/// and the grant id, so every member computes the same one and nothing new is stored.
fn grant_token(state: &State, source: &str, target: &str, grant: &str) -> String {
    let mut h = Sha256::new();
    for node in [source, target] {
        let secret = state.nodes.get(node).map(|n| n.console_secret.as_str());
        h.update(secret.unwrap_or_default().as_bytes());
        h.update([0]);
    }
    h.update(grant.as_bytes());
    hex::encode(h.finalize())
}

/// The replications the node is the source or a target of.
pub(super) fn replications(cx: &mut Desired) -> Vec<proto::ReplicationSpec> {
    let (state, node_id) = (cx.state, cx.node_id);
    let mut out = Vec::new();
    for r in state.replications.values() {
        let Some((source, targets)) = live_targets(state, r) else {
            continue;
        };
        // Without a target (all gone, or the VM moved onto the only one) nothing runs.
        if targets.is_empty() || (source != node_id && !targets.contains(&node_id)) {
            continue;
        }
        let vm = &state.vms[&r.spec.vm_id];
        cx.bump(r.meta.spec_revision);
        cx.bump(vm.meta.spec_revision);
        out.push(proto::ReplicationSpec {
            id: r.meta.id.clone(),
            vm_id: r.spec.vm_id.clone(),
            volume_ids: vm.spec.volume_ids.clone(),
            source_node_id: source.to_string(),
            targets: targets
                .iter()
                .map(|t| proto::ReplicationTarget {
                    node_id: t.to_string(),
                    grant_id: grant_id(&r.meta.id, t),
                })
                .collect(),
            interval_secs: r.spec.interval_secs,
            keep: r.spec.keep,
            trace_id: r.meta.trace_id.clone().unwrap_or_default(),
        });
    }
    cold_moves(cx, &mut out);
    out
}

/// The one-off schedules of the cold moves off the node (`state/cold_move.rs`): id = the
/// migration id, one target, pushed with the migration's grant; to the source only.
fn cold_moves(cx: &mut Desired, out: &mut Vec<proto::ReplicationSpec>) {
    let (state, node_id) = (cx.state, cx.node_id);
    for vm in state.vms.values() {
        let Some(m) = vm.migration.as_ref() else {
            continue;
        };
        if !m.cold || !m.phase.is_active() || m.source_node_id != node_id {
            continue;
        }
        cx.bump(vm.meta.spec_revision);
        out.push(proto::ReplicationSpec {
            id: m.id.clone(),
            vm_id: vm.meta.id.clone(),
            volume_ids: vm.spec.volume_ids.clone(),
            source_node_id: m.source_node_id.clone(),
            targets: vec![proto::ReplicationTarget {
                node_id: m.target_node_id.clone(),
                grant_id: m.id.clone(),
            }],
            interval_secs: crate::state::COLD_MOVE_INTERVAL_SECS,
            // The move's own snapshots are few; the VM's schedules prune theirs.
            keep: 100,
            trace_id: vm.meta.trace_id.clone().unwrap_or_default(),
        });
    }
}

/// The transfer grants of the replications from or to the node: one per (replication, target).
pub(super) fn grants(cx: &mut Desired, out: &mut Vec<proto::TransferGrant>) {
    let (state, node_id) = (cx.state, cx.node_id);
    for r in state.replications.values() {
        let Some((source, targets)) = live_targets(state, r) else {
            continue;
        };
        let vm = &state.vms[&r.spec.vm_id];
        for target in targets {
            if source != node_id && target != node_id {
                continue;
            }
            let Some(t) = state.nodes.get(target) else {
                continue;
            };
            cx.bump(r.meta.spec_revision);
            cx.bump(vm.meta.spec_revision);
            cx.bump(t.meta.spec_revision);
            let id = grant_id(&r.meta.id, target);
            out.push(proto::TransferGrant {
                token: grant_token(state, source, target, &id),
                id,
                source_node_id: source.to_string(),
                target_node_id: target.to_string(),
                target_endpoint: t.status.console_endpoint.clone(),
                volume_ids: vm.spec.volume_ids.clone(),
                vm_id: String::new(),
                purpose: format!("replication {}", r.meta.id),
            });
        }
    }
}

/// A source node's replica reports in domain form (bounded like every other report field).
pub fn replica_reports(reports: Vec<proto::ReplicaReport>) -> Vec<ReplicaReport> {
    fn text(s: &str, max: usize) -> Option<String> {
        (!s.is_empty()).then(|| s.chars().take(max).collect())
    }
    reports
        .into_iter()
        .take(256)
        .map(|r| ReplicaReport {
            volume_id: r.volume_id.chars().take(64).collect(),
            target_node_id: r.target_node_id.chars().take(64).collect(),
            last_snapshot_id: text(&r.last_snapshot_id, 64),
            last_replicated_at: (r.last_replicated_at > 0)
                .then(|| {
                    chrono::DateTime::from_timestamp(r.last_replicated_at, 0)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                })
                .flatten(),
            last_bytes: r.last_bytes,
            last_incremental: r.last_incremental,
            last_error: text(&r.last_error, 4096),
            lag_secs: r.lag_secs,
        })
        .collect()
}
