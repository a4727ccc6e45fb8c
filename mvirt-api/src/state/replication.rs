//! Replication schedules (`/v1/replications`): a VM's volumes are sent every `interval_secs`
//! from the VM's node to each target node, where they are kept as replicas. The source is the
//! VM's node at any time (a migrated or failed-over VM replicates from its new node); the
//! source node reports the status (one [`ReplicaReport`] per volume and target). One VM is
//! replicated to one target by at most one schedule (two would fight over one replica). A
//! deleted VM takes its schedules along (the replicas stay on their nodes).

use super::{stamp, ApiError, Change, Removed, Resource, SpecChanged, State};
use crate::model::*;

impl Resource for Replication {
    type Spec = ReplicationSpec;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_new(Kind::Replication, &new.meta)?;
        s.resolve_replication(&new.meta.project, &mut new.spec);
        s.check_replication(&new.meta.id, &new.meta.project, &new.spec)?;
        new.status = Status::default();
        Ok(())
    }

    fn update_spec(s: &mut State, _: u64, id: &str, mut new: ReplicationSpec) -> SpecChanged {
        let project = s.replications[id].meta.project.clone();
        s.resolve_replication(&project, &mut new);
        let old = &s.replications[id];
        if new == old.spec {
            return Ok((false, Vec::new()));
        }
        if new.vm_id != old.spec.vm_id {
            return Err(ApiError::invalid(
                "a replication's vm_id cannot change; create a new replication",
            ));
        }
        s.check_replication(id, &project, &new)?;
        if let Some(r) = s.replications.get_mut(id) {
            // Reports about targets no longer named go with the old spec.
            r.status
                .replicas
                .retain(|rep| new.targets.contains(&rep.target_node_id));
            r.spec = new;
        }
        Ok((true, Vec::new()))
    }

    fn delete(s: &mut State, _: u64, id: &str, _: bool) -> Removed {
        s.replications.remove(id);
        Ok(Vec::new())
    }
}

impl State {
    /// Names in a replication spec become ids: the VM's (in `project`) and the targets'.
    fn resolve_replication(&self, project: &str, spec: &mut ReplicationSpec) {
        if !self.vms.contains_key(&spec.vm_id) {
            if let Some(id) = self.id_by_name(Kind::Vm, project, &spec.vm_id) {
                spec.vm_id = id;
            }
        }
        for target in &mut spec.targets {
            if !self.nodes.contains_key(target) {
                if let Some(id) = self.id_by_name(Kind::Node, "", target) {
                    *target = id;
                }
            }
        }
    }

    /// The references of a replication spec hold: its VM is in its project, its targets are
    /// nodes, and no other schedule replicates the VM to one of them.
    fn check_replication(
        &self,
        id: &str,
        project: &str,
        spec: &ReplicationSpec,
    ) -> Result<(), ApiError> {
        let vm = self.get::<Vm>(&spec.vm_id)?;
        if vm.meta.project != project {
            return Err(ApiError::invalid(format!(
                "VM {} is in project {:?}, not {project:?}: a replication lives in its VM's project",
                vm.meta.name, vm.meta.project
            )));
        }
        for (i, target) in spec.targets.iter().enumerate() {
            if spec.targets[..i].contains(target) {
                return Err(ApiError::invalid(format!("target {target} is named twice")));
            }
            if !self.nodes.contains_key(target) {
                return Err(ApiError::not_found(Kind::Node, target));
            }
            if vm.node_id.as_deref() == Some(target.as_str()) {
                return Err(ApiError::invalid(format!(
                    "target {target} is the VM's own node: replicate to another node"
                )));
            }
            let other = self.replications.values().find(|r| {
                r.meta.id != id && r.spec.vm_id == spec.vm_id && r.spec.targets.contains(target)
            });
            if let Some(other) = other {
                return Err(ApiError::conflict(format!(
                    "replication {} already replicates VM {} to node {target}",
                    other.meta.name, vm.meta.name
                )));
            }
        }
        Ok(())
    }

    /// Removes the replications of the deleted VM `vm_id`.
    pub(super) fn remove_replications_of(&mut self, vm_id: &str) -> Vec<Change> {
        let ids: Vec<String> = self
            .replications
            .values()
            .filter(|r| r.spec.vm_id == vm_id)
            .map(|r| r.meta.id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let r = self.replications.remove(&id)?;
                Some(State::removed(Kind::Replication, &id, &r.meta.project))
            })
            .collect()
    }

    /// Re-protection after VM `vm_id` moved from node `from` to node `to` (an HA failover, or a
    /// completed live migration onto one of its replication targets):
    /// each of its schedules that replicated to `to` replicates back to `from` instead (what
    /// Proxmox does after a failover or migration onto a replication target), unless some
    /// schedule of the VM names `from` already. The reports about `to` go (they described
    /// replicas of the old source); the schedule is `pending` until the new source reports.
    /// Pushes to `from` fail until it has deleted its old copy of the volumes (at once after a
    /// migration; once it is back after a failover), then it gets a full stream. Returns the
    /// changes.
    pub(super) fn reverse_replications(
        &mut self,
        at: u64,
        now: &str,
        vm_id: &str,
        from: &str,
        to: &str,
    ) -> Vec<Change> {
        let named = |r: &Replication, node: &str| r.spec.targets.iter().any(|t| t == node);
        let of_vm = |r: &&Replication| r.spec.vm_id == vm_id;
        if self
            .replications
            .values()
            .filter(of_vm)
            .any(|r| named(r, from))
        {
            return Vec::new();
        }
        let ids: Vec<String> = self
            .replications
            .values()
            .filter(of_vm)
            .filter(|r| named(r, to))
            .map(|r| r.meta.id.clone())
            .collect();
        let mut changes = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let Some(r) = self.replications.get_mut(id) else {
                continue;
            };
            if i == 0 {
                for target in &mut r.spec.targets {
                    if target == to {
                        *target = from.to_string();
                    }
                }
            } else {
                // A second schedule naming `to` (none can: one VM, one target, one schedule).
                r.spec.targets.retain(|t| t != to);
            }
            r.status.replicas.retain(|rep| rep.target_node_id != to);
            r.status.phase = Phase::Pending;
            r.status.message = format!(
                "re-targeted to node {from} after the HA failover of the VM to node {to}: \
                 no replica there yet"
            );
            stamp(&mut r.meta, at, now, true);
            changes.push(self.change(Kind::Replication, id, "retargeted"));
        }
        changes
    }

    /// The node replication `id` is sent from now: its VM's node.
    pub fn replication_source(&self, id: &str) -> Option<&str> {
        let r = self.replications.get(id)?;
        self.vms.get(&r.spec.vm_id)?.node_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;
    use crate::nodespec::desired_for;

    fn node(id: &str, name: &str) -> Node {
        online_node(id, name)
    }

    /// VM `vm1` ("web", volume v1) on node n1; nodes n1, n2, n3.
    fn with_vm() -> State {
        let mut s = state_after(&[volume("v1", "data")]);
        for (id, name) in [("n1", "one"), ("n2", "two"), ("n3", "three")] {
            s.nodes.insert(id.into(), node(id, name));
        }
        let spec: VmSpec = serde_json::from_value(serde_json::json!({
            "vcpus": 1, "memory_bytes": 128u64 << 20, "volume_ids": ["v1"]
        }))
        .unwrap();
        let mut vm = Vm::new(meta("vm1", "web"), spec);
        vm.node_id = Some("n1".into());
        s.vms.insert("vm1".into(), vm);
        s.volumes.get_mut("v1").unwrap().node_id = Some("n1".into());
        // Inserted behind apply's back: the name index is rebuilt on the next lookup.
        s.names = Default::default();
        s
    }

    fn schedule(id: &str, name: &str, vm: &str, targets: &[&str]) -> Proposal {
        p(Command::CreateReplication {
            replication: Replication::new(
                meta(id, name),
                ReplicationSpec {
                    vm_id: vm.into(),
                    targets: targets.iter().map(|t| t.to_string()).collect(),
                    interval_secs: 60,
                    keep: 3,
                },
            ),
        })
    }

    fn report(s: &mut State, index: u64, node: &str) -> serde_json::Value {
        let report: StatusReport = serde_json::from_value(serde_json::json!({
            "kind": "replication", "id": "r1",
            "status": {"phase": "ready", "replicas": [{
                "volume_id": "v1", "target_node_id": "n2", "last_snapshot_id": "s1",
                "last_replicated_at": "2026-12-07T17:00:00Z", "last_bytes": 10,
                "last_incremental": false, "lag_secs": 0
            }]}
        }))
        .unwrap();
        let command = Command::UpdateStatuses {
            node_id: node.into(),
            reports: vec![report],
            now: "t2".into(),
        };
        s.apply(index, &p(command)).0.result.unwrap().to_value()
    }

    #[test]
    fn a_schedule_names_a_vm_and_other_nodes_once() {
        let mut s = with_vm();
        // Names become ids.
        s.apply(10, &schedule("r1", "dr", "web", &["two"]))
            .0
            .result
            .unwrap();
        assert_eq!(s.replications["r1"].spec.vm_id, "vm1");
        assert_eq!(s.replications["r1"].spec.targets, ["n2"]);

        let err = refused(&mut s, 11, &schedule("r2", "own", "vm1", &["n1"]));
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{err}");
        assert!(err.message.contains("VM's own node"), "{err}");
        let err = refused(&mut s, 11, &schedule("r2", "twice", "vm1", &["n3", "n3"]));
        assert!(err.message.contains("named twice"), "{err}");
        let err = refused(&mut s, 11, &schedule("r2", "nosuch", "vm1", &["n9"]));
        assert_eq!(err.code, ErrorCode::NotFound, "{err}");
        let err = refused(&mut s, 11, &schedule("r2", "again", "vm1", &["n3", "n2"]));
        assert_eq!(err.code, ErrorCode::Conflict, "{err}");
        assert!(err.message.contains("already replicates"), "{err}");
        s.apply(12, &schedule("r2", "other", "vm1", &["n3"]))
            .0
            .result
            .unwrap();

        // vm_id cannot change; targets can (and their reports go with them).
        let mut spec = s.replications["r2"].spec.clone();
        spec.vm_id = "vm9".into();
        let err = refused(&mut s, 13, &update("r2", Spec::Replication(spec)));
        assert!(err.message.contains("vm_id cannot change"), "{err}");

        // A VM's delete takes its schedules.
        s.apply(14, &delete(Kind::Vm, "vm1")).0.result.unwrap();
        assert!(s.replications.is_empty());
    }

    #[test]
    fn source_and_target_get_the_schedule_and_the_same_grant() {
        let mut s = with_vm();
        s.apply(10, &schedule("r1", "dr", "vm1", &["n2"]))
            .0
            .result
            .unwrap();
        let (a, b, c) = (
            desired_for(&s, "n1"),
            desired_for(&s, "n2"),
            desired_for(&s, "n3"),
        );
        assert_eq!(a.replications.len(), 1);
        assert_eq!(a.replications, b.replications);
        assert!(c.replications.is_empty() && c.transfers.is_empty());
        let r = &a.replications[0];
        assert_eq!(
            (r.source_node_id.as_str(), r.volume_ids.clone()),
            ("n1", vec!["v1".to_string()])
        );
        assert_eq!(r.targets.len(), 1);
        assert_eq!(r.targets[0].node_id, "n2");
        let grant = a
            .transfers
            .iter()
            .find(|g| g.id == r.targets[0].grant_id)
            .expect("the source's grant");
        assert_eq!(Some(grant), b.transfers.iter().find(|g| g.id == grant.id));
        assert_eq!(
            (grant.source_node_id.as_str(), grant.target_node_id.as_str()),
            ("n1", "n2")
        );
        assert_eq!(grant.target_endpoint, "https://two:50057");
        assert_eq!(grant.volume_ids, ["v1"]);
        assert_eq!(grant.token.len(), 64);
        assert!(!grant.token.contains("secret"));
        // The token depends on the nodes' secrets.
        let before = grant.token.clone();
        s.nodes.get_mut("n2").unwrap().console_secret = "rotated".into();
        let after = desired_for(&s, "n1").transfers[0].token.clone();
        assert_ne!(before, after);

        // The VM moves onto its only target: nothing is replicated.
        s.vms.get_mut("vm1").unwrap().node_id = Some("n2".into());
        assert!(desired_for(&s, "n2").replications.is_empty());
        assert!(desired_for(&s, "n1").transfers.is_empty());
    }

    #[test]
    fn status_is_taken_from_the_vms_node_only() {
        let mut s = with_vm();
        s.apply(10, &schedule("r1", "dr", "vm1", &["n2"]))
            .0
            .result
            .unwrap();
        let answer = report(&mut s, 11, "n2");
        assert_eq!(answer["accepted"], 0, "{answer}");
        assert!(s.replications["r1"].status.replicas.is_empty());
        let answer = report(&mut s, 12, "n1");
        assert_eq!(answer["accepted"], 1, "{answer}");
        let r = &s.replications["r1"].status;
        assert_eq!(r.phase, Phase::Ready);
        assert_eq!(r.replicas[0].last_snapshot_id.as_deref(), Some("s1"));
        // Dropping the target drops its report.
        let mut spec = s.replications["r1"].spec.clone();
        spec.targets = vec!["n3".into()];
        s.apply(13, &update("r1", Spec::Replication(spec)))
            .0
            .result
            .unwrap();
        assert!(s.replications["r1"].status.replicas.is_empty());
    }
}
