//! Live migration on this node, both sides (the plan: mvirt-node README, "Live migration").
//!
//! **Target** (the spec names the VM with `incoming_migration_id`): once the VM's NICs and
//! volumes exist here, [`prepare_incoming`] asks mvirt-vmm to `PrepareIncomingMigration` (the
//! hypervisor waits, paused, on a local socket) and registers that socket in
//! [`Context::incoming`], where `NodePeer.Relay` finds it. The source's `CompleteMigration`
//! (`crate::transfer`) lets the guest run. The VM is owned (ledger) from the prepare on, so
//! when the migration fails and the spec drops it, the next pass deletes what was prepared.
//!
//! **Source** (the spec carries a transfer grant with `vm_id`, this node as source): a
//! background operation per migration ([`Operations`]) listens on a unix socket, calls
//! `MigrateVm(with_disks)` (QEMU connects to the socket) and relays the connection to the
//! target (`peers.relay`). When the hypervisor reports COMPLETED (the guest paused here), it
//! asks the target to `CompleteMigration`; when that succeeded it reports `completed` (the API
//! then moves the VM, and this node deletes its paused copy once its spec no longer names the
//! VM). A failed stream leaves the VM running here (mvirt-vmm resumes it); a failed completion
//! resumes it with `ResumeMigratedVm`; both report `failed` with the reason. Progress rides on
//! the VM's status report (`ResourceStatus.migration`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Status;

use mvirt_api::proto as api;
use mvirt_api::proto::MigrationReportPhase as Phase;
use mvirt_vmm::proto as vmm;

use super::Context;
use crate::transfer::PeerDialer;

/// How long the source waits for its hypervisor to connect to the migration socket.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How long the source keeps asking an unreachable target to complete.
const COMPLETE_WAIT: Duration = Duration::from_secs(30);
/// Progress wakes the agent (and so reaches the API) at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The grant that makes this node the source of VM `vm_id`'s migration, if any.
pub fn outgoing_grant<'a>(
    spec: &'a api::NodeSpec,
    node_id: &str,
    vm_id: &str,
) -> Option<&'a api::TransferGrant> {
    spec.transfers.iter().find(|g| {
        g.vm_id == vm_id && g.source_node_id == node_id && g.purpose.starts_with("migration")
    })
}

/// The outgoing migrations of this node, by migration (grant) id: what each last reported.
#[derive(Default)]
pub struct Operations {
    running: Arc<Mutex<HashMap<String, api::MigrationReport>>>,
}

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, api::MigrationReport>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What migration `id` last reported, if it ran here.
    pub fn report(&self, id: &str) -> Option<api::MigrationReport> {
        self.lock().get(id).cloned()
    }

    /// Forgets migrations whose grants are gone (the API has recorded how they ended).
    pub fn retain(&self, spec: &api::NodeSpec) {
        self.lock()
            .retain(|id, _| spec.transfers.iter().any(|g| &g.id == id));
    }

    /// Runs the migration `grant` asks for in the background, unless it ran or runs already.
    /// Only a running VM is sent; one found otherwise fails the migration at once.
    pub fn start(&self, cx: &Context, grant: &api::TransferGrant, vm: &vmm::Vm) {
        let mut running = self.lock();
        if running.contains_key(&grant.id) {
            return;
        }
        let mut report = api::MigrationReport {
            migration_id: grant.id.clone(),
            phase: Phase::Transferring as i32,
            ..Default::default()
        };
        if vm.state != vmm::VmState::Running as i32 {
            report.phase = Phase::Failed as i32;
            report.error = format!("the VM is not running on the source ({})", vm.state_reason);
            running.insert(grant.id.clone(), report);
            return;
        }
        running.insert(grant.id.clone(), report);
        drop(running);
        cx.audit.audit(
            format!(
                "migrating VM {} to node {} (migration {})",
                vm.id, grant.target_node_id, grant.id
            ),
            &[&vm.id, &grant.id],
        );
        let outgoing = Outgoing {
            reports: self.running.clone(),
            wake: cx.wake.clone(),
            vmm: cx.vmm(),
            peers: cx.peers.clone(),
            grant: grant.clone(),
            vm_id: vm.id.clone(),
            socket: cx.migration_dir.join(format!("{}.sock", grant.id)),
            audit: cx.audit.clone(),
        };
        tokio::spawn(mvirt_common::trace::inherit(outgoing.run()));
    }
}

/// One outgoing migration, run in the background.
struct Outgoing {
    reports: Arc<Mutex<HashMap<String, api::MigrationReport>>>,
    wake: Arc<tokio::sync::Notify>,
    vmm: vmm::vm_service_client::VmServiceClient<crate::daemons::DaemonChannel>,
    peers: PeerDialer,
    grant: api::TransferGrant,
    vm_id: String,
    socket: PathBuf,
    audit: mvirt_log::AuditLogger,
}

impl Outgoing {
    fn update(&self, change: impl FnOnce(&mut api::MigrationReport)) {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(report) = reports.get_mut(&self.grant.id) {
            change(report);
        }
    }

    async fn run(self) {
        let result = self.send().await;
        let _ = std::fs::remove_file(&self.socket);
        match result {
            Ok(downtime_ms) => {
                self.audit.audit(
                    format!(
                        "migrated VM {} to node {} (downtime {downtime_ms} ms)",
                        self.vm_id, self.grant.target_node_id
                    ),
                    &[&self.vm_id, &self.grant.id],
                );
                self.update(|r| {
                    r.phase = Phase::Completed as i32;
                    r.downtime_ms = downtime_ms;
                    r.bytes_remaining = 0;
                });
            }
            Err(error) => {
                tracing::warn!(vm = %self.vm_id, migration = %self.grant.id, %error, "migration failed");
                self.audit.audit(
                    format!(
                        "migration of VM {} to node {} failed: {error}",
                        self.vm_id, self.grant.target_node_id
                    ),
                    &[&self.vm_id, &self.grant.id],
                );
                self.update(|r| {
                    r.phase = Phase::Failed as i32;
                    r.error = error;
                });
            }
        }
        self.wake.notify_one();
    }

    /// Sends the VM and has the target take over; the downtime, or why it runs here still.
    async fn send(&self) -> Result<u64, String> {
        if let Some(dir) = self.socket.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let _ = std::fs::remove_file(&self.socket);
        let listener = tokio::net::UnixListener::bind(&self.socket)
            .map_err(|e| format!("cannot listen on {}: {e}", self.socket.display()))?;
        let (peers, grant, vm_id) = (self.peers.clone(), self.grant.clone(), self.vm_id.clone());
        let relay = tokio::spawn(async move {
            let (stream, _) = tokio::time::timeout(CONNECT_WAIT, listener.accept())
                .await
                .map_err(|_| "the hypervisor did not connect to the migration socket".to_string())?
                .map_err(|e| format!("migration socket: {e}"))?;
            peers
                .relay(&grant, &vm_id, stream)
                .await
                .map_err(|e| format!("relay to the target: {}", e.status().message()))
        });
        let request = vmm::MigrateVmRequest {
            id: self.vm_id.clone(),
            destination_socket: self.socket.display().to_string(),
            with_disks: true,
            max_downtime_ms: 0,
        };
        let mut progress = match self.vmm.clone().migrate_vm(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                relay.abort();
                return Err(format!("MigrateVm: {}", status.message()));
            }
        };
        let mut last: Option<vmm::MigrationProgress> = None;
        let mut woken = Instant::now();
        while let Some(item) = progress.next().await {
            let p = match item {
                Ok(p) => p,
                Err(status) => {
                    relay.abort();
                    return Err(format!("MigrateVm: {}", status.message()));
                }
            };
            self.update(|r| {
                r.bytes_transferred = p.transferred_bytes;
                r.bytes_remaining = p.remaining_bytes;
            });
            if woken.elapsed() >= PROGRESS_EVERY {
                woken = Instant::now();
                self.wake.notify_one();
            }
            last = Some(p);
        }
        let last = last.ok_or("MigrateVm ended without a result")?;
        let status = vmm::MigrationStatus::try_from(last.status).unwrap_or_default();
        if status != vmm::MigrationStatus::Completed {
            // mvirt-vmm resumed the guest here. The relay's error, if it failed, says more
            // than the hypervisor's broken pipe.
            let relayed = tokio::time::timeout(Duration::from_secs(5), relay).await;
            if let Ok(Ok(Err(relay_error))) = relayed {
                return Err(format!("{relay_error}; running on the source"));
            }
            let why = if last.error.is_empty() {
                format!("{status:?}").to_lowercase()
            } else {
                last.error.clone()
            };
            return Err(format!(
                "the hypervisor's migration ended: {why}; running on the source"
            ));
        }
        // The guest is paused here and its state is on the target: let it run there.
        self.update(|r| {
            r.phase = Phase::Completing as i32;
            r.downtime_ms = last.downtime_ms;
        });
        self.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(10), relay).await;
        match self.complete().await {
            Ok(()) => Ok(last.downtime_ms),
            Err(status) => {
                let resumed = self
                    .vmm
                    .clone()
                    .resume_migrated_vm(vmm::ResumeMigratedVmRequest {
                        id: self.vm_id.clone(),
                    })
                    .await;
                let here = match resumed {
                    Ok(_) => "running on the source".to_string(),
                    Err(e) => format!("resuming on the source failed too: {}", e.message()),
                };
                Err(format!(
                    "the target could not take over: {}; {here}",
                    status.message()
                ))
            }
        }
    }

    /// Asks the target to let the VM run, retrying while it cannot be reached.
    async fn complete(&self) -> Result<(), Status> {
        let deadline = Instant::now() + COMPLETE_WAIT;
        loop {
            match self
                .peers
                .complete_migration(&self.grant, &self.vm_id)
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) => {
                    let status = err.status();
                    let unreachable = matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown
                    );
                    if !unreachable || Instant::now() >= deadline {
                        return Err(status);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Target side: prepares the incoming VM (`config` as on the source) and registers its socket.
pub async fn prepare_incoming(
    cx: &Context,
    want: &api::VmSpec,
    config: vmm::VmConfig,
    seen: bool,
) -> Result<Result<vmm::Vm, Status>, Status> {
    let request = vmm::PrepareIncomingMigrationRequest {
        id: want.id.clone(),
        config: Some(config),
    };
    let mut client = cx.vmm();
    let prepared = if seen {
        Ok(client
            .prepare_incoming_migration(request)
            .await
            .map(tonic::Response::into_inner))
    } else {
        let call = client.prepare_incoming_migration(request);
        cx.create(super::Kind::Vm, "incoming VM", &want.id, call)
            .await
    }?;
    Ok(prepared.map(|incoming| {
        cx.incoming
            .insert(&want.id, PathBuf::from(&incoming.socket_path));
        incoming.vm.unwrap_or_default()
    }))
}
