//! The pod runtime: pods, their containers, supervision with restart policies, exec.
//!
//! `create_pod` validates the spec and pulls every image before anything is recorded, so a bad
//! image leaves nothing behind. `start_pod` starts one supervisor task per container: it runs
//! the container through a launcher process (see [`crate::launch`]), captures stdout/stderr into
//! the container's log file, records the exit code and restarts according to the policy with an
//! exponential back-off. `stop_pod` asks each supervisor to stop: SIGTERM to the container's
//! first process, SIGKILL when the grace period ends. State lives in memory: a pod VM's runtime
//! lives and dies with the VM.
//!
//! This file holds the spec and status types, the errors and the runtime's state; [`spec`]
//! validates a pod spec and resolves a container's command and user, [`pod`] creates, starts,
//! stops and deletes pods, [`supervise`] runs a container and restarts it by its policy,
//! [`exec`] runs a command inside a running container.

mod exec;
mod pod;
mod spec;
mod supervise;

pub use spec::{effective_argv, resolve_identity};

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mvirt_common::{ErrorKind, HasErrorKind};
use mvirt_log::AuditLogger;
use tokio::sync::{watch, Mutex};

use crate::cgroup::{Cgroup, CgroupError, Hierarchy, Limits};
use crate::image::{Credentials, ImageError, ImageStore, PulledImage};
use crate::launch::{self, Identity};
use crate::logs::LogFile;
use crate::reaper::Reaper;

const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run longer than this resets the back-off.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

impl RestartPolicy {
    fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Always => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: String,
    pub ports: Vec<PortSpec>,
    pub restart_policy: RestartPolicy,
    pub credentials: Credentials,
    pub user: String,
    /// cgroup limits; all `None` = unlimited.
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub id: String,
    pub hostname: String,
    pub containers: Vec<ContainerSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub state: ContainerState,
    pub pid: u32,
    pub exit_code: i32,
    pub restart_count: u32,
    pub restarting: bool,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    pub message: String,
    /// The kernel OOM killer struck during the last run.
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Created,
    Running,
    Succeeded,
    Failed,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStatus {
    pub id: String,
    pub hostname: String,
    pub phase: PodPhase,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    InvalidName(#[from] mvirt_common::validate::InvalidName),
    #[error("invalid pod spec: {0}")]
    InvalidSpec(String),
    #[error("pod {0} not found")]
    PodNotFound(String),
    #[error("container {container} not found in pod {pod}")]
    ContainerNotFound { pod: String, container: String },
    #[error("pod {0} already exists with a different spec")]
    PodConflict(String),
    #[error("container {container} of pod {pod} is not running")]
    NotRunning { pod: String, container: String },
    #[error("container {container}: {source}")]
    Image {
        container: String,
        #[source]
        source: ImageError,
    },
    #[error("container {container}: user {user:?} not found in the image")]
    UnknownUser { container: String, user: String },
    #[error("cannot start launcher")]
    Launcher(#[source] std::io::Error),
    #[error("exec failed: {0}")]
    ExecFailed(String),
    #[error("container {container}: {source}")]
    Cgroup {
        container: String,
        #[source]
        source: CgroupError,
    },
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HasErrorKind for RuntimeError {
    fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::InvalidName(_) | RuntimeError::InvalidSpec(_) => {
                ErrorKind::InvalidArgument
            }
            RuntimeError::PodNotFound(_) | RuntimeError::ContainerNotFound { .. } => {
                ErrorKind::NotFound
            }
            RuntimeError::PodConflict(_) => ErrorKind::AlreadyExists,
            RuntimeError::NotRunning { .. } => ErrorKind::FailedPrecondition,
            RuntimeError::UnknownUser { .. } => ErrorKind::FailedPrecondition,
            RuntimeError::Image { source, .. } => source.kind(),
            RuntimeError::ExecFailed(_) => ErrorKind::FailedPrecondition,
            RuntimeError::Cgroup {
                source: CgroupError::Unsupported(_),
                ..
            } => ErrorKind::FailedPrecondition,
            RuntimeError::Cgroup { .. } => ErrorKind::Internal,
            RuntimeError::Launcher(_) | RuntimeError::Io { .. } => ErrorKind::Internal,
        }
    }
}

impl RuntimeError {
    /// Whether this is an image digest mismatch (gRPC DATA_LOSS).
    pub fn is_digest_mismatch(&self) -> bool {
        matches!(
            self,
            RuntimeError::Image {
                source: ImageError::DigestMismatch { .. },
                ..
            }
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Holds `images/` (the cache) and `pods/`.
    pub data_dir: PathBuf,
    /// The mvirt-one binary, re-executed as launcher.
    pub launcher: PathBuf,
    /// Registries (`host:port`) spoken to over plain HTTP, besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Copied into containers as `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desired {
    Run,
    Stop { deadline: tokio::time::Instant },
}

/// What a container runs, derived once from its spec and image.
#[derive(Debug, Clone)]
struct Process {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    identity: Identity,
}

struct Container {
    spec: ContainerSpec,
    image: PulledImage,
    dir: PathBuf,
    process: Process,
    cgroup: Cgroup,
    log: Arc<LogFile>,
    status: watch::Sender<ContainerStatus>,
    control: watch::Sender<Desired>,
    supervisor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Pod {
    spec: PodSpec,
    dir: PathBuf,
    containers: Vec<Arc<Container>>,
    stopped: std::sync::atomic::AtomicBool,
    /// Serialises start/stop/delete of this pod.
    op: Mutex<()>,
}

impl Pod {
    fn container(&self, name: &str) -> Result<&Arc<Container>, RuntimeError> {
        self.containers
            .iter()
            .find(|c| c.spec.name == name)
            .ok_or_else(|| RuntimeError::ContainerNotFound {
                pod: self.spec.id.clone(),
                container: name.to_string(),
            })
    }

    fn status(&self) -> PodStatus {
        let containers: Vec<ContainerStatus> = self
            .containers
            .iter()
            .map(|c| c.status.borrow().clone())
            .collect();
        let active = containers
            .iter()
            .any(|c| c.state == ContainerState::Running || c.restarting);
        let all_created = containers
            .iter()
            .all(|c| c.state == ContainerState::Created);
        let phase = if active {
            PodPhase::Running
        } else if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            PodPhase::Stopped
        } else if all_created {
            PodPhase::Created
        } else if containers.iter().all(|c| c.exit_code == 0) {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed
        };
        PodStatus {
            id: self.spec.id.clone(),
            hostname: self.spec.hostname.clone(),
            phase,
            containers,
        }
    }
}

/// The pods of this VM (or of this local instance).
pub struct Runtime {
    config: RuntimeConfig,
    images: ImageStore,
    reaper: Reaper,
    audit: AuditLogger,
    cgroups: Hierarchy,
    pods: Mutex<BTreeMap<String, Arc<Pod>>>,
}

/// A request to run a command in a container.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub pod_id: String,
    pub container: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub env: BTreeMap<String, String>,
    pub working_dir: String,
    pub rows: u16,
    pub cols: u16,
}

/// Input to a running exec.
#[derive(Debug, Clone)]
pub enum ExecInput {
    Stdin(Vec<u8>),
    Resize { rows: u16, cols: u16 },
    CloseStdin,
}

/// Output of a running exec; `Exit` is always last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

fn status_pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RuntimeError::Launcher(e.into()))
}

/// Makes `fd` the launcher's fd 3 in the child between fork and exec.
fn pass_status_fd(command: &mut Command, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: prctl/dup2/fcntl are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // The launcher (and with it its container) dies with the daemon. The signal is
            // tied to the spawning thread: spawns happen on tokio worker threads, which live
            // as long as the runtime.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if raw == launch::STATUS_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, launch::STATUS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Reads the launcher's `ok <pid>` / `err <message>` report.
async fn read_report(status_read: OwnedFd) -> Result<u32, String> {
    let text = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut text = String::new();
        let mut file = std::fs::File::from(status_read);
        let _ = file.read_to_string(&mut text);
        text
    })
    .await
    .unwrap_or_default();
    let line = text.trim();
    if let Some(pid) = line.strip_prefix("ok ") {
        pid.parse()
            .map_err(|_| format!("launcher reported {line:?}"))
    } else if let Some(message) = line.strip_prefix("err ") {
        Err(message.to_string())
    } else {
        Err("launcher exited without reporting".to_string())
    }
}

impl Runtime {
    /// Must be called inside a tokio runtime.
    pub fn new(
        config: RuntimeConfig,
        reaper: Reaper,
        audit: AuditLogger,
    ) -> Result<Arc<Self>, RuntimeError> {
        let images = ImageStore::new(
            config.data_dir.join("images"),
            config.insecure_registries.clone(),
        )
        .map_err(|source| RuntimeError::Image {
            container: String::new(),
            source,
        })?;
        let pods_dir = config.data_dir.join("pods");
        // Pods of a previous instance are gone with their processes.
        let _ = std::fs::remove_dir_all(&pods_dir);
        std::fs::create_dir_all(&pods_dir).map_err(io_err(&pods_dir))?;
        let cgroups = Hierarchy::detect();
        tracing::info!(?cgroups, "cgroup hierarchy for container limits");
        Ok(Arc::new(Self {
            config,
            images,
            reaper,
            audit,
            cgroups,
            pods: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    async fn pod(&self, id: &str) -> Result<Arc<Pod>, RuntimeError> {
        self.pods
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::PodNotFound(id.to_string()))
    }

    pub async fn pod_count(&self) -> usize {
        self.pods.lock().await.len()
    }
}

async fn join_threads(threads: Vec<std::thread::JoinHandle<()>>) {
    for thread in threads {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}
