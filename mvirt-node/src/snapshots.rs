//! A volume's snapshots and rollbacks on this node.
//!
//! The API keeps each volume's snapshot list (in creation order) and, for a rollback, the
//! target snapshot with a generation that counts the rollbacks of the volume. Every pass, for a
//! volume that exists here:
//! 1. a rollback whose generation is newer than the one this agent carried out (kept in its
//!    ledger) runs first — unless a VM that uses the volume still runs here, then it waits;
//! 2. snapshots ZFS holds that the API no longer lists are destroyed;
//! 3. listed snapshots ZFS lacks are taken, with the API's ids and names.
//!
//! Each listed snapshot's state goes back inside the volume's status report (pending, ready or
//! failed with the reason), and so does the rollback generation carried out.

use std::collections::HashMap;

use crate::daemons::DaemonChannel;
use mvirt_api::proto as api;
use mvirt_api::proto::Phase;
use mvirt_log::AuditLogger;
use mvirt_vmm::proto as vmm;
use mvirt_zfs::proto as zfs;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;

use crate::ledger::Ledger;

/// What the volume's status report carries about its snapshots.
#[derive(Debug, Default)]
pub struct SnapshotOutcome {
    pub snapshots: Vec<api::SnapshotStatus>,
    pub rollback_generation: u64,
    /// Why a rollback has not happened yet (empty when none is pending).
    pub rollback_problem: String,
}

fn ledger_key(volume_id: &str) -> String {
    format!("rollback-generation:{volume_id}")
}

/// The rollback generation this agent carried out for a volume (0 = none).
pub fn applied_generation(ledger: &Ledger, volume_id: &str) -> u64 {
    ledger.counter(&ledger_key(volume_id))
}

fn snapshot_status(id: &str, phase: Phase, message: impl Into<String>) -> api::SnapshotStatus {
    api::SnapshotStatus {
        id: id.to_string(),
        phase: phase as i32,
        message: message.into(),
        used_bytes: 0,
    }
}

/// Converges the snapshots (and a pending rollback) of one volume that exists on this node.
/// `running_users` are the VMs using the volume that run here now.
pub async fn converge(
    zfs: &mut ZfsServiceClient<DaemonChannel>,
    ledger: &Ledger,
    audit: &AuditLogger,
    want: &api::VolumeSpec,
    running_users: &[String],
) -> SnapshotOutcome {
    let mut outcome = SnapshotOutcome {
        rollback_generation: applied_generation(ledger, &want.id),
        ..Default::default()
    };
    let rollback_pending = want.rollback_generation > outcome.rollback_generation;
    if rollback_pending {
        match rollback(zfs, ledger, audit, want, running_users).await {
            Ok(()) => outcome.rollback_generation = want.rollback_generation,
            Err(problem) => {
                // Taking new snapshots now would snapshot the state the user is leaving.
                outcome.snapshots = want
                    .snapshots
                    .iter()
                    .map(|s| snapshot_status(&s.id, Phase::Pending, problem.clone()))
                    .collect();
                outcome.rollback_problem = problem;
                return outcome;
            }
        }
    }
    let have: HashMap<String, zfs::Snapshot> = match zfs
        .list_snapshots(zfs::ListSnapshotsRequest {
            volume_id: want.id.clone(),
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .snapshots
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect(),
        Err(e) => {
            outcome.snapshots = want
                .snapshots
                .iter()
                .map(|s| {
                    snapshot_status(
                        &s.id,
                        Phase::Pending,
                        format!("cannot list snapshots: {}", e.message()),
                    )
                })
                .collect();
            return outcome;
        }
    };
    for id in have.keys() {
        if want.snapshots.iter().any(|s| &s.id == id) {
            continue;
        }
        match zfs
            .delete_snapshot(zfs::DeleteSnapshotRequest {
                volume_id: want.id.clone(),
                id: id.clone(),
            })
            .await
        {
            Ok(_) => audit.audit(
                format!("deleted snapshot {id} of volume {}", want.id),
                &[&want.id, id],
            ),
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => {
                tracing::warn!(volume = %want.id, snapshot = %id, error = %e, "delete snapshot")
            }
        }
    }
    for s in &want.snapshots {
        let result = match have.get(&s.id) {
            Some(existing) => Ok(existing.clone()),
            None => zfs
                .create_snapshot(zfs::CreateSnapshotRequest {
                    volume_id: want.id.clone(),
                    id: s.id.clone(),
                    name: s.name.clone(),
                })
                .await
                .map(|r| {
                    audit.audit(
                        format!("took snapshot {} ({}) of volume {}", s.id, s.name, want.id),
                        &[&want.id, &s.id],
                    );
                    r.into_inner()
                }),
        };
        outcome.snapshots.push(match result {
            Ok(snap) => {
                let mut st = snapshot_status(&s.id, Phase::Ready, "");
                st.used_bytes = snap.used_bytes;
                st
            }
            Err(e) => snapshot_status(&s.id, Phase::Failed, e.message()),
        });
    }
    outcome
}

/// Carries out the volume's pending rollback once, or says why it cannot yet.
async fn rollback(
    zfs: &mut ZfsServiceClient<DaemonChannel>,
    ledger: &Ledger,
    audit: &AuditLogger,
    want: &api::VolumeSpec,
    running_users: &[String],
) -> Result<(), String> {
    if let Some(vm) = running_users.first() {
        return Err(format!(
            "rollback to snapshot {} waits for VM {vm} to stop",
            want.rollback_snapshot_id
        ));
    }
    zfs.rollback_snapshot(zfs::RollbackSnapshotRequest {
        volume_id: want.id.clone(),
        id: want.rollback_snapshot_id.clone(),
    })
    .await
    .map_err(|e| {
        format!(
            "rollback to snapshot {}: {}",
            want.rollback_snapshot_id,
            e.message()
        )
    })?;
    ledger
        .set_counter(&ledger_key(&want.id), want.rollback_generation)
        .map_err(|e| format!("rolled back, but the agent could not record it: {e}"))?;
    audit.audit(
        format!(
            "rolled volume {} back to snapshot {} (generation {})",
            want.id, want.rollback_snapshot_id, want.rollback_generation
        ),
        &[&want.id, &want.rollback_snapshot_id],
    );
    Ok(())
}

/// The VMs of the desired set that use `volume_id` and whose hypervisor runs here now.
pub fn running_users(
    spec: &api::NodeSpec,
    local_vms: &HashMap<String, vmm::Vm>,
    volume_id: &str,
) -> Vec<String> {
    spec.vms
        .iter()
        .filter(|vm| vm.volume_ids.iter().any(|v| v == volume_id))
        .filter(|vm| {
            local_vms.get(&vm.id).is_some_and(|v| {
                matches!(
                    vmm::VmState::try_from(v.state),
                    Ok(vmm::VmState::Running | vmm::VmState::Starting | vmm::VmState::Stopping)
                )
            })
        })
        .map(|vm| vm.id.clone())
        .collect()
}
