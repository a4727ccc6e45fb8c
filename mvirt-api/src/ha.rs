//! HA restart with fencing (issue 23), the control plane's half: which `ha: true` VMs on lost
//! nodes move where. A pure function of the state; the leader runs it every round
//! (`App::ha_round`) and proposes each decision as one `HaFailover` command, which `apply`
//! checks again (`state/ha.rs`).
//!
//! Timing: a node is *lost* once its last heartbeat is older than the agents' fencing time
//! plus a margin (`--ha-fencing-secs` + `--ha-margin-secs`, 30 + 15 s by default). An agent
//! that has not reached the API for the fencing time kills its HA VMs itself
//! (mvirt-node `fencing.rs`), so by the time the VM is started elsewhere its old copy is gone.
//!
//! Where to: the VM's replication schedules name target nodes; a target qualifies when it is
//! online, is not lost, and the schedule's status (reported by the VM's node before it was
//! lost) shows a replica of *every* volume of the VM there (`last_snapshot_id` and
//! `last_replicated_at` set). Among those, the one whose oldest volume replica is newest wins
//! (ties: the smaller node id). The data-loss window is `now − that oldest
//! last_replicated_at`. A VM without a usable replica stays, marked `stuck` with the reason.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::model::{HaState, NodeState, Replication, Vm};
use crate::state::{HaDecision, State};

/// Fencing time + margin when no flags say otherwise (30 s + 15 s).
pub const DEFAULT_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(45);

/// The decisions for the HA VMs on the `lost` nodes. Stuck VMs whose reason did not change are
/// left out (no write per round).
///
/// Cost: the leader calls this every round (100-200 ms) while a node stays lost, usually with
/// nothing left to decide (its HA VMs moved, or are stuck with an unchanged reason). One pass
/// over the VMs (the lost set is small); the schedules are grouped by VM once, and only when
/// some HA VM is on a lost node (not once per such VM).
pub fn decide(state: &State, lost: &[String], now: DateTime<Utc>) -> Vec<HaDecision> {
    let on_lost: Vec<(&Vm, &str)> = state
        .vms
        .values()
        .filter(|v| v.spec.ha)
        .filter_map(|v| {
            let from = v.node_id.as_deref()?;
            lost.iter().any(|l| l == from).then_some((v, from))
        })
        .collect();
    if on_lost.is_empty() {
        return Vec::new();
    }
    let mut schedules: HashMap<&str, Vec<&Replication>> = HashMap::new();
    for r in state.replications.values() {
        schedules.entry(r.spec.vm_id.as_str()).or_default().push(r);
    }
    let mut out = Vec::new();
    for (vm, from) in on_lost {
        let of_vm = schedules
            .get(vm.meta.id.as_str())
            .map_or(&[][..], Vec::as_slice);
        let decision = match best_replica(state, vm, of_vm, lost) {
            Ok((target, oldest)) => {
                let loss = (now - oldest).num_seconds().max(0) as u64;
                HaDecision {
                    vm_id: vm.meta.id.clone(),
                    from_node_id: from.to_string(),
                    to_node_id: Some(target.clone()),
                    replicated_at: Some(
                        oldest.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    ),
                    data_loss_secs: Some(loss),
                    message: format!(
                        "restarted from the replicas on node {target}; up to {loss} s of \
                         writes lost (replicated at {})",
                        oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                }
            }
            Err(reason) => {
                let unchanged = vm.ha_status.as_ref().is_some_and(|s| {
                    s.state == HaState::Stuck && s.from_node_id == from && s.message == reason
                });
                if unchanged {
                    continue;
                }
                HaDecision {
                    vm_id: vm.meta.id.clone(),
                    from_node_id: from.to_string(),
                    to_node_id: None,
                    replicated_at: None,
                    data_loss_secs: None,
                    message: reason,
                }
            }
        };
        out.push(decision);
    }
    out
}

/// The active migrations with an end on a `lost` node (`silent_secs`: how long each lost node
/// has been silent), to be ended `failed` (`Command::EndMigrationOnNodeLoss`).
///
/// - Target lost: its agent, without contact for the fencing time, killed the copy it held
///   (prepared, receiving, or resumed after the switch-over) and refuses to complete; only
///   now, after the fencing time plus the margin, does the API end the migration, so the
///   source's `Outgoing::settle` resumes its paused copy (or the copy that never stopped
///   runs on). What the target ran after the switch-over is lost.
/// - Source lost: the migration ends too, so the target deletes its copy and never runs the
///   VM besides the source's (which stays the VM's; an HA VM is then failed over by
///   [`decide`] in the same round, from its replicas). Proposed before the HA decisions.
///
/// Cost: one pass over the VMs, only while some node is lost.
pub fn lost_migrations(state: &State, lost: &[(String, u64)]) -> Vec<crate::state::MigrationLoss> {
    let mut out = Vec::new();
    for vm in state.vms.values() {
        let Some(m) = vm.migration.as_ref().filter(|m| m.phase.is_active()) else {
            continue;
        };
        let ends = [
            m.target_node_id.as_str(),
            vm.node_id.as_deref().unwrap_or(""),
        ];
        let Some((node, secs)) = ends
            .iter()
            .find_map(|end| lost.iter().find(|(id, _)| id == end))
        else {
            continue;
        };
        out.push(crate::state::MigrationLoss {
            vm_id: vm.meta.id.clone(),
            migration_id: m.id.clone(),
            lost_node_id: node.clone(),
            silent_secs: *secs,
        });
    }
    out
}

/// The target with the newest complete set of replicas of `vm`, and the oldest
/// `last_replicated_at` of that set; or why there is none.
fn best_replica(
    state: &State,
    vm: &Vm,
    schedules: &[&Replication],
    lost: &[String],
) -> Result<(String, DateTime<Utc>), String> {
    if vm.spec.volume_ids.is_empty() {
        return Err("the VM has no volumes to restart from".into());
    }
    if schedules.is_empty() {
        return Err("its node is lost and the VM has no replication schedule".into());
    }
    let mut best: Option<(String, DateTime<Utc>)> = None;
    let mut reasons = Vec::new();
    for schedule in schedules {
        for target in &schedule.spec.targets {
            let online = state
                .nodes
                .get(target)
                .is_some_and(|n| n.status.state == NodeState::Online);
            if !online || lost.contains(target) {
                reasons.push(format!("node {target} is not online"));
                continue;
            }
            let mut oldest: Option<DateTime<Utc>> = None;
            let mut complete = true;
            for volume_id in &vm.spec.volume_ids {
                let at = schedule
                    .status
                    .replicas
                    .iter()
                    .find(|r| &r.volume_id == volume_id && &r.target_node_id == target)
                    .filter(|r| r.last_snapshot_id.is_some())
                    .and_then(|r| r.last_replicated_at.as_deref())
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                match at {
                    Some(at) => oldest = Some(oldest.map_or(at, |o| o.min(at))),
                    None => {
                        reasons.push(format!(
                            "node {target} holds no replica of volume {volume_id}"
                        ));
                        complete = false;
                        break;
                    }
                }
            }
            let Some(oldest) = oldest.filter(|_| complete) else {
                continue;
            };
            let better = best
                .as_ref()
                .is_none_or(|(id, at)| oldest > *at || (oldest == *at && target < id));
            if better {
                best = Some((target.clone(), oldest));
            }
        }
    }
    best.ok_or_else(|| {
        format!(
            "its node is lost and no online node holds a replica of every volume ({})",
            reasons.join("; ")
        )
    })
}
