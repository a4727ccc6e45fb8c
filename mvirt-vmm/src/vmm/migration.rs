//! Live migration of a VM's hypervisor process between two mvirt-vmm daemons.
//!
//! mvirt-vmm only ever talks to unix sockets; the node agents carry the stream between hosts
//! (mvirt-node `transfer.rs`). The walk:
//!
//! 1. **Target** [`Vmm::prepare_incoming`]: creates the VM record (as `CreateVm`) and starts
//!    the hypervisor waiting for the state on `<run>/migrate-in.sock`, guest paused (QEMU
//!    `-incoming unix:… -S`). The VM is `starting` with the reason [`INCOMING`].
//! 2. **Source** [`Vmm::migrate`]: the running VM's hypervisor sends memory, device state and,
//!    with `with_disks`, its disks (QEMU block migration) to a unix socket the agent listens on.
//!    A follower task follows the progress (QEMU: `MIGRATION` events and `query-migrate` on
//!    one QMP connection) into a watch channel. On failure or cancellation the migration is
//!    cancelled and the guest runs on here (`cont`); on completion the guest stays paused and
//!    the VM is `stopping` with the reason [`MIGRATED`].
//! 3. **Target** [`Vmm::complete_incoming`]: once the state arrived completely, lets the guest
//!    run (`cont`): `running`.
//! 4. **Source**: the agent kills the paused source once the target runs — or, if the target
//!    could not take over, [`Vmm::resume_migrated`] lets it run here again.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::cloudinit;
use crate::hypervisor::{
    LaunchRequest, MigrationStats, MigrationStatus, MigrationWatch, MIGRATION_POLL,
};
use crate::model::{now_ms, VmRecord, VmSpec, VmState};

use super::{VmEventKind, Vmm, VmmError};

/// The state reason of a VM waiting for its incoming migration.
pub const INCOMING: &str = "waiting for an incoming migration";
/// The state reason of a source VM whose state was migrated away (paused until stopped).
pub const MIGRATED: &str = "migrated away: paused until stopped";
/// The state reason of a VM whose outgoing migration runs.
pub const MIGRATING: &str = "migrating";

/// How long an outgoing migration may send nothing before it is cancelled.
const STALL: Duration = Duration::from_secs(30);

impl Vmm {
    /// Creates the VM (idempotent like [`Vmm::create`]) and starts its hypervisor waiting for
    /// an incoming migration; returns the VM and the unix socket the hypervisor listens on.
    /// A VM already waiting returns the same socket.
    pub async fn prepare_incoming(
        &self,
        id: &str,
        spec: VmSpec,
    ) -> Result<(VmRecord, PathBuf), VmmError> {
        self.create(id, spec).await?;
        self.serialised(id, |vmm, id| async move {
            vmm.prepare_incoming_locked(&id).await
        })
        .await
    }

    async fn prepare_incoming_locked(&self, id: &str) -> Result<(VmRecord, PathBuf), VmmError> {
        let vm = self.load(id)?;
        let run = self.run_dir(id);
        let socket = run.path().join("migrate-in.sock");
        if vm.state.is_active() {
            if vm.state == VmState::Starting && vm.state_reason == INCOMING {
                return Ok((vm, socket));
            }
            return Err(VmmError::Running(id.to_string()));
        }
        self.validate_spec(&vm.spec)?;
        std::fs::create_dir_all(run.path()).map_err(|source| VmmError::Io {
            path: run.path().display().to_string(),
            source,
        })?;
        let _ = std::fs::remove_file(run.console_log());
        // The same devices as on the source: the cloud-init seed too.
        let cidata = match &vm.spec.cloud_init {
            Some(ci) => {
                Some(cloudinit::write_seed(&run.cidata_image(), id, &vm.spec.name, ci).await?)
            }
            None => None,
        };
        let request = LaunchRequest {
            vm_id: id,
            spec: &vm.spec,
            run: &run,
            cidata: cidata.as_deref(),
        };
        self.set_state(id, VmState::Starting, INCOMING)?;
        let launched = match self.inner.driver.launch_incoming(&request, &socket).await {
            Ok(launched) => launched,
            Err(source) => {
                let err = VmmError::Hypervisor {
                    id: id.to_string(),
                    source,
                };
                let reason = format!(
                    "incoming migration failed: {}",
                    mvirt_common::error::error_chain(&err)
                );
                let _ = self.set_state(id, VmState::Failed, reason);
                return Err(err);
            }
        };
        let identity = launched.identity;
        self.track(id, identity, launched.child, Vec::new());
        let vm = self.update(id, VmEventKind::StateChanged, |vm| {
            vm.state = VmState::Starting;
            vm.state_reason = INCOMING.into();
            vm.process = Some(identity);
            vm.pending_changes.clear();
        })?;
        self.inner.audit.audit(
            format!(
                "VM {} waits for an incoming migration (pid {})",
                vm.spec.name, identity.pid
            ),
            &[id],
        );
        Ok((vm, socket))
    }

    /// Starts sending the running VM to `destination` (a unix socket the caller listens on)
    /// and returns the progress, updated every 50 ms and at once on a state change
    /// until it ends (completed: the guest
    /// stays paused here; failed or cancelled: the guest runs on here).
    pub async fn migrate(
        &self,
        id: &str,
        destination: PathBuf,
        with_disks: bool,
        max_downtime: Duration,
    ) -> Result<watch::Receiver<MigrationStats>, VmmError> {
        let vm = self.load(id)?;
        if vm.state != VmState::Running {
            return Err(VmmError::NotRunning {
                id: id.to_string(),
                state: vm.state.as_str(),
                action: "a migration",
            });
        }
        let run = self.run_dir(id);
        self.inner
            .driver
            .migrate_out(&run, &destination, with_disks, max_downtime)
            .await
            .map_err(|source| VmmError::Hypervisor {
                id: id.to_string(),
                source,
            })?;
        self.set_state(id, VmState::Running, MIGRATING)?;
        self.inner
            .audit
            .audit(format!("migration of VM {} started", vm.spec.name), &[id]);
        let (tx, rx) = watch::channel(MigrationStats {
            status: MigrationStatus::Active,
            ..Default::default()
        });
        let vmm = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { vmm.follow_outgoing(&id, tx).await });
        Ok(rx)
    }

    /// Follows the outgoing migration until it ends (the driver's
    /// [`crate::hypervisor::Hypervisor::watch_migration`]: QEMU's `MIGRATION` events on one
    /// QMP connection) and settles the VM's state (see [`Vmm::migrate`]). Runs on its own
    /// task, whatever the caller does.
    async fn follow_outgoing(&self, id: &str, progress: watch::Sender<MigrationStats>) {
        let run = self.run_dir(id);
        let mut failures = 0;
        let mut watch = MigrationWatch::default();
        // A stream that stops moving (a target that hangs without closing) is cancelled.
        let mut last_moved = (0u64, tokio::time::Instant::now());
        loop {
            let stats = match self.inner.driver.watch_migration(&run, &mut watch).await {
                Ok(stats) => stats,
                Err(err) => {
                    failures += 1;
                    if failures < 10 {
                        tokio::time::sleep(MIGRATION_POLL).await;
                        continue;
                    }
                    MigrationStats {
                        status: MigrationStatus::Failed,
                        error: format!("cannot query the migration: {err}"),
                        ..Default::default()
                    }
                }
            };
            let mut stats = stats;
            if stats.status == MigrationStatus::Active {
                if stats.transferred_bytes != last_moved.0 {
                    last_moved = (stats.transferred_bytes, tokio::time::Instant::now());
                } else if last_moved.1.elapsed() > STALL {
                    stats.status = MigrationStatus::Failed;
                    stats.error = format!("the stream made no progress for {STALL:?}");
                }
            }
            match stats.status {
                MigrationStatus::Active | MigrationStatus::None => {
                    let _ = progress.send(stats);
                }
                MigrationStatus::Completed => {
                    watch.close();
                    let _ = self.set_state(id, VmState::Stopping, MIGRATED);
                    self.inner.audit.audit(
                        format!(
                            "VM migrated away ({} bytes, downtime {} ms); paused until stopped",
                            stats.transferred_bytes, stats.downtime_ms
                        ),
                        &[id],
                    );
                    let _ = progress.send(stats);
                    return;
                }
                MigrationStatus::Failed | MigrationStatus::Cancelled => {
                    // The cancel needs the QMP socket.
                    watch.close();
                    if let Err(err) = self.inner.driver.cancel_migration(&run).await {
                        stats.error = format!("{}; resuming the guest failed: {err}", stats.error);
                    }
                    let reason = format!(
                        "migration {}: {}; running here",
                        stats.status.as_str(),
                        stats.error
                    );
                    let _ = self.set_state(id, VmState::Running, reason.clone());
                    self.inner.audit.warn(reason, &[id]);
                    let _ = progress.send(stats);
                    return;
                }
            }
        }
    }

    /// After a daemon restart: follows an outgoing migration that was running (see
    /// `recovery.rs`); its progress has no reader any more.
    pub(super) fn follow_migration_again(&self, id: &str) {
        let (tx, _rx) = watch::channel(MigrationStats {
            status: MigrationStatus::Active,
            ..Default::default()
        });
        let vmm = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { vmm.follow_outgoing(&id, tx).await });
    }

    /// Cancels a running outgoing migration; the guest runs on here. The follower task sees
    /// the cancellation and settles the state.
    pub async fn cancel_migration(&self, id: &str) -> Result<VmRecord, VmmError> {
        let vm = self.load(id)?;
        self.inner
            .driver
            .cancel_migration(&self.run_dir(id))
            .await
            .map_err(|source| VmmError::Hypervisor {
                id: id.to_string(),
                source,
            })?;
        Ok(vm)
    }

    /// Target: the state arrived completely; let the guest run.
    pub async fn complete_incoming(&self, id: &str) -> Result<VmRecord, VmmError> {
        self.serialised(id, |vmm, id| async move {
            let vm = vmm.load(&id)?;
            if vm.state == VmState::Running {
                return Ok(vm);
            }
            if !(vm.state == VmState::Starting && vm.state_reason == INCOMING) {
                return Err(VmmError::NotRunning {
                    id: id.clone(),
                    state: vm.state.as_str(),
                    action: "completing an incoming migration",
                });
            }
            let run = vmm.run_dir(&id);
            let hypervisor = |source| VmmError::Hypervisor {
                id: id.clone(),
                source,
            };
            let stats = vmm
                .inner
                .driver
                .migration_progress(&run)
                .await
                .map_err(hypervisor)?;
            if stats.status != MigrationStatus::Completed {
                return Err(VmmError::NotRunning {
                    id: id.clone(),
                    state: "waiting for its migration state",
                    action: "completing an incoming migration",
                });
            }
            vmm.inner.driver.resume(&run).await.map_err(hypervisor)?;
            let vm = vmm.update(&id, VmEventKind::StateChanged, |vm| {
                vm.state = VmState::Running;
                vm.state_reason = "migrated in".into();
                vm.started_at_ms = now_ms();
            })?;
            vmm.inner.audit.audit(
                format!("VM {} runs here after its migration", vm.spec.name),
                &[&id],
            );
            Ok(vm)
        })
        .await
    }

    /// Source: the migration completed but the target could not take over: the paused guest
    /// runs here again.
    pub async fn resume_migrated(&self, id: &str) -> Result<VmRecord, VmmError> {
        self.serialised(id, |vmm, id| async move {
            let vm = vmm.load(&id)?;
            if !(vm.state == VmState::Stopping && vm.state_reason == MIGRATED) {
                return Ok(vm);
            }
            vmm.inner
                .driver
                .resume(&vmm.run_dir(&id))
                .await
                .map_err(|source| VmmError::Hypervisor {
                    id: id.clone(),
                    source,
                })?;
            let vm = vmm.set_state(
                &id,
                VmState::Running,
                "the migration target did not take over; running here again",
            )?;
            vmm.inner
                .audit
                .warn("migration target did not take over; resumed here", &[&id]);
            Ok(vm)
        })
        .await
    }
}
