//! Cold move of a stopped VM (`POST /v1/vms/{id}/migrate` on a VM whose `desired_state` is
//! `stopped`, and a node drain's stopped VMs), and the move of a drained node's pods.
//!
//! A cold move is a [`Migration`] with `cold: true`, stored by `migrate_vm` like a live one
//! (same checks and target choice, same `migration` object). It reuses the replication path
//! instead of a hypervisor stream: while it is active the source's NodeSpec carries a one-off
//! replication schedule (id = the migration id, one target) and both nodes' specs a transfer
//! grant with the VM's volumes (`nodespec/replication.rs`, `nodespec/transfer.rs`); the
//! target's spec does NOT carry the VM or its volumes. The source agent snapshots each volume
//! (replication snapshot), pushes it to the target (mvirt-zfs send/receive through
//! `NodePeer.PushVolume`, verified by checksum) and reports the schedule's status. When that
//! report shows every volume of the VM on the target without error, ONE apply switches the VM
//! and its volumes to the target with `promote_replica` (the target's agent turns each replica
//! into a normal volume, mvirt-zfs `PromoteReplica`, as after an HA failover) and the source's
//! spec loses them (its agent deletes its copies the ordinary way).
//!
//! Failure leaves everything on the source: a report with errors keeps the move
//! `transferring` with the error (the source retries every [`COLD_MOVE_INTERVAL_SECS`]) until
//! [`COLD_MOVE_GIVE_UP_SECS`] after its start, then it ends `failed`. Starting the VM (start,
//! restart, a `PUT` with `desired_state: running`) cancels an active cold move (`cancelled`):
//! the VM starts where it is; a replica already sent stays on the target, outside the API's
//! objects (as replication's replicas do). A volume with user snapshots is refused (the move
//! carries only the current data).

use chrono::DateTime;

use super::{stamp, ApiError, Change, State};
use crate::model::*;
use crate::scheduler;

/// How often the source retries the one-off schedule (the smallest replication interval).
pub const COLD_MOVE_INTERVAL_SECS: u32 = 5;

/// A cold move whose volumes did not all reach the target this long after it started fails.
pub const COLD_MOVE_GIVE_UP_SECS: i64 = 120;

/// Seconds from `from` to `to` (RFC 3339); `None` when either does not parse.
fn elapsed(from: &str, to: &str) -> Option<i64> {
    let a = DateTime::parse_from_rfc3339(from).ok()?;
    let b = DateTime::parse_from_rfc3339(to).ok()?;
    Some((b - a).num_seconds())
}

impl State {
    /// Why stopped VM `vm` cannot move cold now (its node has not reported it stopped yet, or
    /// a volume holds user snapshots), or `Ok`.
    pub(super) fn cold_move_check(&self, vm: &Vm) -> Result<(), ApiError> {
        let id = &vm.meta.id;
        if vm.status.phase != Phase::Stopped {
            return Err(ApiError::conflict(format!(
                "VM {id} is asked to stop but its node reports it {:?}: a cold move waits until it is stopped",
                vm.status.phase.as_str()
            )));
        }
        for vol in vm
            .spec
            .volume_ids
            .iter()
            .filter_map(|v| self.volumes.get(v))
        {
            if !vol.snapshots.is_empty() || vol.rollback.is_some() {
                return Err(ApiError::conflict(format!(
                    "volume {} has snapshots: a cold move carries only the volume's current data; delete its snapshots first",
                    vol.meta.name
                )));
            }
        }
        Ok(())
    }

    /// The VM whose active cold move has id `migration_id`.
    pub(crate) fn cold_move(&self, migration_id: &str) -> Option<(&Vm, &Migration)> {
        self.vms.values().find_map(|vm| {
            vm.migration
                .as_ref()
                .filter(|m| m.cold && m.phase.is_active() && m.id == migration_id)
                .map(|m| (vm, m))
        })
    }

    /// Applies the source's report on a cold move's one-off replication schedule (`status`
    /// of kind replication, id = the migration id). `None`: no such move from `node_id`.
    pub(super) fn cold_move_reported(
        &mut self,
        index: u64,
        node_id: &str,
        migration_id: &str,
        status: &Status,
        now: &str,
    ) -> Option<Vec<Change>> {
        let (vm, m) = self.cold_move(migration_id)?;
        if vm.node_id.as_deref() != Some(node_id) || m.source_node_id != node_id {
            return None;
        }
        let vm_id = vm.meta.id.clone();
        let target = m.target_node_id.clone();
        // Every volume of the VM must be on the target, from this report, without error.
        let mut missing = None;
        let mut bytes = 0u64;
        for vid in &vm.spec.volume_ids {
            let r = status
                .replicas
                .iter()
                .find(|r| &r.volume_id == vid && r.target_node_id == target);
            match r {
                Some(r) if r.last_error.is_none() && r.last_snapshot_id.is_some() => {
                    bytes += r.last_bytes;
                }
                Some(r) => {
                    missing.get_or_insert_with(|| {
                        format!(
                            "volume {vid}: {}",
                            r.last_error.as_deref().unwrap_or("not sent yet")
                        )
                    });
                }
                None => {
                    missing.get_or_insert_with(|| format!("volume {vid}: not sent yet"));
                }
            }
        }
        let Some(error) = missing else {
            return Some(self.cold_move_switch(index, &vm_id, bytes, now));
        };
        let give_up = elapsed(&m.started_at, now).is_none_or(|s| s >= COLD_MOVE_GIVE_UP_SECS);
        let vm = self.vms.get_mut(&vm_id)?;
        let m = vm.migration.as_mut()?;
        let before = m.clone();
        m.bytes_transferred = m.bytes_transferred.max(bytes);
        if give_up {
            m.phase = MigrationPhase::Failed;
            m.error = Some(format!(
                "the volumes did not reach node {target} within {COLD_MOVE_GIVE_UP_SECS} s: {error}"
            ));
            return Some(self.cold_move_ended(index, &vm_id, "migration_failed", now));
        }
        m.phase = MigrationPhase::Transferring;
        m.error = Some(format!(
            "retrying every {COLD_MOVE_INTERVAL_SECS} s: {error}"
        ));
        if *m == before {
            return Some(Vec::new());
        }
        stamp(&mut vm.meta, index, now, false);
        Some(vec![self.change(Kind::Vm, &vm_id, "migration_progress")])
    }

    /// The switch of a cold move whose volumes are all on the target: the VM and its volumes
    /// belong to the target from this apply on, the volumes promoted from the replicas there.
    fn cold_move_switch(&mut self, index: u64, vm_id: &str, bytes: u64, now: &str) -> Vec<Change> {
        let vm = &self.vms[vm_id];
        let m = vm.migration.clone().expect("a cold move");
        let (source, target) = (m.source_node_id.clone(), m.target_node_id.clone());
        let mut changes = Vec::new();
        for vid in vm.spec.volume_ids.clone() {
            let Some(vol) = self.volumes.get_mut(&vid) else {
                continue;
            };
            if vol.node_id.as_deref() != Some(source.as_str()) {
                continue;
            }
            vol.node_id = Some(target.clone());
            vol.promote_replica = true;
            vol.status = Status::default();
            stamp(&mut vol.meta, index, now, true);
            changes.push(self.change(Kind::Volume, &vid, "migrated"));
        }
        changes.extend(self.reverse_replications(index, now, vm_id, &source, &target));
        let node_state = self.nodes.get(&target).map(|n| n.status.state);
        let vm = self.vms.get_mut(vm_id).expect("the VM is there");
        vm.node_id = Some(target);
        vm.node_state = node_state;
        // The source's report no longer describes it; the target reports it stopped.
        vm.status = Status {
            phase: Phase::Stopped,
            ..Status::default()
        };
        let m = vm.migration.as_mut().expect("a cold move");
        m.phase = MigrationPhase::Completed;
        m.error = None;
        m.bytes_transferred = m.bytes_transferred.max(bytes);
        m.bytes_remaining = 0;
        changes.extend(self.cold_move_ended(index, vm_id, "migration_completed", now));
        changes
    }

    /// Ends VM `vm_id`'s cold move (its phase set already): the grant and the one-off schedule
    /// leave both specs; a drain of the source waiting on it goes on.
    fn cold_move_ended(
        &mut self,
        index: u64,
        vm_id: &str,
        verb: &'static str,
        now: &str,
    ) -> Vec<Change> {
        let vm = self.vms.get_mut(vm_id).expect("the VM is there");
        let m = vm.migration.as_mut().expect("a cold move");
        m.finished_at = Some(now.to_string());
        m.grant_token.clear();
        let source = m.source_node_id.clone();
        let error =
            (m.phase != MigrationPhase::Completed).then(|| m.error.clone().unwrap_or_default());
        stamp(&mut vm.meta, index, now, true);
        self.counters.last_removal_revision = index;
        if let Some(node) = self.nodes.get_mut(&source) {
            node.meta.spec_revision = index;
        }
        let mut changes = vec![self.change(Kind::Vm, vm_id, verb)];
        changes.extend(self.drain_migration_ended(index, &source, vm_id, error.as_deref(), now));
        changes
    }

    /// VM `vm_id` is asked to run: an active cold move of it ends `cancelled` (the VM starts
    /// where it is). Called before the VM's own change is made.
    pub(super) fn cancel_cold_move(&mut self, index: u64, vm_id: &str, now: &str) -> Vec<Change> {
        let Some(m) = self
            .vms
            .get_mut(vm_id)
            .and_then(|v| v.migration.as_mut())
            .filter(|m| m.cold && m.phase.is_active())
        else {
            return Vec::new();
        };
        m.phase = MigrationPhase::Cancelled;
        m.error = Some("cancelled: the VM was asked to start (it starts where it is)".into());
        self.cold_move_ended(index, vm_id, "migration_cancelled", now)
    }

    /// The node a pod leaving `source` goes to: online, schedulable, matching its selector,
    /// with room for its vCPUs and memory; the least loaded (ties to the smaller id).
    fn pod_target(&self, pod: &Pod, source: &str) -> Result<String, String> {
        let mut reasons = Vec::new();
        let mut best: Option<(u64, &Node)> = None;
        for node in self.nodes.values().filter(|n| n.meta.id != source) {
            let name = &node.meta.name;
            if node.status.state != NodeState::Online {
                reasons.push(format!("node {name} is offline"));
                continue;
            }
            if !node.spec.schedulable {
                reasons.push(format!("node {name} is cordoned"));
                continue;
            }
            if let Some(sel) = &pod.spec.node_selector {
                if !scheduler::matches_selector(node, sel) {
                    reasons.push(format!("node {name} does not match node_selector {sel:?}"));
                    continue;
                }
            }
            let held = scheduler::held_on(self, &node.meta.id);
            let cap = node.status.capacity;
            if held.vcpus + pod.spec.vcpus > cap.vcpus
                || held.memory_bytes + pod.spec.memory_bytes > cap.memory_bytes
            {
                reasons.push(format!("node {name} has no capacity for the pod"));
                continue;
            }
            let load = (u64::from(held.vcpus) * 1000 / u64::from(cap.vcpus.max(1)))
                .max(held.memory_bytes.saturating_mul(1000) / cap.memory_bytes.max(1));
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, node));
            }
        }
        match best {
            Some((_, n)) => Ok(n.meta.id.clone()),
            None if reasons.is_empty() => Err("no other node".into()),
            None => Err(format!("no node can take the pod: {}", reasons.join("; "))),
        }
    }

    /// Moves pod `pod_id` off `source` like a Kubernetes eviction: its node changes in this
    /// apply, so the source's spec drops it (its agent stops and deletes the microVM) and the
    /// target's gains it (created from its spec: containers start afresh, images pulled there,
    /// `desired_state` kept, its NICs and addresses follow it). Err: why no node can take it.
    pub(super) fn move_pod(
        &mut self,
        index: u64,
        pod_id: &str,
        source: &str,
        now: &str,
    ) -> Result<Change, String> {
        let pod = self.pods.get(pod_id).ok_or("the pod is gone")?;
        let target = self.pod_target(pod, source)?;
        let node_state = self.nodes.get(&target).map(|n| n.status.state);
        let pod = self.pods.get_mut(pod_id).expect("the pod is there");
        pod.node_id = Some(target);
        pod.node_state = node_state;
        pod.status = Status::default();
        stamp(&mut pod.meta, index, now, true);
        self.counters.last_removal_revision = index;
        Ok(self.change(Kind::Pod, pod_id, "moved"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;
    use super::*;

    const T0: &str = "2026-12-07T23:00:00Z";

    fn at(secs: i64) -> String {
        (DateTime::parse_from_rfc3339(T0).unwrap() + chrono::Duration::seconds(secs))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// Two nodes and stopped VM `vm` on n1 with volumes `root` and `data`.
    fn cluster() -> State {
        let mut s = State::initial();
        s.nodes.insert("n1".into(), sized_node("n1", "one", 8));
        s.nodes.insert("n2".into(), sized_node("n2", "two", 8));
        placed_vm(&mut s, "vm", "n1", false);
        for v in ["root", "data"] {
            let mut vol = Volume::new(
                meta(v, v),
                VolumeSpec {
                    size_bytes: 1 << 30,
                    ..VolumeSpec::default()
                },
            );
            vol.node_id = Some("n1".into());
            vol.vm_id = Some("vm".into());
            s.volumes.insert(v.into(), vol);
        }
        s.vms.get_mut("vm").unwrap().spec.volume_ids = vec!["root".into(), "data".into()];
        s
    }

    fn replica(volume: &str, target: &str, error: Option<&str>) -> ReplicaReport {
        ReplicaReport {
            volume_id: volume.into(),
            target_node_id: target.into(),
            last_snapshot_id: error.is_none().then(|| "snap".into()),
            last_replicated_at: error.is_none().then(|| T0.into()),
            last_bytes: 1000,
            last_error: error.map(String::from),
            ..ReplicaReport::default()
        }
    }

    fn report(
        s: &mut State,
        index: u64,
        node: &str,
        id: &str,
        replicas: Vec<ReplicaReport>,
        now: &str,
    ) {
        let status = Status {
            phase: Phase::Ready,
            replicas,
            ..Status::default()
        };
        let report = StatusReport {
            kind: Kind::Replication,
            id: id.into(),
            status,
            snapshots: Vec::new(),
            migration: None,
        };
        s.update_statuses(index, node, &[report], now).unwrap();
    }

    #[test]
    fn a_cold_move_to_a_lost_node_ends_failed_saying_nothing_ran_there() {
        let mut s = cluster();
        s.migrate_vm(1, "vm", None, "mig", "tok", T0).unwrap();
        let lost = [("n2".to_string(), 46)];
        let losses = crate::ha::lost_migrations(&s, &lost);
        assert_eq!(losses.len(), 1, "{losses:?}");
        s.migration_node_lost(2, &losses[0], &at(60)).unwrap();
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(m.phase, MigrationPhase::Failed);
        let error = m.error.as_deref().unwrap();
        assert!(
            error.contains("cold move ended") && error.contains("stay on node n1"),
            "{error}"
        );
        assert!(!error.contains("fenced"), "{error}");
        assert_eq!(vm.node_id.as_deref(), Some("n1"));
        for v in ["root", "data"] {
            assert_eq!(s.volumes[v].node_id.as_deref(), Some("n1"));
        }
        // The grant and the one-off schedule left both specs.
        for n in ["n1", "n2"] {
            let spec = crate::nodespec::desired_for(&s, n);
            assert!(
                spec.transfers.is_empty() && spec.replications.is_empty(),
                "{n}"
            );
        }
    }

    #[test]
    fn a_stopped_vm_moves_cold_only_once_every_volume_is_on_the_target() {
        let mut s = cluster();
        s.migrate_vm(1, "vm", None, "mig", "tok", T0).unwrap();
        let m = s.vms["vm"].migration.clone().unwrap();
        assert!(m.cold && m.phase == MigrationPhase::Pending, "{m:?}");
        assert_eq!(m.target_node_id, "n2");
        // The specs: the source keeps the VM and pushes its volumes with a one-off schedule;
        // the target gets the grant only (no VM, no volumes: they arrive as replicas).
        let (n1, n2) = (
            crate::nodespec::desired_for(&s, "n1"),
            crate::nodespec::desired_for(&s, "n2"),
        );
        assert_eq!((n1.vms.len(), n1.volumes.len()), (1, 2));
        let r = &n1.replications[0];
        assert_eq!((r.id.as_str(), r.source_node_id.as_str()), ("mig", "n1"));
        assert_eq!(
            (
                r.targets[0].node_id.as_str(),
                r.targets[0].grant_id.as_str()
            ),
            ("n2", "mig")
        );
        assert_eq!(r.volume_ids, ["root", "data"]);
        for spec in [&n1, &n2] {
            let g = &spec.transfers[0];
            assert_eq!(
                (g.id.as_str(), g.token.as_str(), g.vm_id.as_str()),
                ("mig", "tok", "")
            );
            assert_eq!(g.volume_ids, ["root", "data"]);
        }
        assert!(n2.vms.is_empty() && n2.volumes.is_empty() && n2.replications.is_empty());
        // Only one volume there, and another node's or another id's report: nothing moves.
        report(
            &mut s,
            2,
            "n1",
            "mig",
            vec![replica("root", "n2", None)],
            &at(5),
        );
        report(
            &mut s,
            3,
            "n2",
            "mig",
            vec![replica("root", "n2", None), replica("data", "n2", None)],
            &at(6),
        );
        report(
            &mut s,
            4,
            "n1",
            "other",
            vec![replica("root", "n2", None), replica("data", "n2", None)],
            &at(6),
        );
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(vm.node_id.as_deref(), Some("n1"));
        assert_eq!(m.phase, MigrationPhase::Transferring);
        assert!(
            m.error
                .as_deref()
                .unwrap()
                .contains("volume data: not sent yet"),
            "{m:?}"
        );
        assert!(s
            .volumes
            .values()
            .all(|v| v.node_id.as_deref() == Some("n1") && !v.promote_replica));
        // Both there: the VM and both volumes switch in this one apply, promoted from replicas.
        report(
            &mut s,
            5,
            "n1",
            "mig",
            vec![replica("root", "n2", None), replica("data", "n2", None)],
            &at(10),
        );
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(vm.node_id.as_deref(), Some("n2"));
        assert_eq!(
            (m.phase, m.bytes_transferred),
            (MigrationPhase::Completed, 2000)
        );
        assert!(m.grant_token.is_empty() && m.error.is_none());
        assert_eq!(vm.status.phase, Phase::Stopped);
        assert_eq!(vm.spec.desired_state, DesiredState::Stopped);
        for v in ["root", "data"] {
            assert_eq!(s.volumes[v].node_id.as_deref(), Some("n2"));
            assert!(s.volumes[v].promote_replica);
        }
        assert_eq!(s.counters.last_removal_revision, 5);
        // The target runs it (stopped) and promotes the replicas; the source holds nothing,
        // and neither has the grant or the schedule any more.
        let (n1, n2) = (
            crate::nodespec::desired_for(&s, "n1"),
            crate::nodespec::desired_for(&s, "n2"),
        );
        assert!(n1.vms.is_empty() && n1.volumes.is_empty() && n1.transfers.is_empty());
        assert!(n1.replications.is_empty());
        assert_eq!(n2.vms.len(), 1);
        assert!(n2.volumes.len() == 2 && n2.volumes.iter().all(|v| v.promote_replica));
        assert!(n2.transfers.is_empty());
        // A late report changes nothing.
        report(
            &mut s,
            6,
            "n1",
            "mig",
            vec![replica("root", "n2", Some("x"))],
            &at(11),
        );
        assert_eq!(
            s.vms["vm"].migration.as_ref().unwrap().phase,
            MigrationPhase::Completed
        );
    }

    #[test]
    fn a_cold_move_that_keeps_failing_ends_failed_and_leaves_everything_on_the_source() {
        let mut s = cluster();
        s.migrate_vm(1, "vm", Some("two"), "mig", "tok", T0)
            .unwrap();
        let bad = || {
            vec![
                replica("root", "n2", Some("ALREADY_EXISTS")),
                replica("data", "n2", None),
            ]
        };
        report(&mut s, 2, "n1", "mig", bad(), &at(30));
        assert_eq!(
            s.vms["vm"].migration.as_ref().unwrap().phase,
            MigrationPhase::Transferring
        );
        report(&mut s, 3, "n1", "mig", bad(), &at(COLD_MOVE_GIVE_UP_SECS));
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(m.phase, MigrationPhase::Failed);
        assert!(
            m.error.as_deref().unwrap().contains("ALREADY_EXISTS"),
            "{m:?}"
        );
        assert_eq!(vm.node_id.as_deref(), Some("n1"));
        assert!(s
            .volumes
            .values()
            .all(|v| v.node_id.as_deref() == Some("n1")));
    }

    #[test]
    fn a_cold_move_is_refused_clearly_and_a_start_cancels_it() {
        let mut s = cluster();
        // Still stopping: refused.
        s.vms.get_mut("vm").unwrap().status.phase = Phase::Running;
        let err = s.migrate_vm(1, "vm", None, "m1", "tok", T0).unwrap_err();
        assert!(
            err.message.contains("waits until it is stopped"),
            "{}",
            err.message
        );
        s.vms.get_mut("vm").unwrap().status.phase = Phase::Stopped;
        // User snapshots do not travel: refused.
        s.volumes.get_mut("data").unwrap().rollback = Some(VolumeRollback {
            snapshot_id: "s".into(),
            generation: 1,
            requested_at: T0.into(),
        });
        let err = s.migrate_vm(2, "vm", None, "m2", "tok", T0).unwrap_err();
        assert!(err.message.contains("has snapshots"), "{}", err.message);
        s.volumes.get_mut("data").unwrap().rollback = None;
        // The target's checks are the live migration's.
        s.nodes.get_mut("n2").unwrap().spec.schedulable = false;
        let err = s.migrate_vm(3, "vm", None, "m3", "tok", T0).unwrap_err();
        assert!(err.message.contains("cordoned"), "{}", err.message);
        s.nodes.get_mut("n2").unwrap().spec.schedulable = true;
        s.migrate_vm(4, "vm", None, "m4", "tok", T0).unwrap();
        // A start cancels it; the VM starts on its node, a later report moves nothing.
        let r = s.apply(
            5,
            &p(Command::VmAction {
                id: "vm".into(),
                action: VmAction::Start,
                now: at(1),
            }),
        );
        r.0.result.unwrap();
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(m.phase, MigrationPhase::Cancelled);
        assert_eq!(vm.spec.desired_state, DesiredState::Running);
        report(
            &mut s,
            6,
            "n1",
            "m4",
            vec![replica("root", "n2", None), replica("data", "n2", None)],
            &at(2),
        );
        assert_eq!(s.vms["vm"].node_id.as_deref(), Some("n1"));
    }
}
