//! Applying the HA monitor's decisions (`crate::ha` decides on the leader; this checks them
//! again against the state at the command's index, so a stale decision is refused, not applied).
//!
//! A failover is one command: the VM's `node_id` and the `node_id` of each of its volumes that
//! lived on the lost node switch to the target, the volumes get `promote_replica` (the target's
//! agent promotes its replica instead of creating the volume), their user snapshots and a
//! pending rollback are dropped (they were on the lost node only), and the VM's status is reset
//! (the lost node's last report no longer describes it). The removal revision moves, so the
//! lost node's spec, once it reads it again, no longer holds the VM or its volumes: its agent
//! deletes its copy.

use serde::{Deserialize, Serialize};

use super::{stamp, ApiError, Applied, State};
use crate::model::*;

/// What the HA monitor proposes for one VM on a lost node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaDecision {
    pub vm_id: String,
    /// The lost node the VM is on.
    pub from_node_id: String,
    /// Where to restart it; `None`: it stays (`message` says why).
    pub to_node_id: Option<String>,
    /// The oldest `last_replicated_at` of the replicas used.
    pub replicated_at: Option<String>,
    /// Seconds between `replicated_at` and the decision.
    pub data_loss_secs: Option<u64>,
    pub message: String,
}

impl State {
    pub(super) fn ha_failover(&mut self, at: u64, d: &HaDecision, now: &str) -> Applied {
        let vm = self.get::<Vm>(&d.vm_id)?;
        if !vm.spec.ha || vm.node_id.as_deref() != Some(d.from_node_id.as_str()) {
            return Err(ApiError::conflict(format!(
                "VM {} is no HA VM on node {} any more",
                d.vm_id, d.from_node_id
            )));
        }
        let mut status = HaStatus {
            state: if d.to_node_id.is_some() {
                HaState::FailedOver
            } else {
                HaState::Stuck
            },
            message: d.message.clone(),
            from_node_id: d.from_node_id.clone(),
            to_node_id: d.to_node_id.clone(),
            at: now.to_string(),
            replicated_at: d.replicated_at.clone(),
            data_loss_secs: d.data_loss_secs,
        };
        let Some(target) = d.to_node_id.clone() else {
            let same = vm.ha_status.as_ref().is_some_and(|s| {
                s.state == HaState::Stuck
                    && s.from_node_id == d.from_node_id
                    && s.message == d.message
            });
            if same {
                return Ok((
                    self.object_json(Kind::Vm, &d.vm_id)
                        .unwrap_or_else(Json::null),
                    Vec::new(),
                ));
            }
            let vm = self.get_mut::<Vm>(&d.vm_id)?;
            vm.ha_status = Some(status);
            stamp(&mut vm.meta, at, now, false);
            return self.answer(Kind::Vm, &d.vm_id, "ha_stuck");
        };
        let node = self.get::<Node>(&target)?;
        if node.status.state != NodeState::Online || target == d.from_node_id {
            return Err(ApiError::conflict(format!(
                "node {target} cannot take VM {} (offline, or its own node)",
                d.vm_id
            )));
        }
        let volume_ids = vm.spec.volume_ids.clone();
        let mut changes = Vec::new();
        for vid in volume_ids {
            let Some(vol) = self.volumes.get_mut(&vid) else {
                continue;
            };
            if vol.node_id.as_deref() != Some(d.from_node_id.as_str()) {
                continue;
            }
            vol.node_id = Some(target.clone());
            vol.promote_replica = true;
            vol.snapshots.clear();
            vol.rollback = None;
            vol.status = Status::default();
            stamp(&mut vol.meta, at, now, true);
            changes.push(self.change(Kind::Volume, &vid, "failed_over"));
        }
        let reversed = self.reverse_replications(at, now, &d.vm_id, &d.from_node_id, &target);
        if !reversed.is_empty() {
            status.message.push_str(&format!(
                "; replication now goes back to node {} (unprotected until it holds a replica)",
                d.from_node_id
            ));
        }
        changes.extend(reversed);
        let vm = self.get_mut::<Vm>(&d.vm_id)?;
        vm.node_id = Some(target);
        vm.node_state = Some(NodeState::Online);
        vm.status = Status::default();
        if vm.migration.as_ref().is_some_and(|m| m.phase.is_active()) {
            vm.migration = None;
        }
        vm.ha_status = Some(status);
        stamp(&mut vm.meta, at, now, true);
        // The lost node's set shrinks: its agent must see a newer revision.
        self.counters.last_removal_revision = at;
        changes.push(self.change(Kind::Vm, &d.vm_id, "failover"));
        let value = changes
            .last()
            .and_then(|c| c.object.clone())
            .unwrap_or_else(Json::null);
        Ok((value, changes))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::super::tests::*;
    use super::super::*;
    use crate::ha::decide;

    fn node(id: &str, state: NodeState) -> Node {
        let mut node = online_node(id, id);
        node.status.state = state;
        node
    }

    fn replica(volume: &str, target: &str, at: &str) -> ReplicaReport {
        ReplicaReport {
            volume_id: volume.into(),
            target_node_id: target.into(),
            last_snapshot_id: Some("s".into()),
            last_replicated_at: Some(at.into()),
            ..Default::default()
        }
    }

    /// Nodes a (lost), b and c; an HA VM on a with volumes v1, v2; a schedule to b and c.
    fn cluster() -> State {
        let mut s = State::initial();
        s.nodes.insert("a".into(), node("a", NodeState::Offline));
        s.nodes.insert("b".into(), node("b", NodeState::Online));
        s.nodes.insert("c".into(), node("c", NodeState::Online));
        let mut spec: VmSpec =
            serde_json::from_value(serde_json::json!({"vcpus": 1, "memory_bytes": 1 << 30}))
                .unwrap();
        spec.ha = true;
        spec.volume_ids = vec!["v1".into(), "v2".into()];
        let mut vm = Vm::new(meta("vm", "vm"), spec);
        vm.node_id = Some("a".into());
        vm.status.phase = Phase::Running;
        s.vms.insert("vm".into(), vm);
        for id in ["v1", "v2"] {
            let mut vol = Volume::new(meta(id, id), VolumeSpec::default());
            vol.node_id = Some("a".into());
            vol.vm_id = Some("vm".into());
            s.volumes.insert(id.into(), vol);
        }
        s
    }

    fn schedule(s: &mut State, replicas: Vec<ReplicaReport>) {
        let spec = ReplicationSpec {
            vm_id: "vm".into(),
            targets: vec!["b".into(), "c".into()],
            interval_secs: 5,
            keep: 2,
        };
        let mut r = Replication::new(meta("r", "r"), spec);
        r.status.replicas = replicas;
        s.replications.insert("r".into(), r);
    }

    #[test]
    fn an_ha_vm_moves_to_the_newest_complete_replica_with_its_data_loss_window() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let lost = vec!["a".to_string()];
        let mut s = cluster();
        let d = decide(&s, &lost, now);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to_node_id, None);
        assert!(d[0].message.contains("no replication schedule"), "{d:?}");
        // Stuck: recorded once, not proposed again while the reason stays.
        let (_, changes) = s.ha_failover(10, &d[0], "t1").unwrap();
        assert_eq!(changes[0].verb, "ha_stuck");
        assert_eq!(s.vms["vm"].node_id.as_deref(), Some("a"));
        assert!(decide(&s, &lost, now).is_empty());

        // c holds only v1 (incomplete); b holds both, its older one 40 s old.
        schedule(
            &mut s,
            vec![
                replica("v1", "b", "2026-01-01T00:00:20Z"),
                replica("v2", "b", "2026-01-01T00:00:30Z"),
                replica("v1", "c", "2026-01-01T00:00:50Z"),
            ],
        );
        let d = decide(&s, &lost, now);
        assert_eq!(d[0].to_node_id.as_deref(), Some("b"), "{d:?}");
        assert_eq!(d[0].data_loss_secs, Some(40));
        assert_eq!(
            d[0].replicated_at.as_deref(),
            Some("2026-01-01T00:00:20.000Z")
        );
        // A node that is not lost has nothing to fail over.
        assert!(decide(&s, &["b".to_string()], now).is_empty());

        let before = s.counters.last_removal_revision;
        let (_, changes) = s.ha_failover(11, &d[0], "t2").unwrap();
        let verbs: Vec<_> = changes.iter().map(|c| c.verb).collect();
        assert_eq!(
            verbs,
            ["failed_over", "failed_over", "retargeted", "failover"]
        );
        // Re-protection: the schedule replicates from b back to a (in b's place), the reports
        // about b are gone, c's stay; pending until b reports.
        let r = &s.replications["r"];
        assert_eq!(r.spec.targets, ["a", "c"]);
        assert!(r.status.replicas.iter().all(|x| x.target_node_id == "c"));
        assert_eq!(r.status.replicas.len(), 1);
        assert_eq!(r.status.phase, Phase::Pending);
        assert!(r.status.message.contains("node a"), "{}", r.status.message);
        let ha = s.vms["vm"].ha_status.as_ref().unwrap();
        assert!(ha.message.contains("goes back to node a"), "{}", ha.message);
        let vm = &s.vms["vm"];
        assert_eq!(vm.node_id.as_deref(), Some("b"));
        assert_eq!(vm.status.phase, Phase::default());
        let ha = vm.ha_status.as_ref().unwrap();
        assert_eq!(
            (ha.state, ha.data_loss_secs),
            (HaState::FailedOver, Some(40))
        );
        for id in ["v1", "v2"] {
            assert_eq!(s.volumes[id].node_id.as_deref(), Some("b"));
            assert!(s.volumes[id].promote_replica);
        }
        assert!(s.counters.last_removal_revision > before);
        // The specs: b runs the VM and promotes the replicas; a has neither any more.
        let b = crate::nodespec::desired_for(&s, "b");
        assert!(b.vms[0].ha && b.volumes.iter().all(|v| v.promote_replica));
        assert_eq!(b.replications[0].source_node_id, "b");
        let targets: Vec<_> = b.replications[0]
            .targets
            .iter()
            .map(|t| &t.node_id)
            .collect();
        assert_eq!(targets, ["a", "c"]);
        let a = crate::nodespec::desired_for(&s, "a");
        assert!(a.vms.is_empty() && a.volumes.is_empty());
        // a is a target now: it gets the schedule (and the grant) once it reads its spec.
        assert_eq!(a.replications.len(), 1);
        assert!(a.revision >= 11);
        // Done: the same decision again is refused (the VM is not on a any more).
        assert!(s.ha_failover(12, &d[0], "t3").is_err());
        assert!(decide(&s, &lost, now).is_empty());
    }

    #[test]
    fn a_schedule_naming_the_lost_node_already_is_left_alone() {
        let mut s = cluster();
        schedule(
            &mut s,
            vec![
                replica("v1", "b", "2026-01-01T00:00:20Z"),
                replica("v2", "b", "2026-01-01T00:00:30Z"),
            ],
        );
        // Another schedule of the VM names a (the VM came to a after it was created).
        let mut other = s.replications["r"].clone();
        other.meta = meta("r2", "r2");
        other.spec.targets = vec!["a".into()];
        s.replications.insert("r2".into(), other);
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let d = decide(&s, &["a".to_string()], now);
        let (_, changes) = s.ha_failover(11, &d[0], "t").unwrap();
        assert!(changes.iter().all(|c| c.verb != "retargeted"));
        assert_eq!(s.replications["r"].spec.targets, ["b", "c"]);
        assert_eq!(s.vms["vm"].node_id.as_deref(), Some("b"));
    }

    #[test]
    fn a_failover_to_an_offline_node_is_refused_at_apply() {
        let mut s = cluster();
        s.nodes.get_mut("b").unwrap().status.state = NodeState::Offline;
        let d = HaDecision {
            vm_id: "vm".into(),
            from_node_id: "a".into(),
            to_node_id: Some("b".into()),
            replicated_at: None,
            data_loss_secs: None,
            message: String::new(),
        };
        assert!(s.ha_failover(5, &d, "t").is_err());
        assert_eq!(s.vms["vm"].node_id.as_deref(), Some("a"));
    }
}
