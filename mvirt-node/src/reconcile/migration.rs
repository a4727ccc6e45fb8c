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
//! settles the switch-over with the target ([`Outgoing::settle`]): `CompleteMigration`
//! (idempotent on the target) until it answers; when the target refuses, `AbortMigration`,
//! which says whether the target runs the VM after all (else it never will). Only a target
//! that says it does not run the VM, or the API ending the migration (its grant leaves this
//! node's spec), lets the paused copy here run again (`ResumeMigratedVm`): an unreachable
//! target or a lost answer keeps it paused, never two copies. Completed: the API moves the VM
//! and this node deletes its paused copy once its spec no longer names the VM. A failed stream
//! leaves the VM running here (mvirt-vmm resumes it). An agent restarted while its VM is
//! paused after a completed stream settles the same way. Progress rides on the VM's status
//! report (`ResourceStatus.migration`).

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
/// How long one settling call to the target may take (its grant wait is 15 s).
const CALL_WAIT: Duration = Duration::from_secs(40);
/// How long a target whose hypervisor is still loading the stream is asked again before its
/// refusal counts.
const LOAD_WAIT: Duration = Duration::from_secs(30);
/// Pause between settling calls to a target that did not answer.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// mvirt-vmm's state reason of a source VM paused after its state went (vmm `MIGRATED`).
const PAUSED_MIGRATED: &str = "migrated away: paused until stopped";
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
    /// The latest spec's grant of each migration (the target's endpoint may change while it
    /// runs, e.g. its agent restarted); gone when the grant left the spec.
    grants: Arc<Mutex<HashMap<String, api::TransferGrant>>>,
    /// The background tasks, aborted when the agent ends (as a killed agent's would be): a
    /// relay never outlives the agent that runs it.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Operations {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Aborts the task when dropped (the relay of an outgoing migration whose operation ended).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| spec.transfers.iter().any(|g| &g.id == id));
    }

    /// Runs the migration `grant` asks for in the background, unless it ran or runs already.
    /// Only a running VM is sent; one found otherwise fails the migration at once.
    /// A VM found paused after a completed stream (this agent restarted in the switch-over)
    /// is not sent again: the operation only settles who runs it with the target.
    pub fn start(&self, cx: &Context, grant: &api::TransferGrant, vm: &vmm::Vm) {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(grant.id.clone(), grant.clone());
        let mut running = self.lock();
        if running.contains_key(&grant.id) {
            return;
        }
        let mut report = api::MigrationReport {
            migration_id: grant.id.clone(),
            phase: Phase::Transferring as i32,
            ..Default::default()
        };
        let paused =
            vm.state == vmm::VmState::Stopping as i32 && vm.state_reason == PAUSED_MIGRATED;
        if paused {
            report.phase = Phase::Completing as i32;
        } else if vm.state != vmm::VmState::Running as i32 {
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
            grants: self.grants.clone(),
            paused,
            wake: cx.wake.clone(),
            vmm: cx.vmm(),
            peers: cx.peers.clone(),
            grant: grant.clone(),
            vm_id: vm.id.clone(),
            socket: cx.migration_dir.join(format!("{}.sock", grant.id)),
            audit: cx.audit.clone(),
            net: cx.net(),
            nic_ids: vm
                .config
                .iter()
                .flat_map(|c| c.nics.iter().map(|n| n.id.clone()))
                .collect(),
        };
        let task = tokio::spawn(mvirt_common::trace::inherit(outgoing.run()));
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

/// One outgoing migration, run in the background.
struct Outgoing {
    reports: Arc<Mutex<HashMap<String, api::MigrationReport>>>,
    grants: Arc<Mutex<HashMap<String, api::TransferGrant>>>,
    /// The stream completed before this operation started (see [`Operations::start`]).
    paused: bool,
    wake: Arc<tokio::sync::Notify>,
    vmm: vmm::vm_service_client::VmServiceClient<crate::daemons::DaemonChannel>,
    peers: PeerDialer,
    grant: api::TransferGrant,
    vm_id: String,
    socket: PathBuf,
    audit: mvirt_log::AuditLogger,
    /// This node's mvirt-ebpf and the VM's NICs: their tracked flows go to the target.
    net: mvirt_ebpf::proto::net_service_client::NetServiceClient<crate::daemons::DaemonChannel>,
    nic_ids: Vec<String>,
}

impl Outgoing {
    fn update(&self, change: impl FnOnce(&mut api::MigrationReport)) {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(report) = reports.get_mut(&self.grant.id) {
            change(report);
        }
    }

    async fn run(self) {
        let result = if self.paused {
            self.switch_over(0).await
        } else {
            self.send().await
        };
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
        let mut relay = AbortOnDrop(tokio::spawn(async move {
            let (stream, _) = tokio::time::timeout(CONNECT_WAIT, listener.accept())
                .await
                .map_err(|_| "the hypervisor did not connect to the migration socket".to_string())?
                .map_err(|e| format!("migration socket: {e}"))?;
            peers
                .relay(&grant, &vm_id, stream)
                .await
                .map_err(|e| format!("relay to the target: {}", e.status().message()))
        }));
        let request = vmm::MigrateVmRequest {
            id: self.vm_id.clone(),
            destination_socket: self.socket.display().to_string(),
            with_disks: true,
            max_downtime_ms: 0,
        };
        let mut progress = match self.vmm.clone().migrate_vm(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                relay.0.abort();
                return Err(format!("MigrateVm: {}", status.message()));
            }
        };
        let mut last: Option<vmm::MigrationProgress> = None;
        let mut woken = Instant::now();
        while let Some(item) = progress.next().await {
            let p = match item {
                Ok(p) => p,
                Err(status) => {
                    relay.0.abort();
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
            let relayed = tokio::time::timeout(Duration::from_secs(5), &mut relay.0).await;
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
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut relay.0).await;
        self.switch_over(last.downtime_ms).await
    }

    /// The guest is paused here, its state on the target: settle which side runs it, and
    /// resume it here only when the target will not.
    async fn switch_over(&self, downtime_ms: u64) -> Result<u64, String> {
        let why = match self.settle().await {
            Ok(()) => return Ok(downtime_ms),
            Err(why) => why,
        };
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
        Err(format!("the target did not take over: {why}; {here}"))
    }

    /// The grant as the latest spec has it; `None` once it left the spec (the API ended the
    /// migration).
    fn current_grant(&self) -> Option<api::TransferGrant> {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.grant.id)
            .cloned()
    }

    /// `Ok` when the target runs the VM; `Err(why)` when it said it does not and never will
    /// (or the API ended the migration). Keeps asking a target that does not answer: the
    /// VM stays paused here meanwhile, and the report says so.
    async fn settle(&self) -> Result<(), String> {
        let ended = "the API ended the migration while the target could not be asked";
        let mut woken: Option<Instant> = None;
        let (flows, flow_problems) =
            crate::migration_flows::export(self.net.clone(), &self.nic_ids).await;
        // 1. CompleteMigration (idempotent), until the target answers it.
        let loading_until = Instant::now() + LOAD_WAIT;
        let refusal = loop {
            let Some(grant) = self.current_grant() else {
                return Err(ended.into());
            };
            let call = self
                .peers
                .complete_migration(&grant, &self.vm_id, flows.clone());
            let problem = match tokio::time::timeout(CALL_WAIT, call).await {
                Ok(Ok(flows_error)) => {
                    self.flows_reported(flow_problems, flows_error);
                    return Ok(());
                }
                Ok(Err(err)) => {
                    let status = err.status();
                    // The target's hypervisor may still be loading the last of the stream.
                    let loading = status.message().contains("waiting for its migration state")
                        && Instant::now() < loading_until;
                    if !loading && !retry_completion(&status) {
                        break status.message().to_string();
                    }
                    status.message().to_string()
                }
                Err(_) => format!("no answer within {CALL_WAIT:?}"),
            };
            self.unsettled("complete", &problem, &mut woken);
            tokio::time::sleep(RETRY_EVERY).await;
        };
        // 2. Refused: the target must promise never to run it, or say that it runs it.
        tracing::warn!(vm = %self.vm_id, migration = %self.grant.id, %refusal, "the target refused to complete the migration; aborting it there");
        loop {
            let Some(grant) = self.current_grant() else {
                return Err(format!("{refusal}; {ended}"));
            };
            let call = self.peers.abort_migration(&grant, &self.vm_id);
            let problem = match tokio::time::timeout(CALL_WAIT, call).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => return Err(refusal),
                Ok(Err(err)) => err.status().message().to_string(),
                Err(_) => format!("no answer within {CALL_WAIT:?}"),
            };
            self.unsettled("abort", &problem, &mut woken);
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Audits flow hand-over problems (best-effort: the migration goes on) and puts them in
    /// the report's error.
    fn flows_reported(&self, mut problems: Vec<String>, target: String) {
        problems.extend((!target.is_empty()).then_some(target));
        if !problems.is_empty() {
            let error = problems.join("; ");
            self.audit.audit(
                format!(
                    "migration of VM {} to node {}: tracked flows not handed over: {error}",
                    self.vm_id, self.grant.target_node_id
                ),
                &[&self.vm_id, &self.grant.id],
            );
            self.update(|r| r.error = error);
        }
    }

    /// Reports that the switch-over waits for the target (phase `completing`, with the error).
    fn unsettled(&self, call: &str, problem: &str, woken: &mut Option<Instant>) {
        let error = format!(
            "the target node did not answer the switch-over ({call}: {problem}); the VM stays \
             paused on the source until the target answers or the migration is ended"
        );
        self.update(|r| {
            r.phase = Phase::Completing as i32;
            r.error = error;
        });
        if woken.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY * 5) {
            if woken.is_none() {
                tracing::warn!(vm = %self.vm_id, migration = %self.grant.id, %problem, "the migration target does not answer; the VM stays paused here");
            }
            *woken = Some(Instant::now());
            self.wake.notify_one();
        }
    }
}

/// Whether a failed `CompleteMigration` is worth asking again (the target may not have been
/// reached, or may not know the grant yet) rather than a refusal that calls for an abort.
fn retry_completion(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
    )
}

/// Target side: prepares the incoming VM (`config` as on the source) and registers its socket.
pub async fn prepare_incoming(
    cx: &Context,
    want: &api::VmSpec,
    config: vmm::VmConfig,
    seen: bool,
) -> Result<Result<vmm::Vm, Status>, Status> {
    if crate::fencing::fenced_incoming(want) {
        // The fence killed (or will kill) this copy: nothing is prepared while it holds.
        return Ok(Err(Status::failed_precondition(
            "fenced: no contact with the API; the incoming migration is not prepared",
        )));
    }
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
