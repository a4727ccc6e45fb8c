//! Live migration of a VM from its node to another (`POST /v1/vms/{id}/migrate`): the checks
//! and the target choice when it is asked for, and the steps the source node reports.
//!
//! The walk (mvirt-node README, "Live migration"): the request stores a [`Migration`] on the VM
//! (`pending`). From then on the target's NodeSpec carries the VM with `incoming_migration_id`
//! (and its NICs and volumes), and both nodes' specs carry the transfer grant
//! (`nodespec/transfer.rs`) — both derived from this state, so they exist exactly as long as the
//! migration is active. The target prepares an incoming hypervisor; the source streams the VM
//! through `NodePeer.Relay` and reports [`MigrationUpdate`]s with the VM's status:
//! `transferring` (bytes), `completing`, then `completed` once the target runs the VM — only
//! then does the VM (and its volumes) move to the target here, which takes it out of the
//! source's spec (the source deletes its paused copy). `failed` ends it with the VM still on
//! the source (it resumes it there); the target's spec no longer names the VM and the target
//! deletes what it prepared.

use serde::{Deserialize, Serialize};

use super::{stamp, ApiError, Applied, Change, State};
use crate::model::*;
use crate::scheduler;

/// Where a source node says a migration is (domain form of `proto::MigrationReport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportedPhase {
    Transferring,
    Completing,
    Completed,
    Failed,
}

/// A source node's report on a VM's migration, riding with the VM's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationUpdate {
    pub migration_id: String,
    pub phase: ReportedPhase,
    #[serde(default)]
    pub bytes_transferred: u64,
    #[serde(default)]
    pub bytes_remaining: u64,
    #[serde(default)]
    pub downtime_ms: u64,
    #[serde(default)]
    pub error: String,
}

/// A migration whose source or target node the leader's monitor found lost: no heartbeat for
/// the agents' fencing time plus the margin (`crate::ha::lost_migrations`, the same numbers
/// as an HA failover). Applied as `Command::EndMigrationOnNodeLoss`: the migration ends
/// `failed` with a reason naming the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationLoss {
    pub vm_id: String,
    pub migration_id: String,
    pub lost_node_id: String,
    /// How long the node had been silent when the leader decided (for the reason).
    pub silent_secs: u64,
}

/// What a VM asks of a node: vCPUs, memory (its volumes move with it and are counted apart).
fn fits(state: &State, node: &Node, vm: &Vm) -> bool {
    let held = scheduler::held_on(state, &node.meta.id);
    let storage: u64 = vm
        .spec
        .volume_ids
        .iter()
        .filter_map(|v| state.volumes.get(v))
        .map(|v| v.spec.size_bytes)
        .sum();
    // Incoming migrations hold their VM's share on the target already.
    let incoming = state
        .vms
        .values()
        .filter(|v| v.meta.id != vm.meta.id)
        .filter_map(|v| v.migration.as_ref().map(|m| (v, m)))
        .filter(|(_, m)| m.phase.is_active() && m.target_node_id == node.meta.id);
    let (mut vcpus, mut memory) = (held.vcpus, held.memory_bytes);
    for (v, _) in incoming {
        vcpus += v.spec.vcpus;
        memory += v.spec.memory_bytes;
    }
    let cap = node.status.capacity;
    vcpus + vm.spec.vcpus <= cap.vcpus
        && memory + vm.spec.memory_bytes <= cap.memory_bytes
        && held.storage_bytes + storage <= cap.storage_bytes
}

/// Why `node` cannot take the VM now, or `None` when it can.
fn refusal(state: &State, node: &Node, vm: &Vm) -> Option<String> {
    let name = &node.meta.name;
    if node.status.state != NodeState::Online {
        return Some(format!("node {name} is offline"));
    }
    if !node.spec.schedulable {
        return Some(format!("node {name} is cordoned"));
    }
    if node.status.console_endpoint.is_empty() {
        return Some(format!("node {name} has no agent endpoint to receive a VM"));
    }
    if let Some(sel) = &vm.spec.node_selector {
        if !scheduler::matches_selector(node, sel) {
            return Some(format!("node {name} does not match node_selector {sel:?}"));
        }
    }
    // A template promoted from a snapshot exists only on its volume's node.
    for vol in vm
        .spec
        .volume_ids
        .iter()
        .filter_map(|v| state.volumes.get(v))
    {
        let template = vol
            .spec
            .template_id
            .as_ref()
            .and_then(|t| state.templates.get(t));
        if let Some(only) = template.and_then(|t| t.node_id.as_ref()) {
            if only != &node.meta.id {
                return Some(format!(
                    "volume {} is a clone of template {}, which exists only on node {only}",
                    vol.meta.id,
                    template.map(|t| t.meta.name.as_str()).unwrap_or_default()
                ));
            }
        }
    }
    if !fits(state, node, vm) {
        return Some(format!("node {name} has no capacity for the VM"));
    }
    None
}

impl State {
    /// Whether VM `vm_id`'s stored form holds a migration's grant token (its view does not).
    pub fn vm_holds_secret(&self, vm_id: &str) -> bool {
        self.vms
            .get(vm_id)
            .and_then(|v| v.migration.as_ref())
            .is_some_and(|m| !m.grant_token.is_empty())
    }

    /// Whether VM `vm_id` is migrating to `node_id` right now.
    pub(super) fn migrating_to(&self, vm_id: &str, node_id: &str) -> bool {
        self.vms
            .get(vm_id)
            .and_then(|v| v.migration.as_ref())
            .is_some_and(|m| m.phase.is_active() && m.target_node_id == node_id)
    }

    /// The node a migration of `vm` goes to: `asked` (id or name) if it can take the VM, else
    /// the least loaded node that can (ties to the smaller id).
    fn migration_target(
        &self,
        vm: &Vm,
        source: &str,
        asked: Option<&str>,
    ) -> Result<String, ApiError> {
        let others: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.meta.id != source)
            .collect();
        if others.is_empty() {
            return Err(ApiError::conflict(
                "no other node: a VM can only migrate in a cluster of two or more nodes",
            ));
        }
        if let Some(asked) = asked {
            let node = self
                .nodes
                .values()
                .find(|n| n.meta.id == asked || n.meta.name == asked)
                .ok_or_else(|| ApiError::invalid(format!("unknown target node {asked:?}")))?;
            if node.meta.id == source {
                return Err(ApiError::conflict(format!(
                    "the VM already runs on node {asked}"
                )));
            }
            return match refusal(self, node, vm) {
                Some(why) => Err(ApiError::conflict(why)),
                None => Ok(node.meta.id.clone()),
            };
        }
        let mut reasons = Vec::new();
        let mut best: Option<(u64, &Node)> = None;
        for node in others {
            if let Some(why) = refusal(self, node, vm) {
                reasons.push(why);
                continue;
            }
            let held = scheduler::held_on(self, &node.meta.id);
            let cap = node.status.capacity;
            // Load: the larger of the vCPU and memory shares held, in per mille.
            let load = (u64::from(held.vcpus) * 1000 / u64::from(cap.vcpus.max(1)))
                .max(held.memory_bytes.saturating_mul(1000) / cap.memory_bytes.max(1));
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, node));
            }
        }
        best.map(|(_, n)| n.meta.id.clone()).ok_or_else(|| {
            ApiError::conflict(format!("no node can take the VM: {}", reasons.join("; ")))
        })
    }

    /// Starts the live migration of VM `id` (to `target`, a node id or name, or the
    /// scheduler's choice). `migration_id` and `grant_token` are minted by the caller.
    pub(super) fn migrate_vm(
        &mut self,
        index: u64,
        id: &str,
        target: Option<&str>,
        migration_id: &str,
        grant_token: &str,
        now: &str,
    ) -> Applied {
        let vm = self.get::<Vm>(id)?;
        let Some(source) = vm.node_id.clone() else {
            return Err(ApiError::conflict(format!(
                "VM {id} is not placed on a node yet"
            )));
        };
        if let Some(m) = vm.migration.as_ref().filter(|m| m.phase.is_active()) {
            return Err(ApiError::conflict(format!(
                "VM {id} is migrating already (migration {}, {})",
                m.id,
                m.phase.as_str()
            )));
        }
        // A stopped VM moves cold (`state/cold_move.rs`): its volumes as replicas.
        let cold = vm.spec.desired_state == DesiredState::Stopped;
        if cold {
            self.cold_move_check(vm)?;
        } else if vm.status.phase != Phase::Running {
            return Err(ApiError::conflict(format!(
                "VM {id} is not running (only a running VM migrates live; a stopped one moves cold)"
            )));
        }
        if self
            .nodes
            .get(&source)
            .is_none_or(|n| n.status.state != NodeState::Online)
        {
            return Err(ApiError::conflict(format!(
                "the VM's node {source} is offline"
            )));
        }
        let target = self.migration_target(vm, &source, target)?;
        let vm = self.get_mut::<Vm>(id)?;
        vm.migration = Some(Migration {
            id: migration_id.to_string(),
            phase: MigrationPhase::Pending,
            source_node_id: source,
            target_node_id: target.clone(),
            started_at: now.to_string(),
            grant_token: grant_token.to_string(),
            cold,
            ..Migration::default()
        });
        // The target's spec gains the VM and the grant: the VM's spec revision moves.
        stamp(&mut vm.meta, index, now, true);
        if let Some(node) = self.nodes.get_mut(&target) {
            node.meta.spec_revision = index;
        }
        self.answer(Kind::Vm, id, "migration_started")
    }

    /// Ends a migration whose source or target node is lost (see [`MigrationLoss`]): `failed`
    /// with the reason, exactly as if the source had reported the failure — the grant leaves
    /// both specs, so the target deletes what it prepared (its agent fenced a copy it may have
    /// resumed before the API could decide: it had no contact for the fencing time) and the
    /// source resumes its paused copy or simply runs on; a drain waiting on it goes on.
    /// Refused (stale decision) when the migration is no longer active or the node is neither
    /// of its ends.
    pub(super) fn migration_node_lost(
        &mut self,
        index: u64,
        loss: &MigrationLoss,
        now: &str,
    ) -> Applied {
        let vm = self.get::<Vm>(&loss.vm_id)?;
        let active = vm
            .migration
            .as_ref()
            .filter(|m| m.phase.is_active() && m.id == loss.migration_id);
        let Some(m) = active else {
            return Err(ApiError::conflict(format!(
                "VM {} has no active migration {} any more",
                loss.vm_id, loss.migration_id
            )));
        };
        let Some(source) = vm.node_id.clone() else {
            return Err(ApiError::conflict(format!(
                "VM {} is not placed on a node",
                loss.vm_id
            )));
        };
        let lost = &loss.lost_node_id;
        let name = self
            .nodes
            .get(lost)
            .map_or(lost.as_str(), |n| n.meta.name.as_str());
        let error = if m.cold {
            // A cold move: nothing ran on the target, only replicas were sent there.
            format!(
                "node {name} ({lost}) is lost: no heartbeat for {} s; the cold move ended, the \
                 VM and its volumes stay on node {source}",
                loss.silent_secs
            )
        } else if *lost == m.target_node_id {
            format!(
                "the target node {name} ({lost}) is lost: no heartbeat for {} s (its agent \
                 fenced its copy of the VM after the fencing time); the VM runs on its source",
                loss.silent_secs
            )
        } else if *lost == source {
            format!(
                "the source node {name} ({lost}) is lost: no heartbeat for {} s; the target's \
                 copy is deleted, the VM stays on its source",
                loss.silent_secs
            )
        } else {
            return Err(ApiError::conflict(format!(
                "node {lost} is neither end of the migration {} of VM {}",
                loss.migration_id, loss.vm_id
            )));
        };
        let update = MigrationUpdate {
            migration_id: loss.migration_id.clone(),
            phase: ReportedPhase::Failed,
            bytes_transferred: 0,
            bytes_remaining: m.bytes_remaining,
            downtime_ms: 0,
            error,
        };
        let changes = self.migration_reported(index, &source, &loss.vm_id, &update, now);
        let value = self
            .object_json(Kind::Vm, &loss.vm_id)
            .unwrap_or_else(Json::null);
        Ok((value, changes))
    }

    /// Applies what the VM's node (the migration's source) reports about its migration.
    pub(super) fn migration_reported(
        &mut self,
        index: u64,
        node_id: &str,
        vm_id: &str,
        update: &MigrationUpdate,
        now: &str,
    ) -> Vec<Change> {
        let Some(vm) = self.vms.get_mut(vm_id) else {
            return Vec::new();
        };
        if vm.node_id.as_deref() != Some(node_id) {
            return Vec::new();
        }
        let Some(m) = vm.migration.as_mut() else {
            return Vec::new();
        };
        if m.id != update.migration_id || !m.phase.is_active() {
            return Vec::new();
        }
        let before = m.clone();
        m.bytes_transferred = m.bytes_transferred.max(update.bytes_transferred);
        m.bytes_remaining = update.bytes_remaining;
        let verb = match update.phase {
            ReportedPhase::Transferring => {
                m.phase = MigrationPhase::Transferring;
                if before.phase == MigrationPhase::Transferring {
                    "migration_progress"
                } else {
                    "migration_transferring"
                }
            }
            ReportedPhase::Completing => {
                m.phase = MigrationPhase::Completing;
                // Why the switch-over waits (an unreachable target), if it does.
                m.error =
                    (!update.error.is_empty()).then(|| update.error.chars().take(4096).collect());
                "migration_completing"
            }
            ReportedPhase::Completed => {
                m.phase = MigrationPhase::Completed;
                m.error = None;
                m.downtime_ms = Some(update.downtime_ms);
                m.bytes_remaining = 0;
                "migration_completed"
            }
            ReportedPhase::Failed => {
                m.phase = MigrationPhase::Failed;
                m.error = Some(if update.error.is_empty() {
                    "the source node reported a failure".into()
                } else {
                    update.error.chars().take(4096).collect()
                });
                "migration_failed"
            }
        };
        if *m == before {
            return Vec::new();
        }
        let ended = !m.phase.is_active();
        if ended {
            m.finished_at = Some(now.to_string());
            m.grant_token.clear();
        }
        let completed = m.phase == MigrationPhase::Completed;
        let error = m.error.clone();
        let target = m.target_node_id.clone();
        let mut changes = Vec::new();
        if completed {
            // The switch: the VM and its volumes now belong to the target.
            vm.node_id = Some(target.clone());
            vm.node_state = self.nodes.get(&target).map(|n| n.status.state);
            let vm = &self.vms[vm_id];
            let volume_ids = vm.spec.volume_ids.clone();
            for vid in volume_ids {
                if let Some(vol) = self.volumes.get_mut(&vid) {
                    if vol.node_id.as_deref() == Some(node_id) {
                        vol.node_id = Some(target.clone());
                        stamp(&mut vol.meta, index, now, true);
                        changes.push(self.change(Kind::Volume, &vid, "migrated"));
                    }
                }
            }
            // A schedule that replicated to the target now replicates back to the source.
            changes.extend(self.reverse_replications(index, now, vm_id, node_id, &target));
        }
        let vm = self.vms.get_mut(vm_id).expect("the VM is there");
        // An end changes both nodes' sets (the VM leaves the source's or the target's).
        stamp(&mut vm.meta, index, now, ended);
        if ended {
            self.counters.last_removal_revision = index;
        }
        changes.push(self.change(Kind::Vm, vm_id, verb));
        if ended {
            // A drain of the source waiting on it starts its next migration.
            let error = (!completed).then(|| error.unwrap_or_default());
            changes.extend(self.drain_migration_ended(
                index,
                node_id,
                vm_id,
                error.as_deref(),
                now,
            ));
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;
    use super::*;

    fn migrate(s: &mut State, at: u64, id: &str, target: Option<&str>) -> Result<Json, ApiError> {
        s.migrate_vm(at, id, target, &format!("mig-{at}"), "secret", "t")
            .map(|(v, _)| v)
    }

    fn report(phase: ReportedPhase, id: &str) -> MigrationUpdate {
        MigrationUpdate {
            migration_id: id.into(),
            phase,
            bytes_transferred: 100,
            bytes_remaining: 0,
            downtime_ms: 7,
            error: "vmm gone".into(),
        }
    }

    fn lose(s: &mut State, at: u64, vm: &str, node: &str) -> Result<Json, ApiError> {
        let migration_id = s.vms[vm].migration.as_ref().unwrap().id.clone();
        let loss = MigrationLoss {
            vm_id: vm.into(),
            migration_id,
            lost_node_id: node.into(),
            silent_secs: 46,
        };
        s.migration_node_lost(at, &loss, "t-lost").map(|(v, _)| v)
    }

    #[test]
    fn a_migration_whose_target_is_lost_fails_naming_the_node_and_the_drain_goes_on() {
        let mut s = State::initial();
        s.nodes.insert("n1".into(), sized_node("n1", "one", 8));
        s.nodes.insert("n2".into(), sized_node("n2", "two", 8));
        s.nodes.insert("n3".into(), sized_node("n3", "three", 8));
        placed_vm(&mut s, "vm", "n1", true);
        placed_vm(&mut s, "calm", "n3", true);
        s.drain_node(1, "n1", "d1", "secret", "t").unwrap();
        assert_eq!(s.vms["vm"].migration.as_ref().unwrap().target_node_id, "n2");
        let mig = s.vms["vm"].migration.as_ref().unwrap().id.clone();
        s.migration_reported(
            2,
            "n1",
            "vm",
            &MigrationUpdate {
                error: "the target does not answer; the VM stays paused".into(),
                ..report(ReportedPhase::Completing, &mig)
            },
            "t",
        );
        // The monitor's decision: only the migration with an end on a lost node.
        let lost = [("n2".to_string(), 46)];
        let losses = crate::ha::lost_migrations(&s, &lost);
        assert_eq!(losses.len(), 1, "{losses:?}");
        assert_eq!(
            (losses[0].vm_id.as_str(), losses[0].lost_node_id.as_str()),
            ("vm", "n2")
        );
        assert!(crate::ha::lost_migrations(&s, &[("n3".to_string(), 46)]).is_empty());
        // A node that is neither end is refused (a stale decision).
        let err = lose(&mut s, 3, "vm", "n3").unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict);
        s.nodes.get_mut("n2").unwrap().status.state = NodeState::Offline;
        let value = lose(&mut s, 4, "vm", "n2").unwrap();
        assert_ne!(value, Json::null());
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(
            vm.node_id.as_deref(),
            Some("n1"),
            "the VM stays on its source"
        );
        assert_eq!(m.phase, MigrationPhase::Failed);
        let error = m.error.as_deref().unwrap();
        assert!(
            error.contains("target node two (n2) is lost") && error.contains("46 s"),
            "{error}"
        );
        assert!(m.grant_token.is_empty(), "the grant leaves both specs");
        assert_eq!(m.finished_at.as_deref(), Some("t-lost"));
        assert_eq!(s.counters.last_removal_revision, 4);
        // The drain waiting on it counted it as failed, with the reason, and went on.
        let d = s.nodes["n1"].status.drain.clone().unwrap();
        assert!(!d.migrating.contains(&"vm".to_string()), "{d:?}");
        assert!(
            d.failed.iter().any(|f| f.reason.contains("n2) is lost")),
            "{d:?}"
        );
        // Applied twice (the next round proposed it again): refused, nothing changes.
        let err = lose(&mut s, 5, "vm", "n2").unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict);
        assert!(crate::ha::lost_migrations(&s, &lost).is_empty());
    }

    #[test]
    fn a_migration_whose_source_is_lost_ends_and_the_target_drops_its_copy() {
        let mut s = State::initial();
        s.nodes.insert("n1".into(), sized_node("n1", "one", 8));
        s.nodes.insert("n2".into(), sized_node("n2", "two", 8));
        placed_vm(&mut s, "vm", "n1", true);
        migrate(&mut s, 1, "vm", Some("two")).unwrap();
        let lost = [("n1".to_string(), 50)];
        let losses = crate::ha::lost_migrations(&s, &lost);
        assert_eq!(losses.len(), 1);
        assert_eq!(losses[0].lost_node_id, "n1");
        lose(&mut s, 2, "vm", "n1").unwrap();
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(m.phase, MigrationPhase::Failed);
        assert!(
            m.error
                .as_deref()
                .unwrap()
                .contains("source node one (n1) is lost"),
            "{m:?}"
        );
        assert_eq!(vm.node_id.as_deref(), Some("n1"));
        assert!(
            !s.migrating_to("vm", "n2"),
            "the target's spec no longer names the VM: it deletes its copy"
        );
    }

    #[test]
    fn a_migration_is_refused_clearly() {
        let mut s = State::initial();
        s.nodes.insert("n1".into(), sized_node("n1", "one", 8));
        placed_vm(&mut s, "vm", "n1", true);
        let err = migrate(&mut s, 1, "vm", None).unwrap_err();
        assert!(err.message.contains("no other node"), "{}", err.message);
        s.nodes.insert("n2".into(), sized_node("n2", "two", 1));
        let err = migrate(&mut s, 2, "vm", Some("one")).unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict);
        let err = migrate(&mut s, 3, "vm", Some("two")).unwrap_err();
        assert!(err.message.contains("no capacity"), "{}", err.message);
        let err = migrate(&mut s, 4, "vm", Some("nine")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        s.nodes.get_mut("n2").unwrap().status.capacity.vcpus = 8;
        s.nodes.get_mut("n2").unwrap().spec.schedulable = false;
        let err = migrate(&mut s, 5, "vm", None).unwrap_err();
        assert!(err.message.contains("cordoned"), "{}", err.message);
        s.nodes.get_mut("n2").unwrap().spec.schedulable = true;
        s.vms.get_mut("vm").unwrap().status.phase = Phase::Stopped;
        let err = migrate(&mut s, 6, "vm", None).unwrap_err();
        assert!(err.message.contains("not running"), "{}", err.message);
        s.vms.get_mut("vm").unwrap().status.phase = Phase::Running;
        migrate(&mut s, 7, "vm", None).unwrap();
        let m = s.vms["vm"].migration.clone().unwrap();
        assert_eq!(
            (m.phase, m.target_node_id.as_str()),
            (MigrationPhase::Pending, "n2")
        );
        let err = migrate(&mut s, 8, "vm", None).unwrap_err();
        assert!(err.message.contains("migrating already"), "{}", err.message);
    }

    #[test]
    fn the_vm_moves_only_when_the_source_reports_completion_and_stays_on_failure() {
        let mut s = State::initial();
        s.nodes.insert("n1".into(), sized_node("n1", "one", 8));
        s.nodes.insert("n2".into(), sized_node("n2", "two", 8));
        placed_vm(&mut s, "vm", "n1", true);
        migrate(&mut s, 1, "vm", Some("two")).unwrap();
        // The target reporting, or another migration's report, changes nothing.
        assert!(s
            .migration_reported(
                2,
                "n2",
                "vm",
                &report(ReportedPhase::Completed, "mig-1"),
                "t"
            )
            .is_empty());
        assert!(s
            .migration_reported(
                2,
                "n1",
                "vm",
                &report(ReportedPhase::Completed, "other"),
                "t"
            )
            .is_empty());
        s.migration_reported(
            3,
            "n1",
            "vm",
            &report(ReportedPhase::Transferring, "mig-1"),
            "t",
        );
        assert_eq!(s.vms["vm"].node_id.as_deref(), Some("n1"));
        assert_eq!(
            s.vms["vm"].migration.as_ref().unwrap().bytes_transferred,
            100
        );
        s.migration_reported(
            4,
            "n1",
            "vm",
            &report(ReportedPhase::Completed, "mig-1"),
            "t2",
        );
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(vm.node_id.as_deref(), Some("n2"));
        assert_eq!(
            (m.phase, m.downtime_ms),
            (MigrationPhase::Completed, Some(7))
        );
        assert_eq!(m.finished_at.as_deref(), Some("t2"));
        assert!(
            m.grant_token.is_empty(),
            "the grant ends with the migration"
        );
        assert_eq!(s.counters.last_removal_revision, 4);

        // Back again, failing: the VM stays where it is, with the reason.
        s.vms.get_mut("vm").unwrap().status.phase = Phase::Running;
        migrate(&mut s, 5, "vm", None).unwrap();
        assert_eq!(s.vms["vm"].migration.as_ref().unwrap().target_node_id, "n1");
        s.migration_reported(6, "n2", "vm", &report(ReportedPhase::Failed, "mig-5"), "t3");
        let vm = &s.vms["vm"];
        let m = vm.migration.as_ref().unwrap();
        assert_eq!(vm.node_id.as_deref(), Some("n2"));
        assert_eq!(m.phase, MigrationPhase::Failed);
        assert_eq!(m.error.as_deref(), Some("vmm gone"));
    }

    #[test]
    fn a_vm_migrated_onto_its_replication_target_replicates_back_to_its_old_node() {
        let mut s = State::initial();
        for (id, name) in [("n1", "one"), ("n2", "two"), ("n3", "three")] {
            s.nodes.insert(id.into(), sized_node(id, name, 8));
        }
        placed_vm(&mut s, "vm", "n1", true);
        placed_vm(&mut s, "other", "n1", true);
        let spec = |vm: &str, targets: &[&str]| ReplicationSpec {
            vm_id: vm.into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            interval_secs: 5,
            keep: 2,
        };
        for (id, vm, targets) in [("r", "vm", &["n2", "n3"][..]), ("o", "other", &["n2"][..])] {
            let r = Replication::new(meta(id, id), spec(vm, targets));
            s.replications.insert(id.into(), r);
        }
        migrate(&mut s, 1, "vm", Some("two")).unwrap();
        let done = report(ReportedPhase::Completed, "mig-1");
        let changes = s.migration_reported(2, "n1", "vm", &done, "t");
        assert!(
            changes.iter().any(|c| c.verb == "retargeted"),
            "{changes:?}"
        );
        // The VM's schedule: n2 (now its node) replaced by n1, n3 kept; pending until n2
        // reports. Another VM's schedule to n2 is not touched.
        let r = &s.replications["r"];
        assert_eq!(r.spec.targets, ["n1", "n3"]);
        assert_eq!(r.status.phase, Phase::Pending);
        assert_eq!(s.replications["o"].spec.targets, ["n2"]);
        // A failed migration turns nothing around.
        s.vms.get_mut("other").unwrap().status.phase = Phase::Running;
        migrate(&mut s, 3, "other", Some("two")).unwrap();
        let failed = report(ReportedPhase::Failed, "mig-3");
        s.migration_reported(4, "n1", "other", &failed, "t");
        assert_eq!(s.replications["o"].spec.targets, ["n2"]);
    }
}
