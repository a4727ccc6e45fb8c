//! The VM manager: the daemon's core, independent of gRPC.
//!
//! A request flows: validate (ids, spec, paths inside the allowed directories, TAPs) → take the
//! VM's operation lock → change the world through the hypervisor driver → persist the new state
//! in the [`Store`] → publish a [`VmEvent`] and an AUDIT entry. A watcher task per running VM
//! waits for its hypervisor process to exit and records why (requested stop, guest power-off,
//! crash). [`Vmm::recover`] runs at start: it adopts still-running hypervisor processes (pid,
//! start time and command line must match) and marks the others stopped, so restarting the
//! daemon never kills or duplicates a guest. [`Vmm::shutdown`] detaches from every VM and
//! leaves them running.
//!
//! Lifecycle operations (create, start, stop, kill, restart, delete) run to completion in a
//! task of their own, whatever their caller does: a gRPC caller that gives up (deadline, agent
//! killed) drops its request future, and a start dropped between spawning the hypervisor and
//! tracking it would leave a guest nobody knows about, which a delete could not find. A delete
//! also kills any hypervisor process that still names the VM's run directory, so it always ends
//! with no process and no record.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mvirt_common::{ErrorKind, HasErrorKind};
use mvirt_log::AuditLogger;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::cloudinit::{self, CloudInitError};
use crate::console::ConsoleHub;
use crate::hypervisor::cloud_hypervisor::{CloudHypervisorConfig, CloudHypervisorDriver};
use crate::hypervisor::qemu::{QemuConfig, QemuDriver};
use crate::hypervisor::{Hypervisor, HypervisorChoice, HypervisorError, LaunchRequest, RunDir};
use crate::model::{
    now_ms, DiskSpec, NicSpec, ProcessIdentity, SpecError, VmRecord, VmSpec, VmState,
};
use crate::process;
use crate::store::{Store, StoreError};

/// Daemon settings (flags in `main.rs`).
#[derive(Debug, Clone)]
pub struct VmmConfig {
    pub data_dir: PathBuf,
    /// Kernel, initramfs, firmware and disk paths must lie inside one of these.
    pub allowed_dirs: Vec<PathBuf>,
    pub hypervisor: HypervisorChoice,
    pub qemu: QemuConfig,
    pub cloud_hypervisor: CloudHypervisorConfig,
    /// mvirt-log endpoint for audit entries; empty = tracing only.
    pub log_endpoint: String,
    /// StopVm's timeout when the request gives none.
    pub default_stop_timeout: Duration,
}

impl VmmConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            allowed_dirs: vec![data_dir.clone()],
            data_dir,
            hypervisor: HypervisorChoice::Auto,
            qemu: QemuConfig::default(),
            cloud_hypervisor: CloudHypervisorConfig::default(),
            log_endpoint: String::new(),
            default_stop_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    InvalidId(#[from] mvirt_common::validate::InvalidName),
    #[error("invalid VM config: {0}")]
    InvalidSpec(#[from] SpecError),
    #[error("VM {0} not found")]
    NotFound(String),
    #[error("VM {0} already exists with a different config")]
    AlreadyExists(String),
    #[error("{what} path {path} is outside the allowed directories ({allowed})")]
    PathNotAllowed {
        what: &'static str,
        path: String,
        allowed: String,
    },
    #[error("{what} file {path} does not exist")]
    MissingFile { what: &'static str, path: String },
    #[error("TAP device {0} does not exist")]
    MissingTap(String),
    #[error("VM {0} is running: stop it first, or delete with force")]
    Running(String),
    #[error("VM {id} is {state}: {action} needs a running VM")]
    NotRunning {
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("VM {vm} already has a {kind} with id {device}")]
    DuplicateDevice {
        vm: String,
        kind: &'static str,
        device: String,
    },
    #[error("VM {vm} has no {kind} with id {device}")]
    DeviceNotFound {
        vm: String,
        kind: &'static str,
        device: String,
    },
    #[error("the console of VM {0} is not available (the VM is not running)")]
    ConsoleUnavailable(String),
    #[error("hypervisor operation on VM {id} failed")]
    Hypervisor {
        id: String,
        #[source]
        source: HypervisorError,
    },
    #[error("cannot write the cloud-init seed")]
    CloudInit(#[from] CloudInitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot prepare {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("operation on VM {0} was interrupted (mvirt-vmm is shutting down)")]
    Interrupted(String),
}

impl HasErrorKind for VmmError {
    fn kind(&self) -> ErrorKind {
        match self {
            VmmError::InvalidId(_) | VmmError::InvalidSpec(_) => ErrorKind::InvalidArgument,
            VmmError::NotFound(_) | VmmError::DeviceNotFound { .. } => ErrorKind::NotFound,
            VmmError::AlreadyExists(_) | VmmError::DuplicateDevice { .. } => {
                ErrorKind::AlreadyExists
            }
            VmmError::PathNotAllowed { .. } => ErrorKind::PermissionDenied,
            VmmError::MissingFile { .. }
            | VmmError::MissingTap(_)
            | VmmError::Running(_)
            | VmmError::NotRunning { .. }
            | VmmError::ConsoleUnavailable(_) => ErrorKind::FailedPrecondition,
            VmmError::Interrupted(_) => ErrorKind::Unavailable,
            VmmError::Hypervisor {
                source: HypervisorError::HostLacks(_),
                ..
            } => ErrorKind::FailedPrecondition,
            VmmError::Hypervisor { .. }
            | VmmError::CloudInit(_)
            | VmmError::Store(_)
            | VmmError::Io { .. } => ErrorKind::Internal,
        }
    }
}
mvirt_common::impl_status_from!(VmmError);

/// What happened to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEventKind {
    Created,
    StateChanged,
    Updated,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct VmEvent {
    pub kind: VmEventKind,
    pub vm: VmRecord,
}

/// The result of a resize or hot-plug request.
#[derive(Debug, Clone)]
pub struct DeviceChange {
    pub vm: VmRecord,
    pub applied_live: bool,
    pub message: String,
}

/// Host information plus what VMs have allocated.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub host: crate::sysinfo::HostInfo,
    pub allocated_vcpus: u32,
    pub allocated_memory_bytes: u64,
    pub running_vms: u32,
    pub defined_vms: u32,
    pub hypervisor: String,
    pub kvm_usable: bool,
}

/// A hypervisor call applying a change to a running VM.
type LiveChange<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HypervisorError>> + Send + 'a>>;

/// Why the daemon asked a process to go (`None` = it was not asked).
type StopReason = Arc<Mutex<Option<String>>>;

/// A running VM as the daemon tracks it in memory.
struct VmRuntime {
    identity: ProcessIdentity,
    console: Arc<ConsoleHub>,
    /// Becomes true once the watcher has recorded the process's exit.
    exited: watch::Receiver<bool>,
    /// Why the daemon asked the process to go (None = it was not asked).
    stop_reason: StopReason,
}

struct Inner {
    config: VmmConfig,
    allowed_dirs: Vec<PathBuf>,
    store: Store,
    driver: Arc<dyn Hypervisor>,
    audit: AuditLogger,
    events: broadcast::Sender<VmEvent>,
    runtimes: Mutex<HashMap<String, VmRuntime>>,
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises read-modify-write of records between operations and watchers.
    record_lock: Mutex<()>,
    shutdown: CancellationToken,
}

/// The VM manager. Cheap to clone.
#[derive(Clone)]
pub struct Vmm {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds the driver `choice` names (resolving `auto` and logging why).
pub fn make_driver(config: &VmmConfig) -> Arc<dyn Hypervisor> {
    let choice = match config.hypervisor {
        HypervisorChoice::Auto => {
            let (choice, reason) = crate::hypervisor::resolve_auto(
                &config.cloud_hypervisor.binary.display().to_string(),
            );
            tracing::info!(hypervisor = ?choice, %reason, "--hypervisor auto chose a driver");
            choice
        }
        other => other,
    };
    match choice {
        HypervisorChoice::CloudHypervisor => {
            Arc::new(CloudHypervisorDriver::new(config.cloud_hypervisor.clone()))
        }
        _ => Arc::new(QemuDriver::new(config.qemu.clone())),
    }
}

impl Vmm {
    /// Opens the store and builds the driver. Call [`Vmm::recover`] next.
    pub fn open(config: VmmConfig) -> Result<Self, VmmError> {
        let driver = make_driver(&config);
        Self::with_driver(config, driver)
    }

    pub fn with_driver(config: VmmConfig, driver: Arc<dyn Hypervisor>) -> Result<Self, VmmError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| VmmError::Io { path, source }
        };
        std::fs::create_dir_all(config.data_dir.join("run")).map_err(io(&config.data_dir))?;
        let store = Store::open(&config.data_dir.join("vmm.db"))?;
        let allowed_dirs = config
            .allowed_dirs
            .iter()
            .filter_map(|d| match std::fs::canonicalize(d) {
                Ok(p) => Some(p),
                Err(err) => {
                    tracing::warn!(dir = %d.display(), error = %err, "allowed directory does not exist");
                    None
                }
            })
            .collect();
        let audit = mvirt_log::create_audit_logger(&config.log_endpoint, "mvirt-vmm");
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                allowed_dirs,
                store,
                driver,
                audit,
                events,
                runtimes: Mutex::new(HashMap::new()),
                op_locks: Mutex::new(HashMap::new()),
                record_lock: Mutex::new(()),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// Fires when the daemon shuts down (streams end on it).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    pub fn hypervisor_name(&self) -> &'static str {
        self.inner.driver.name()
    }

    fn run_dir(&self, id: &str) -> RunDir {
        RunDir::new(self.inner.config.data_dir.join("run").join(id))
    }

    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.op_locks)
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Forgets the operation lock of a VM that no longer exists, unless another operation
    /// holds or waits for it: that one must stay serialised with whatever comes next for the
    /// same id (a re-create), so the entry stays until its last user is gone. (Removing it
    /// while shared would let two operations on one id run at once, each with its own lock.)
    fn release_op_lock(&self, id: &str, held: &Arc<tokio::sync::Mutex<()>>) {
        let mut locks = lock(&self.inner.op_locks);
        // The map's reference and the caller's: nobody else can reach this lock any more.
        if locks.get(id).is_some_and(|l| Arc::ptr_eq(l, held)) && Arc::strong_count(held) == 2 {
            locks.remove(id);
        }
    }

    /// Runs `operation` under the VM's operation lock, on a task of its own: it completes even
    /// if the caller's future is dropped (see the module comment).
    async fn serialised<T, F, Fut>(&self, id: &str, operation: F) -> Result<T, VmmError>
    where
        T: Send + 'static,
        F: FnOnce(Vmm, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, VmmError>> + Send + 'static,
    {
        let (vmm, owned) = (self.clone(), id.to_string());
        let task = tokio::spawn(async move {
            let op = vmm.op_lock(&owned);
            let guard = op.lock().await;
            let result = operation(vmm.clone(), owned.clone()).await;
            drop(guard);
            if matches!(vmm.inner.store.get(&owned), Ok(None)) {
                vmm.release_op_lock(&owned, &op);
            }
            result
        });
        match task.await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Err(VmmError::Interrupted(id.to_string())),
        }
    }

    fn publish(&self, kind: VmEventKind, vm: &VmRecord) {
        let _ = self.inner.events.send(VmEvent {
            kind,
            vm: vm.clone(),
        });
    }

    /// Subscribes to VM events.
    pub fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.inner.events.subscribe()
    }

    fn load(&self, id: &str) -> Result<VmRecord, VmmError> {
        mvirt_common::validate::resource_id("VM id", id)?;
        self.inner
            .store
            .get(id)?
            .ok_or_else(|| VmmError::NotFound(id.to_string()))
    }

    /// Applies `change` to the stored record under the record lock, persists and publishes it.
    fn update(
        &self,
        id: &str,
        kind: VmEventKind,
        change: impl FnOnce(&mut VmRecord),
    ) -> Result<VmRecord, VmmError> {
        let vm = {
            let _guard = lock(&self.inner.record_lock);
            let mut vm = self
                .inner
                .store
                .get(id)?
                .ok_or_else(|| VmmError::NotFound(id.to_string()))?;
            change(&mut vm);
            vm.updated_at_ms = now_ms();
            self.inner.store.update(&vm)?;
            vm
        };
        self.publish(kind, &vm);
        Ok(vm)
    }

    fn set_state(
        &self,
        id: &str,
        state: VmState,
        reason: impl Into<String>,
    ) -> Result<VmRecord, VmmError> {
        let reason = reason.into();
        self.update(id, VmEventKind::StateChanged, |vm| {
            vm.state = state;
            vm.state_reason = reason;
        })
    }

    // ----- validation -----

    fn check_path(&self, what: &'static str, path: &str) -> Result<(), VmmError> {
        let canonical = std::fs::canonicalize(path).map_err(|_| VmmError::MissingFile {
            what,
            path: path.to_string(),
        })?;
        if !self
            .inner
            .allowed_dirs
            .iter()
            .any(|dir| canonical.starts_with(dir))
        {
            return Err(VmmError::PathNotAllowed {
                what,
                path: path.to_string(),
                allowed: self
                    .inner
                    .allowed_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !canonical.is_file() {
            return Err(VmmError::MissingFile {
                what,
                path: path.to_string(),
            });
        }
        Ok(())
    }

    fn check_tap(&self, tap: &str) -> Result<(), VmmError> {
        if Path::new("/sys/class/net").join(tap).exists() {
            Ok(())
        } else {
            Err(VmmError::MissingTap(tap.to_string()))
        }
    }

    /// Everything about a spec that can be checked before touching a hypervisor.
    fn validate_spec(&self, spec: &VmSpec) -> Result<(), VmmError> {
        spec.validate_shape()?;
        for (what, path) in spec.host_paths() {
            self.check_path(what, path)?;
        }
        for nic in &spec.nics {
            self.check_tap(&nic.tap)?;
        }
        Ok(())
    }

    // ----- CRUD -----

    /// Creates a VM (stopped). Idempotent: the same id and spec returns the existing VM.
    pub async fn create(&self, id: &str, spec: VmSpec) -> Result<VmRecord, VmmError> {
        mvirt_common::validate::resource_id("VM id", id)?;
        spec.validate_shape()?;
        self.serialised(
            id,
            |vmm, id| async move { vmm.create_locked(&id, spec).await },
        )
        .await
    }

    async fn create_locked(&self, id: &str, spec: VmSpec) -> Result<VmRecord, VmmError> {
        if let Some(existing) = self.inner.store.get(id)? {
            return if existing.spec == spec {
                Ok(existing)
            } else {
                Err(VmmError::AlreadyExists(id.to_string()))
            };
        }
        self.validate_spec(&spec)?;
        let now = now_ms();
        let vm = VmRecord {
            id: id.to_string(),
            spec,
            state: VmState::Stopped,
            state_reason: "created".into(),
            hypervisor: self.inner.driver.name().to_string(),
            process: None,
            created_at_ms: now,
            updated_at_ms: now,
            started_at_ms: 0,
            pending_changes: vec![],
        };
        self.inner.store.insert(&vm)?;
        self.inner.audit.audit(
            format!(
                "created VM {} ({} vCPU, {} MiB)",
                vm.spec.name, vm.spec.vcpus, vm.spec.memory_mib
            ),
            &[id],
        );
        self.publish(VmEventKind::Created, &vm);
        Ok(vm)
    }

    pub fn get(&self, id: &str) -> Result<VmRecord, VmmError> {
        self.load(id)
    }

    /// Every VM carrying all labels of `selector`.
    pub fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<VmRecord>, VmmError> {
        Ok(self
            .inner
            .store
            .list()?
            .into_iter()
            .filter(|vm| {
                selector
                    .iter()
                    .all(|(k, v)| vm.spec.labels.get(k) == Some(v))
            })
            .collect())
    }

    /// Deletes a stopped VM; a running one only with `force` (killed first). Ends with no
    /// hypervisor process of the VM and no record.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), VmmError> {
        self.serialised(id, move |vmm, id| async move {
            vmm.delete_locked(&id, force).await
        })
        .await
    }

    async fn delete_locked(&self, id: &str, force: bool) -> Result<(), VmmError> {
        let vm = self.load(id)?;
        if vm.state.is_active() {
            if !force {
                return Err(VmmError::Running(id.to_string()));
            }
            self.kill_locked(id, "killed: VM deleted with force")
                .await?;
        }
        let vm = self.load(id).unwrap_or(vm);
        let run = self.run_dir(id);
        // Whatever the record says, no process of this VM survives its deletion.
        self.kill_untracked(id, &run).await;
        if let Err(err) = std::fs::remove_dir_all(run.path()) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm = id, error = %err, "cannot remove run directory");
            }
        }
        self.inner.store.delete(id)?;
        self.inner
            .audit
            .audit(format!("deleted VM {}", vm.spec.name), &[id]);
        self.publish(VmEventKind::Deleted, &vm);
        Ok(())
    }

    // ----- lifecycle -----

    /// Starts a stopped (or failed) VM; returns it running. Starting a running VM is a no-op.
    pub async fn start(&self, id: &str) -> Result<VmRecord, VmmError> {
        self.serialised(
            id,
            move |vmm, id| async move { vmm.start_locked(&id).await },
        )
        .await
    }

    /// SIGKILLs every hypervisor process naming the VM's run directory that the daemon does
    /// not track (none, unless something went wrong) and waits until they are gone.
    async fn kill_untracked(&self, id: &str, run: &RunDir) {
        let tracked = lock(&self.inner.runtimes).get(id).map(|r| r.identity);
        for pid in process::all_pids() {
            let Some(identity) = process::identity(pid) else {
                continue;
            };
            if Some(identity) == tracked
                || !self.inner.driver.owns_process(run, &process::cmdline(pid))
            {
                continue;
            }
            tracing::warn!(
                vm = id,
                pid,
                "killing an untracked hypervisor process of the VM"
            );
            self.inner.audit.warn(
                format!("killed untracked hypervisor process {pid} of VM {id}"),
                &[id],
            );
            process::signal(identity, nix::sys::signal::Signal::SIGKILL);
            process::wait_exit(identity).await;
        }
    }

    async fn start_locked(&self, id: &str) -> Result<VmRecord, VmmError> {
        let vm = self.load(id)?;
        if vm.state.is_active() {
            return Ok(vm);
        }
        // Files may have vanished since create.
        self.validate_spec(&vm.spec)?;
        self.set_state(id, VmState::Starting, "start requested")?;
        match self.launch(&vm).await {
            Ok(vm) => Ok(vm),
            Err(err) => {
                let reason = format!("start failed: {}", mvirt_common::error::error_chain(&err));
                self.inner.audit.error(reason.clone(), &[id]);
                let _ = self.set_state(id, VmState::Failed, reason);
                Err(err)
            }
        }
    }

    async fn launch(&self, vm: &VmRecord) -> Result<VmRecord, VmmError> {
        let id = vm.id.as_str();
        let run = self.run_dir(id);
        std::fs::create_dir_all(run.path()).map_err(|source| VmmError::Io {
            path: run.path().display().to_string(),
            source,
        })?;
        // A new boot starts a new console log.
        let _ = std::fs::remove_file(run.console_log());
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
        let launched =
            self.inner
                .driver
                .launch(&request)
                .await
                .map_err(|source| VmmError::Hypervisor {
                    id: id.to_string(),
                    source,
                })?;
        let identity = launched.identity;
        self.track(id, identity, launched.child, Vec::new());
        let recorded = self.update(id, VmEventKind::StateChanged, |vm| {
            vm.state = VmState::Running;
            vm.state_reason = "started".into();
            vm.process = Some(identity);
            vm.started_at_ms = now_ms();
            vm.pending_changes.clear();
        });
        let vm = match recorded {
            Ok(vm) => vm,
            Err(err) => {
                // A process the store does not name would outlive the VM: stop it.
                if let Some((_, mut exited, stop_reason)) = self.runtime_handles(id) {
                    *lock(&stop_reason) = Some("start could not be recorded".into());
                    process::signal(identity, nix::sys::signal::Signal::SIGKILL);
                    let _ = exited.wait_for(|d| *d).await;
                }
                return Err(err);
            }
        };
        self.inner.audit.audit(
            format!("started VM {} (pid {})", vm.spec.name, identity.pid),
            &[id],
        );
        Ok(vm)
    }

    /// Attaches the console and starts the exit watcher for a running process.
    fn track(
        &self,
        id: &str,
        identity: ProcessIdentity,
        child: Option<tokio::process::Child>,
        console_seed: Vec<u8>,
    ) {
        let run = self.run_dir(id);
        // QEMU logs the serial port itself; for cloud-hypervisor the hub keeps the log.
        let log = (self.inner.driver.name() != "qemu").then(|| run.console_log());
        let console = ConsoleHub::attach(run.console_socket(), console_seed, log);
        let (exited_tx, exited_rx) = watch::channel(false);
        let stop_reason = Arc::new(Mutex::new(None));
        lock(&self.inner.runtimes).insert(
            id.to_string(),
            VmRuntime {
                identity,
                console: console.clone(),
                exited: exited_rx,
                stop_reason: stop_reason.clone(),
            },
        );
        let vmm = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let status = tokio::select! {
                _ = vmm.inner.shutdown.cancelled() => return,
                status = wait_for(identity, child) => status,
            };
            let requested = lock(&stop_reason).clone();
            let (state, reason) = exit_outcome(requested, status);
            // The console hub ends by itself: the dead process's socket reads EOF once the
            // last output has been delivered to viewers.
            let recorded = vmm.update(&id, VmEventKind::StateChanged, |vm| {
                if vm.process == Some(identity) {
                    vm.state = state;
                    vm.state_reason = reason.clone();
                    vm.process = None;
                }
            });
            {
                let mut runtimes = lock(&vmm.inner.runtimes);
                if runtimes.get(&id).is_some_and(|r| r.identity == identity) {
                    runtimes.remove(&id);
                }
            }
            match recorded {
                Ok(vm) => {
                    let message = format!("VM {} stopped: {reason}", vm.spec.name);
                    if state == VmState::Failed {
                        vmm.inner.audit.error(message, &[&id]);
                    } else {
                        vmm.inner.audit.audit(message, &[&id]);
                    }
                }
                Err(VmmError::NotFound(_)) => {}
                Err(err) => tracing::error!(vm = %id, error = %err, "cannot record VM exit"),
            }
            let _ = exited_tx.send(true);
        });
    }

    fn runtime_handles(
        &self,
        id: &str,
    ) -> Option<(ProcessIdentity, watch::Receiver<bool>, StopReason)> {
        lock(&self.inner.runtimes)
            .get(id)
            .map(|r| (r.identity, r.exited.clone(), r.stop_reason.clone()))
    }

    /// Graceful stop: power button, then a hard stop after `timeout`.
    pub async fn stop(&self, id: &str, timeout: Option<Duration>) -> Result<VmRecord, VmmError> {
        self.serialised(id, move |vmm, id| async move {
            vmm.stop_locked(&id, timeout).await
        })
        .await
    }

    async fn stop_locked(&self, id: &str, timeout: Option<Duration>) -> Result<VmRecord, VmmError> {
        let vm = self.load(id)?;
        let Some((identity, mut exited, stop_reason)) = self.runtime_handles(id) else {
            return Ok(vm);
        };
        let timeout = timeout.unwrap_or(self.inner.config.default_stop_timeout);
        *lock(&stop_reason) = Some("stopped by request (ACPI power button)".into());
        self.set_state(id, VmState::Stopping, "power button pressed")?;
        self.inner.audit.audit(
            format!(
                "stopping VM {} (power button, {}s timeout)",
                vm.spec.name,
                timeout.as_secs()
            ),
            &[id],
        );
        let run = self.run_dir(id);
        if let Err(err) = self.inner.driver.power_button(&run).await {
            tracing::warn!(vm = id, error = %err, "power button failed; stopping hard");
        }
        if tokio::time::timeout(timeout, exited.wait_for(|done| *done))
            .await
            .is_err()
        {
            *lock(&stop_reason) = Some(format!(
                "stopped by request: the guest ignored the power button for {}s, hard stop",
                timeout.as_secs()
            ));
            self.inner.audit.warn(
                format!("VM {} ignored the power button: hard stop", vm.spec.name),
                &[id],
            );
            self.hard_stop(id, identity, &run, &mut exited).await;
        }
        self.load(id)
    }

    /// The hypervisor's own stop, then SIGKILL if the process lingers.
    async fn hard_stop(
        &self,
        id: &str,
        identity: ProcessIdentity,
        run: &RunDir,
        exited: &mut watch::Receiver<bool>,
    ) {
        if let Err(err) = self.inner.driver.hard_stop(run).await {
            tracing::warn!(vm = id, error = %err, "hypervisor hard stop failed; sending SIGKILL");
        }
        if tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|d| *d))
            .await
            .is_err()
        {
            process::signal(identity, nix::sys::signal::Signal::SIGKILL);
            let _ = exited.wait_for(|d| *d).await;
        }
    }

    /// Immediate stop: SIGKILL to the hypervisor process.
    pub async fn kill(&self, id: &str) -> Result<VmRecord, VmmError> {
        self.serialised(id, move |vmm, id| async move {
            vmm.kill_locked(&id, "killed by request").await
        })
        .await
    }

    async fn kill_locked(&self, id: &str, reason: &str) -> Result<VmRecord, VmmError> {
        let vm = self.load(id)?;
        let Some((identity, mut exited, stop_reason)) = self.runtime_handles(id) else {
            return Ok(vm);
        };
        *lock(&stop_reason) = Some(reason.to_string());
        self.inner
            .audit
            .audit(format!("killing VM {}", vm.spec.name), &[id]);
        process::signal(identity, nix::sys::signal::Signal::SIGKILL);
        let _ = exited.wait_for(|d| *d).await;
        self.load(id)
    }

    /// Graceful stop (with the hard-stop fallback), then start.
    pub async fn restart(&self, id: &str, timeout: Option<Duration>) -> Result<VmRecord, VmmError> {
        self.serialised(id, move |vmm, id| async move {
            vmm.stop_locked(&id, timeout).await?;
            vmm.start_locked(&id).await
        })
        .await
    }

    // ----- resize and hot-plug -----

    /// Applies a change live when the VM runs and the driver can; otherwise records it for the
    /// next boot.
    async fn device_change(
        &self,
        id: &str,
        description: String,
        apply_spec: impl FnOnce(&mut VmSpec),
        live: Option<LiveChange<'_>>,
    ) -> Result<DeviceChange, VmmError> {
        let (applied_live, message) = match live {
            None => (false, "VM is not running: applies at next boot".to_string()),
            Some(fut) => match fut.await {
                Ok(()) => (true, "applied to the running VM".to_string()),
                Err(HypervisorError::Unsupported { driver, what }) => (
                    false,
                    format!("{driver} cannot apply {what} live: recorded for the next boot"),
                ),
                Err(source) => {
                    return Err(VmmError::Hypervisor {
                        id: id.to_string(),
                        source,
                    })
                }
            },
        };
        let vm = self.update(id, VmEventKind::Updated, |vm| {
            apply_spec(&mut vm.spec);
            if !applied_live && vm.state.is_active() {
                vm.pending_changes.push(description.clone());
            }
        })?;
        self.inner.audit.audit(
            format!("VM {}: {description} ({message})", vm.spec.name),
            &[id],
        );
        Ok(DeviceChange {
            vm,
            applied_live,
            message,
        })
    }

    fn is_running(&self, id: &str) -> bool {
        lock(&self.inner.runtimes).contains_key(id)
    }

    pub async fn resize(
        &self,
        id: &str,
        vcpus: Option<u32>,
        memory_mib: Option<u64>,
    ) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        let mut new_spec = vm.spec.clone();
        if let Some(v) = vcpus {
            new_spec.vcpus = v;
        }
        if let Some(m) = memory_mib {
            new_spec.memory_mib = m;
        }
        new_spec.validate_shape()?;
        let description = format!(
            "resize to {} vCPU, {} MiB",
            new_spec.vcpus, new_spec.memory_mib
        );
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.resize(&run, vcpus, memory_mib)) as LiveChange<'_>);
        self.device_change(id, description, |spec| *spec = new_spec, live)
            .await
    }

    pub async fn attach_disk(&self, id: &str, disk: DiskSpec) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        if vm.spec.disks.iter().any(|d| d.id == disk.id) {
            return Err(VmmError::DuplicateDevice {
                vm: id.into(),
                kind: "disk",
                device: disk.id,
            });
        }
        let mut spec = vm.spec.clone();
        spec.disks.push(disk.clone());
        spec.validate_shape()?;
        self.check_path("disk", &disk.path)?;
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.add_disk(&run, &disk)) as LiveChange<'_>);
        let description = format!("attach disk {} ({})", disk.id, disk.path);
        self.device_change(id, description, |s| s.disks.push(disk.clone()), live)
            .await
    }

    pub async fn detach_disk(&self, id: &str, disk_id: &str) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        if !vm.spec.disks.iter().any(|d| d.id == disk_id) {
            return Err(VmmError::DeviceNotFound {
                vm: id.into(),
                kind: "disk",
                device: disk_id.into(),
            });
        }
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.remove_disk(&run, disk_id)) as LiveChange<'_>);
        self.device_change(
            id,
            format!("detach disk {disk_id}"),
            |s| s.disks.retain(|d| d.id != disk_id),
            live,
        )
        .await
    }

    pub async fn attach_nic(&self, id: &str, nic: NicSpec) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        if vm.spec.nics.iter().any(|n| n.id == nic.id) {
            return Err(VmmError::DuplicateDevice {
                vm: id.into(),
                kind: "NIC",
                device: nic.id,
            });
        }
        let mut spec = vm.spec.clone();
        spec.nics.push(nic.clone());
        spec.validate_shape()?;
        self.check_tap(&nic.tap)?;
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.add_nic(&run, &nic)) as LiveChange<'_>);
        let description = format!("attach NIC {} (TAP {}, MAC {})", nic.id, nic.tap, nic.mac);
        self.device_change(id, description, |s| s.nics.push(nic.clone()), live)
            .await
    }

    pub async fn detach_nic(&self, id: &str, nic_id: &str) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        if !vm.spec.nics.iter().any(|n| n.id == nic_id) {
            return Err(VmmError::DeviceNotFound {
                vm: id.into(),
                kind: "NIC",
                device: nic_id.into(),
            });
        }
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.remove_nic(&run, nic_id)) as LiveChange<'_>);
        self.device_change(
            id,
            format!("detach NIC {nic_id}"),
            |s| s.nics.retain(|n| n.id != nic_id),
            live,
        )
        .await
    }

    // ----- console -----

    /// The console hub of a running VM. A hub that lost its connection while the VM still
    /// runs (the hypervisor closed the socket) is replaced by a fresh one, seeded from the
    /// console log.
    pub fn console(&self, id: &str) -> Result<Arc<ConsoleHub>, VmmError> {
        self.load(id)?;
        let mut runtimes = lock(&self.inner.runtimes);
        let runtime = runtimes
            .get_mut(id)
            .ok_or_else(|| VmmError::ConsoleUnavailable(id.to_string()))?;
        if runtime.console.is_closed() && process::is_alive(runtime.identity) {
            let run = self.run_dir(id);
            let seed = read_tail(&run.console_log(), crate::console::SCROLLBACK_BYTES);
            let log = (self.inner.driver.name() != "qemu").then(|| run.console_log());
            tracing::info!(vm = id, "reattaching the serial console");
            runtime.console = ConsoleHub::attach(run.console_socket(), seed, log);
        }
        Ok(runtime.console.clone())
    }

    /// Sends console input to a running VM.
    pub async fn console_input(&self, id: &str, data: Bytes) -> Result<(), VmmError> {
        self.console(id)?
            .send_input(data)
            .await
            .map_err(|_| VmmError::ConsoleUnavailable(id.to_string()))
    }

    // ----- system -----

    pub fn system_info(&self) -> Result<SystemInfo, VmmError> {
        let vms = self.inner.store.list()?;
        let active: Vec<&VmRecord> = vms.iter().filter(|v| v.state.is_active()).collect();
        Ok(SystemInfo {
            host: crate::sysinfo::collect(),
            allocated_vcpus: active.iter().map(|v| v.spec.vcpus).sum(),
            allocated_memory_bytes: active.iter().map(|v| v.spec.memory_mib * 1024 * 1024).sum(),
            running_vms: active.len() as u32,
            defined_vms: vms.len() as u32,
            hypervisor: self.inner.driver.name().to_string(),
            kvm_usable: crate::hypervisor::kvm_usable(),
        })
    }

    // ----- recovery and shutdown -----

    /// Adopts hypervisor processes that survived a daemon restart and marks VMs whose process
    /// is gone. Never starts or kills a guest.
    pub async fn recover(&self) -> Result<(), VmmError> {
        for vm in self.inner.store.list()? {
            if !vm.state.is_active() {
                continue;
            }
            let id = vm.id.clone();
            let run = self.run_dir(&id);
            let recorded = vm.process.filter(|identity| {
                process::is_alive(*identity)
                    && self
                        .inner
                        .driver
                        .owns_process(&run, &process::cmdline(identity.pid))
            });
            // A crash between spawning the hypervisor and recording its pid leaves a process
            // the database does not name: find it by its run directory rather than start a
            // duplicate later.
            let adopted = recorded.or_else(|| {
                process::all_pids().into_iter().find_map(|pid| {
                    let identity = process::identity(pid)?;
                    self.inner
                        .driver
                        .owns_process(&run, &process::cmdline(pid))
                        .then_some(identity)
                })
            });
            match adopted {
                Some(identity) => {
                    let seed = read_tail(&run.console_log(), crate::console::SCROLLBACK_BYTES);
                    self.track(&id, identity, None, seed);
                    let previous = vm.state;
                    self.update(&id, VmEventKind::StateChanged, |vm| {
                        vm.state = VmState::Running;
                        vm.state_reason = "adopted after mvirt-vmm restart".into();
                        vm.process = Some(identity);
                    })?;
                    tracing::info!(vm = %id, pid = identity.pid, ?previous, "adopted running VM");
                    self.inner.audit.info(
                        format!("adopted running VM {} (pid {})", vm.spec.name, identity.pid),
                        &[&id],
                    );
                }
                None => {
                    let reason = match vm.process {
                        Some(identity) if process::is_alive(identity) => format!(
                            "pid {} belongs to another program now: not adopted",
                            identity.pid
                        ),
                        _ => "hypervisor process exited while mvirt-vmm was down".to_string(),
                    };
                    let state = if vm.state == VmState::Stopping {
                        VmState::Stopped
                    } else {
                        VmState::Failed
                    };
                    self.update(&id, VmEventKind::StateChanged, |vm| {
                        vm.state = state;
                        vm.state_reason = reason.clone();
                        vm.process = None;
                    })?;
                    for socket in [run.control_socket(), run.console_socket()] {
                        let _ = std::fs::remove_file(socket);
                    }
                    self.inner
                        .audit
                        .warn(format!("VM {}: {reason}", vm.spec.name), &[&id]);
                }
            }
        }
        Ok(())
    }

    /// Detaches from every VM (consoles, watchers) and leaves the guests running.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        for runtime in lock(&self.inner.runtimes).drain() {
            runtime.1.console.detach();
        }
        self.inner.audit.flush().await;
    }
}

/// Waits for the process to exit; the exit status when it is our child.
async fn wait_for(
    identity: ProcessIdentity,
    child: Option<tokio::process::Child>,
) -> Option<std::process::ExitStatus> {
    match child {
        Some(mut child) => child.wait().await.ok(),
        None => {
            process::wait_exit(identity).await;
            None
        }
    }
}

/// The state and reason recorded when a hypervisor process exits.
fn exit_outcome(
    requested: Option<String>,
    status: Option<std::process::ExitStatus>,
) -> (VmState, String) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(reason) = requested {
        return (VmState::Stopped, reason);
    }
    match status {
        Some(s) if s.success() => (
            VmState::Stopped,
            "guest powered off (hypervisor exited cleanly)".into(),
        ),
        Some(s) => match s.signal() {
            Some(sig) => (
                VmState::Failed,
                format!("hypervisor process killed by signal {sig}"),
            ),
            None => (
                VmState::Failed,
                format!(
                    "hypervisor process failed with exit code {}",
                    s.code().unwrap_or(-1)
                ),
            ),
        },
        None => (
            VmState::Stopped,
            "hypervisor process exited (adopted process: exit status unknown)".into(),
        ),
    }
}

fn read_tail(path: &Path, max: usize) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    bytes[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_classified_by_request_and_status() {
        use std::os::unix::process::ExitStatusExt;
        let ok = std::process::ExitStatus::from_raw(0);
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(exit_outcome(None, Some(ok)).0, VmState::Stopped);
        assert_eq!(exit_outcome(None, Some(killed)).0, VmState::Failed);
        assert!(exit_outcome(None, Some(killed)).1.contains("signal 9"));
        let (state, reason) = exit_outcome(Some("killed by request".into()), Some(killed));
        assert_eq!(
            (state, reason.as_str()),
            (VmState::Stopped, "killed by request")
        );
    }
}
