//! The pod runtime: pods, their containers, supervision with restart policies, exec.
//!
//! `create_pod` validates the spec and pulls every image before anything is recorded, so a bad
//! image leaves nothing behind. `start_pod` starts one supervisor task per container: it runs
//! the container through a launcher process (see [`crate::launch`]), captures stdout/stderr into
//! the container's log file, records the exit code and restarts according to the policy with an
//! exponential back-off. `stop_pod` asks each supervisor to stop: SIGTERM to the container's
//! first process, SIGKILL when the grace period ends. State lives in memory: a pod VM's runtime
//! lives and dies with the VM.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvirt_common::{ErrorKind, HasErrorKind};
use mvirt_log::AuditLogger;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use crate::cgroup::{Cgroup, CgroupError, Hierarchy, Limits};
use crate::image::{Credentials, ImageError, ImageStore, PulledImage};
use crate::launch::{self, ContainerLaunch, ExecLaunch, Identity};
use crate::logs::{LogFile, Stream};
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

fn validate_spec(spec: &PodSpec) -> Result<(), RuntimeError> {
    mvirt_common::validate::resource_id("pod id", &spec.id)?;
    if spec.containers.is_empty() {
        return Err(RuntimeError::InvalidSpec(
            "a pod needs at least one container".into(),
        ));
    }
    if !spec.hostname.is_empty() {
        mvirt_common::validate::dns_label("hostname", &spec.hostname)?;
    }
    let mut names = HashSet::new();
    for c in &spec.containers {
        mvirt_common::validate::dns_label("container name", &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "container name {:?} is used twice",
                c.name
            )));
        }
        if c.image.trim().is_empty() {
            return Err(RuntimeError::InvalidSpec(format!(
                "container {:?} has no image",
                c.name
            )));
        }
        let all_args = c.command.iter().chain(&c.args).chain(c.env.values());
        if all_args.clone().any(|a| !launch::valid_arg(a)) {
            return Err(RuntimeError::InvalidSpec(format!(
                "container {:?}: command, args and env must not contain NUL bytes",
                c.name
            )));
        }
        for key in c.env.keys() {
            if key.is_empty() || key.contains('=') || !launch::valid_arg(key) {
                return Err(RuntimeError::InvalidSpec(format!(
                    "container {:?}: invalid environment variable name {key:?}",
                    c.name
                )));
            }
        }
        if !c.working_dir.is_empty() && !c.working_dir.starts_with('/') {
            return Err(RuntimeError::InvalidSpec(format!(
                "container {:?}: working dir must be absolute",
                c.name
            )));
        }
        c.limits
            .validate()
            .map_err(|e| RuntimeError::InvalidSpec(format!("container {:?}: {e}", c.name)))?;
    }
    Ok(())
}

/// Kubernetes semantics: `command` replaces the entrypoint (and drops the image's cmd),
/// `args` replaces the cmd.
pub fn effective_argv(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Vec<String> {
    if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else if !args.is_empty() {
        entrypoint.iter().chain(args).cloned().collect()
    } else {
        entrypoint.iter().chain(cmd).cloned().collect()
    }
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) against the image's passwd/group.
pub fn resolve_identity(rootfs: &Path, user: &str) -> Option<(Identity, String)> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let by_name = entries.iter().find(|f| f[0] == user_part);
    let (uid, default_gid, home) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let entry = entries.iter().find(|f| f[2] == user_part);
            (
                uid,
                entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
                entry.map(|f| f[5].to_string()),
            )
        }
        Err(_) => {
            let f = by_name?;
            (
                f[2].parse().ok()?,
                f[3].parse().ok()?,
                Some(f[5].to_string()),
            )
        }
    };
    let gid = match group_part {
        None | Some("") => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())?,
        },
    };
    Some((
        Identity {
            uid,
            gid,
            groups: vec![gid],
        },
        home.unwrap_or_else(|| "/".to_string()),
    ))
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

    /// Pulls the images and records the pod; idempotent for the same id and spec.
    pub async fn create_pod(&self, mut spec: PodSpec) -> Result<PodStatus, RuntimeError> {
        validate_spec(&spec)?;
        if spec.hostname.is_empty() {
            spec.hostname = spec.id.chars().take(8).collect();
        }
        if let Some(existing) = self.pods.lock().await.get(&spec.id) {
            return if existing.spec == spec {
                Ok(existing.status())
            } else {
                Err(RuntimeError::PodConflict(spec.id.clone()))
            };
        }
        // Limits this system cannot enforce are refused before anything is pulled.
        for c in &spec.containers {
            self.cgroups
                .check(&c.limits)
                .map_err(|source| RuntimeError::Cgroup {
                    container: c.name.clone(),
                    source,
                })?;
        }
        let mut pulled = Vec::new();
        for c in &spec.containers {
            let image = self
                .images
                .pull(&c.image, &c.credentials)
                .await
                .map_err(|source| RuntimeError::Image {
                    container: c.name.clone(),
                    source,
                })?;
            pulled.push(image);
        }
        let mut pods = self.pods.lock().await;
        if let Some(existing) = pods.get(&spec.id) {
            return if existing.spec == spec {
                Ok(existing.status())
            } else {
                Err(RuntimeError::PodConflict(spec.id.clone()))
            };
        }
        let pod_dir = self.config.data_dir.join("pods").join(&spec.id);
        let result = self.build_pod(&spec, pulled, &pod_dir);
        let pod = match result {
            Ok(pod) => Arc::new(pod),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&pod_dir);
                let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                self.cgroups.discard(&spec.id, &names);
                return Err(e);
            }
        };
        pods.insert(spec.id.clone(), pod.clone());
        drop(pods);
        self.audit.audit(
            format!(
                "pod created with containers {}",
                spec.containers
                    .iter()
                    .map(|c| format!("{}={}", c.name, c.image))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&spec.id],
        );
        Ok(pod.status())
    }

    fn build_pod(
        &self,
        spec: &PodSpec,
        pulled: Vec<PulledImage>,
        pod_dir: &Path,
    ) -> Result<Pod, RuntimeError> {
        let mut containers = Vec::new();
        for (c, image) in spec.containers.iter().zip(pulled) {
            let user = if c.user.is_empty() {
                image.config.user.clone()
            } else {
                c.user.clone()
            };
            let (identity, home) = resolve_identity(&image.rootfs, &user).ok_or_else(|| {
                RuntimeError::UnknownUser {
                    container: c.name.clone(),
                    user: user.clone(),
                }
            })?;
            let argv = effective_argv(
                &c.command,
                &c.args,
                &image.config.entrypoint,
                &image.config.cmd,
            );
            if argv.is_empty() {
                return Err(RuntimeError::InvalidSpec(format!(
                    "container {:?}: no command given and the image has no entrypoint or cmd",
                    c.name
                )));
            }
            let mut env: BTreeMap<String, String> =
                launch::split_env(&image.config.env).into_iter().collect();
            env.entry("PATH".into()).or_insert_with(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });
            env.entry("HOME".into()).or_insert(home);
            env.insert("HOSTNAME".into(), spec.hostname.clone());
            env.extend(c.env.clone());
            let cwd = if !c.working_dir.is_empty() {
                c.working_dir.clone()
            } else if !image.config.working_dir.is_empty() {
                image.config.working_dir.clone()
            } else {
                "/".to_string()
            };
            let dir = pod_dir.join(&c.name);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let cgroup = self
                .cgroups
                .create(&spec.id, &c.name, &c.limits)
                .map_err(|source| RuntimeError::Cgroup {
                    container: c.name.clone(),
                    source,
                })?;
            let log_path = pod_dir.join(format!("{}.log", c.name));
            let log = LogFile::open(&log_path).map_err(io_err(&log_path))?;
            let (status, _) = watch::channel(ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                image_digest: image.manifest_digest.clone(),
                state: ContainerState::Created,
                pid: 0,
                exit_code: 0,
                restart_count: 0,
                restarting: false,
                started_at_ns: 0,
                finished_at_ns: 0,
                message: String::new(),
                oom_killed: false,
            });
            let (control, _) = watch::channel(Desired::Stop {
                deadline: tokio::time::Instant::now(),
            });
            containers.push(Arc::new(Container {
                spec: c.clone(),
                process: Process {
                    argv,
                    env: env.into_iter().collect(),
                    cwd,
                    identity,
                },
                image,
                dir,
                cgroup,
                log,
                status,
                control,
                supervisor: std::sync::Mutex::new(None),
            }));
        }
        Ok(Pod {
            spec: spec.clone(),
            dir: pod_dir.to_path_buf(),
            containers,
            stopped: Default::default(),
            op: Mutex::new(()),
        })
    }

    pub async fn get_pod(&self, id: &str) -> Result<PodStatus, RuntimeError> {
        Ok(self.pod(id).await?.status())
    }

    pub async fn list_pods(&self) -> Vec<PodStatus> {
        self.pods
            .lock()
            .await
            .values()
            .map(|p| p.status())
            .collect()
    }

    /// Starts every container that is not already running or restarting.
    pub async fn start_pod(self: &Arc<Self>, id: &str) -> Result<PodStatus, RuntimeError> {
        let pod = self.pod(id).await?;
        let _op = pod.op.lock().await;
        pod.stopped
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for container in &pod.containers {
            let mut supervisor = container
                .supervisor
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if supervisor.as_ref().is_some_and(|h| !h.is_finished()) {
                continue;
            }
            container.control.send_replace(Desired::Run);
            let runtime = self.clone();
            let c = container.clone();
            let hostname = pod.spec.hostname.clone();
            *supervisor = Some(tokio::spawn(async move {
                runtime.supervise(c, hostname).await;
            }));
        }
        self.audit.audit("pod started", &[id]);
        Ok(pod.status())
    }

    /// Stops every container: SIGTERM, then SIGKILL after `timeout`.
    pub async fn stop_pod(&self, id: &str, timeout: Duration) -> Result<PodStatus, RuntimeError> {
        let pod = self.pod(id).await?;
        let _op = pod.op.lock().await;
        self.stop_containers(&pod, timeout).await;
        self.audit.audit("pod stopped", &[id]);
        Ok(pod.status())
    }

    async fn stop_containers(&self, pod: &Pod, timeout: Duration) {
        pod.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut handles = Vec::new();
        for container in &pod.containers {
            container.control.send_replace(Desired::Stop { deadline });
            let handle = container
                .supervisor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            handles.extend(handle);
        }
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// Stops the pod if needed and removes its containers, upper dirs and logs.
    pub async fn delete_pod(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let pod = self.pod(id).await?;
        let _op = pod.op.lock().await;
        self.stop_containers(&pod, timeout).await;
        // The cgroups go first: if one cannot be removed the pod stays, and a retry finishes.
        for container in &pod.containers {
            container
                .cgroup
                .remove()
                .await
                .map_err(|source| RuntimeError::Cgroup {
                    container: container.spec.name.clone(),
                    source,
                })?;
        }
        self.cgroups.remove_pod(id);
        self.pods.lock().await.remove(id);
        let dir = pod.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await
            .map_err(|e| RuntimeError::Launcher(std::io::Error::other(e.to_string())))?
            .map_err(io_err(&pod.dir))?;
        self.audit.audit("pod deleted", &[id]);
        Ok(())
    }

    /// Stops every pod and removes their cgroups (used by Shutdown).
    pub async fn stop_all(&self, timeout: Duration) {
        let pods: Vec<Arc<Pod>> = self.pods.lock().await.values().cloned().collect();
        let stops = pods.iter().map(|pod| async move {
            let _op = pod.op.lock().await;
            self.stop_containers(pod, timeout).await;
            // The daemon is going away: leave no cgroups behind (matters in local mode; a VM
            // powers off anyway).
            for container in &pod.containers {
                if let Err(e) = container.cgroup.remove().await {
                    tracing::warn!(pod = %pod.spec.id, error = %e, "cannot remove container cgroup");
                }
            }
            self.cgroups.remove_pod(&pod.spec.id);
        });
        futures::future::join_all(stops).await;
    }

    /// Runs one container until it stops for good.
    async fn supervise(&self, container: Arc<Container>, hostname: String) {
        let mut control = container.control.subscribe();
        let mut backoff = BACKOFF_INITIAL;
        let pod_label = container
            .dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        loop {
            if matches!(*control.borrow_and_update(), Desired::Stop { .. }) {
                break;
            }
            let started = Instant::now();
            let oom_kills_before = container.cgroup.oom_kills();
            let exit_code = match self.launch_container(&container, &hostname).await {
                Ok(Launched {
                    pid,
                    exit,
                    captures,
                }) => {
                    container.status.send_modify(|s| {
                        s.state = ContainerState::Running;
                        s.pid = pid;
                        s.restarting = false;
                        s.started_at_ns = now_ns();
                        s.message.clear();
                        s.oom_killed = false;
                    });
                    tracing::info!(pod = %pod_label, container = %container.spec.name, pid, "container running");
                    let code = wait_for_exit(pid, exit, &mut control).await;
                    // Every line is in the log before the exit is visible (Logs relies on it).
                    join_threads(captures).await;
                    let oom_killed = container.cgroup.oom_kills() > oom_kills_before;
                    if oom_killed {
                        tracing::warn!(pod = %pod_label, container = %container.spec.name, code, "container OOM-killed");
                        self.audit.warn(
                            format!(
                                "container {} was killed by the OOM killer (memory limit {} bytes)",
                                container.spec.name,
                                container.spec.limits.memory_bytes.unwrap_or(0)
                            ),
                            &[&pod_label],
                        );
                    }
                    container.status.send_modify(|s| {
                        s.state = ContainerState::Exited;
                        s.pid = 0;
                        s.exit_code = code;
                        s.finished_at_ns = now_ns();
                        s.oom_killed = oom_killed;
                    });
                    code
                }
                Err(message) => {
                    tracing::warn!(pod = %pod_label, container = %container.spec.name, %message, "container failed to start");
                    self.audit.warn(
                        format!(
                            "container {} failed to start: {message}",
                            container.spec.name
                        ),
                        &[&pod_label],
                    );
                    container.status.send_modify(|s| {
                        s.state = ContainerState::Exited;
                        s.pid = 0;
                        s.exit_code = 128;
                        s.finished_at_ns = now_ns();
                        s.message = message.clone();
                    });
                    128
                }
            };
            let stopping = matches!(*control.borrow(), Desired::Stop { .. });
            let restart = !stopping && container.spec.restart_policy.restarts_after(exit_code);
            self.audit.info(
                format!(
                    "container {} exited with code {exit_code}{}",
                    container.spec.name,
                    if restart { ", restarting" } else { "" }
                ),
                &[&pod_label],
            );
            if !restart {
                break;
            }
            if started.elapsed() > BACKOFF_RESET_AFTER {
                backoff = BACKOFF_INITIAL;
            }
            container.status.send_modify(|s| s.restarting = true);
            tracing::info!(pod = %pod_label, container = %container.spec.name, exit_code, ?backoff, "restarting container after back-off");
            let stop = tokio::select! {
                _ = tokio::time::sleep(backoff) => false,
                changed = control.changed() => changed.is_err() || matches!(*control.borrow(), Desired::Stop { .. }),
            };
            if stop {
                break;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            container.status.send_modify(|s| s.restart_count += 1);
        }
        container.status.send_modify(|s| s.restarting = false);
    }

    async fn launch_container(
        &self,
        container: &Container,
        hostname: &str,
    ) -> Result<Launched, String> {
        let spec = ContainerLaunch {
            lower: container.image.rootfs.clone(),
            upper: container.dir.join("upper"),
            work: container.dir.join("work"),
            merged: container.dir.join("rootfs"),
            hostname: hostname.to_string(),
            argv: container.process.argv.clone(),
            env: container.process.env.clone(),
            cwd: container.process.cwd.clone(),
            identity: container.process.identity.clone(),
            resolv_conf: self.config.resolv_conf.clone(),
            cgroup_procs: container.cgroup.procs_files(),
        };
        // The work dir must be empty for every mount; a previous run leaves a stale one.
        let _ = std::fs::remove_dir_all(&spec.work);
        let json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
        let (status_read, status_write) = status_pipe().map_err(|e| e.to_string())?;
        let (out_read, out_write) = status_pipe().map_err(|e| e.to_string())?;
        let (err_read, err_write) = status_pipe().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.config.launcher);
        command
            .arg("launch-container")
            .arg("--spec")
            .arg(json)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write));
        pass_status_fd(&mut command, &status_write);
        let spawned = self.reaper.spawn(&mut command);
        drop(command);
        drop(status_write);
        let (_launcher_pid, exit) = spawned.map_err(|e| format!("cannot start launcher: {e}"))?;
        let captures = vec![
            container
                .log
                .capture(Stream::Stdout, std::fs::File::from(out_read)),
            container
                .log
                .capture(Stream::Stderr, std::fs::File::from(err_read)),
        ];
        match read_report(status_read).await {
            Ok(pid) => Ok(Launched {
                pid,
                exit,
                captures,
            }),
            Err(message) => {
                let _ = exit.await;
                join_threads(captures).await;
                Err(message)
            }
        }
    }

    /// Log file and status of a container, for `Logs`.
    pub async fn log_source(
        &self,
        pod_id: &str,
        container: &str,
    ) -> Result<(Arc<LogFile>, watch::Receiver<ContainerStatus>), RuntimeError> {
        let pod = self.pod(pod_id).await?;
        let c = pod.container(container)?;
        Ok((c.log.clone(), c.status.subscribe()))
    }

    /// Starts a command in a running container. Returns a sender for input and a receiver of
    /// output ending with [`ExecOutput::Exit`].
    pub async fn exec(
        &self,
        request: ExecRequest,
    ) -> Result<(mpsc::Sender<ExecInput>, mpsc::Receiver<ExecOutput>), RuntimeError> {
        let pod = self.pod(&request.pod_id).await?;
        let container = pod.container(&request.container)?;
        let status = container.status.borrow().clone();
        if status.state != ContainerState::Running || status.pid == 0 {
            return Err(RuntimeError::NotRunning {
                pod: request.pod_id.clone(),
                container: request.container.clone(),
            });
        }
        if request.command.is_empty() {
            return Err(RuntimeError::InvalidSpec("exec needs a command".into()));
        }
        if request
            .command
            .iter()
            .chain(request.env.keys())
            .chain(request.env.values())
            .any(|a| !launch::valid_arg(a))
        {
            return Err(RuntimeError::InvalidSpec(
                "exec command and env must not contain NUL bytes".into(),
            ));
        }
        let mut env: BTreeMap<String, String> = container.process.env.iter().cloned().collect();
        env.extend(request.env.clone());
        let spec = ExecLaunch {
            target_pid: status.pid,
            argv: request.command.clone(),
            env: env.into_iter().collect(),
            cwd: if request.working_dir.is_empty() {
                container.process.cwd.clone()
            } else {
                request.working_dir.clone()
            },
            identity: container.process.identity.clone(),
            tty: request.tty,
            cgroup_procs: container.cgroup.procs_files(),
        };
        let json =
            serde_json::to_string(&spec).map_err(|e| RuntimeError::ExecFailed(e.to_string()))?;
        let (status_read, status_write) = status_pipe()?;
        let mut command = Command::new(&self.config.launcher);
        command
            .arg("launch-exec")
            .arg("--spec")
            .arg(json)
            .env_clear();
        pass_status_fd(&mut command, &status_write);

        let (out_tx, out_rx) = mpsc::channel::<ExecOutput>(64);
        let (in_tx, in_rx) = mpsc::channel::<ExecInput>(64);
        let mut readers = Vec::new();
        let stdin_writer: std::fs::File;
        let mut pty_master: Option<OwnedFd> = None;
        if request.tty {
            let size = nix::pty::Winsize {
                ws_row: request.rows.max(1),
                ws_col: request.cols.max(1),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(Some(&size), None)
                .map_err(|e| RuntimeError::Launcher(e.into()))?;
            let slave = std::fs::File::from(pty.slave);
            let dup = |f: &std::fs::File| f.try_clone().map_err(RuntimeError::Launcher);
            command
                .stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            let master = std::fs::File::from(pty.master);
            stdin_writer = master.try_clone().map_err(RuntimeError::Launcher)?;
            let reader = master.try_clone().map_err(RuntimeError::Launcher)?;
            readers.push(spawn_output_reader(
                reader,
                out_tx.clone(),
                ExecOutput::Stdout,
            ));
            pty_master = Some(OwnedFd::from(master));
        } else {
            let (in_read, in_write) = status_pipe()?;
            let (out_read, out_write) = status_pipe()?;
            let (err_read, err_write) = status_pipe()?;
            command
                .stdin(Stdio::from(in_read))
                .stdout(Stdio::from(out_write))
                .stderr(Stdio::from(err_write));
            stdin_writer = std::fs::File::from(in_write);
            readers.push(spawn_output_reader(
                std::fs::File::from(out_read),
                out_tx.clone(),
                ExecOutput::Stdout,
            ));
            readers.push(spawn_output_reader(
                std::fs::File::from(err_read),
                out_tx.clone(),
                ExecOutput::Stderr,
            ));
        }
        let spawned = self.reaper.spawn(&mut command);
        drop(command);
        drop(status_write);
        let (_pid, exit) = spawned.map_err(RuntimeError::Launcher)?;
        if let Err(message) = read_report(status_read).await {
            let _ = exit.await;
            return Err(RuntimeError::ExecFailed(message));
        }
        self.audit.info(
            format!(
                "exec in container {}: {:?}",
                request.container, request.command
            ),
            &[&request.pod_id],
        );
        tokio::spawn(feed_input(in_rx, stdin_writer, pty_master));
        tokio::spawn(async move {
            let code = exit.await.unwrap_or(255);
            join_threads(readers).await;
            let _ = out_tx.send(ExecOutput::Exit(code)).await;
        });
        Ok((in_tx, out_rx))
    }
}

/// A container process that started.
struct Launched {
    pid: u32,
    exit: oneshot::Receiver<i32>,
    captures: Vec<std::thread::JoinHandle<()>>,
}

async fn join_threads(threads: Vec<std::thread::JoinHandle<()>>) {
    for thread in threads {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Waits for the container to exit, handling a stop request meanwhile.
async fn wait_for_exit(
    pid: u32,
    mut exit: oneshot::Receiver<i32>,
    control: &mut watch::Receiver<Desired>,
) -> i32 {
    let target = Pid::from_raw(pid as i32);
    loop {
        let desired = *control.borrow_and_update();
        if let Desired::Stop { deadline } = desired {
            let _ = kill(target, Signal::SIGTERM);
            tokio::select! {
                code = &mut exit => return code.unwrap_or(255),
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = kill(target, Signal::SIGKILL);
                    return exit.await.unwrap_or(255);
                }
            }
        }
        tokio::select! {
            code = &mut exit => return code.unwrap_or(255),
            changed = control.changed() => {
                if changed.is_err() {
                    let _ = kill(target, Signal::SIGKILL);
                    return exit.await.unwrap_or(255);
                }
            }
        }
    }
}

fn spawn_output_reader(
    mut reader: std::fs::File,
    tx: mpsc::Sender<ExecOutput>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                // EIO: the pty's last slave fd closed.
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(wrap(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

async fn feed_input(
    mut input: mpsc::Receiver<ExecInput>,
    writer: std::fs::File,
    pty_master: Option<OwnedFd>,
) {
    let mut writer = Some(writer);
    while let Some(message) = input.recv().await {
        match message {
            ExecInput::Stdin(bytes) => {
                let Some(w) = writer.as_ref().and_then(|w| w.try_clone().ok()) else {
                    continue;
                };
                let _ = tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let mut w = w;
                    w.write_all(&bytes)
                })
                .await;
            }
            ExecInput::Resize { rows, cols } => {
                if let Some(master) = &pty_master {
                    let size = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
                    unsafe {
                        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
                    }
                }
            }
            ExecInput::CloseStdin => {
                if pty_master.is_some() {
                    // A terminal has no EOF of its own: send the EOF character.
                    if let Some(w) = writer.as_ref().and_then(|w| w.try_clone().ok()) {
                        let _ = tokio::task::spawn_blocking(move || {
                            use std::io::Write;
                            let mut w = w;
                            w.write_all(&[4])
                        })
                        .await;
                    }
                } else {
                    writer = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes_semantics() {
        let ep = s(&["/entry"]);
        let cmd = s(&["default"]);
        assert_eq!(
            effective_argv(&[], &[], &ep, &cmd),
            s(&["/entry", "default"])
        );
        assert_eq!(
            effective_argv(&[], &s(&["x"]), &ep, &cmd),
            s(&["/entry", "x"])
        );
        assert_eq!(
            effective_argv(&s(&["/bin/sh"]), &[], &ep, &cmd),
            s(&["/bin/sh"])
        );
        assert_eq!(
            effective_argv(&s(&["/bin/sh"]), &s(&["-c", "x"]), &ep, &cmd),
            s(&["/bin/sh", "-c", "x"])
        );
    }

    #[test]
    fn users_resolve_from_the_image_passwd_and_group() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let (id, home) = resolve_identity(dir.path(), "app").unwrap();
        assert_eq!((id.uid, id.gid, home.as_str()), (1000, 1001, "/home/app"));
        let (id, _) = resolve_identity(dir.path(), "app:staff").unwrap();
        assert_eq!((id.uid, id.gid), (1000, 50));
        let (id, _) = resolve_identity(dir.path(), "4242:7").unwrap();
        assert_eq!((id.uid, id.gid), (4242, 7));
        let (id, home) = resolve_identity(dir.path(), "").unwrap();
        assert_eq!((id.uid, id.gid, home.as_str()), (0, 0, "/root"));
        assert!(resolve_identity(dir.path(), "nobody-here").is_none());
    }
}
