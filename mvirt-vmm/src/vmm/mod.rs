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
//!
//! This file holds the manager, its errors and what every operation shares (locks, records,
//! events, validation); [`records`] creates, reads and deletes VMs, [`lifecycle`] starts, stops,
//! kills and watches their processes, [`devices`] resizes and hot-plugs, [`recovery`] adopts
//! running VMs at start and detaches from them at shutdown.

mod devices;
mod lifecycle;
pub mod migration;
mod records;
mod recovery;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mvirt_common::{ErrorKind, HasErrorKind};
use mvirt_log::AuditLogger;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::cloudinit::CloudInitError;
use crate::console::ConsoleHub;
use crate::hypervisor::cloud_hypervisor::{CloudHypervisorConfig, CloudHypervisorDriver};
use crate::hypervisor::qemu::{QemuConfig, QemuDriver};
use crate::hypervisor::{Hypervisor, HypervisorChoice, HypervisorError, RunDir};
use crate::model::{now_ms, ProcessIdentity, SpecError, VmRecord, VmSpec, VmState};
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
    /// Pod microVMs (artefacts, readiness, kernel arguments).
    pub pod: crate::pod::PodConfig,
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
            pod: crate::pod::PodConfig::default(),
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
    op_locks: Arc<crate::oplock::OpLocks>,
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
                op_locks: Arc::default(),
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

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn default_stop_timeout(&self) -> Duration {
        self.inner.config.default_stop_timeout
    }

    pub(crate) fn audit(&self) -> &AuditLogger {
        &self.inner.audit
    }

    /// Whether a VM (or a pod's microVM) with this id is recorded.
    pub(crate) fn exists(&self, id: &str) -> Result<bool, VmmError> {
        Ok(self.inner.store.get(id)?.is_some())
    }

    pub(crate) fn run_dir(&self, id: &str) -> RunDir {
        RunDir::new(self.inner.config.data_dir.join("run").join(id))
    }

    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.op_locks.get(id)
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
        let gone = move || matches!(vmm.inner.store.get(&owned), Ok(None));
        self.inner
            .op_locks
            .serialised(id, operation(self.clone(), id.to_string()), gone)
            .await
            .unwrap_or_else(|| Err(VmmError::Interrupted(id.to_string())))
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

    fn check_path(&self, what: &'static str, path: &str) -> Result<(), VmmError> {
        let canonical = std::fs::canonicalize(path).map_err(|_| VmmError::MissingFile {
            what,
            path: path.to_string(),
        })?;
        // Pod microVMs boot the pod artefacts, which may be installed after the daemon started.
        let artefacts = std::fs::canonicalize(&self.inner.config.pod.artefacts_dir).ok();
        if !self
            .inner
            .allowed_dirs
            .iter()
            .chain(artefacts.as_ref())
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

    pub fn system_info(&self) -> Result<SystemInfo, VmmError> {
        let vms = self.inner.store.list()?;
        let active: Vec<&VmRecord> = vms.iter().filter(|v| v.state.is_active()).collect();
        Ok(SystemInfo {
            host: crate::sysinfo::collect(),
            allocated_vcpus: active.iter().map(|v| v.spec.vcpus).sum(),
            allocated_memory_bytes: active.iter().map(|v| v.spec.memory_mib * 1024 * 1024).sum(),
            // Pod microVMs count in the allocation, not as VMs (PodService counts them).
            running_vms: active.iter().filter(|v| !v.spec.is_pod_vm()).count() as u32,
            defined_vms: vms.iter().filter(|v| !v.spec.is_pod_vm()).count() as u32,
            hypervisor: self.inner.driver.name().to_string(),
            kvm_usable: crate::hypervisor::kvm_usable(),
        })
    }
}

fn read_tail(path: &Path, max: usize) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    bytes[start..].to_vec()
}
