//! Hypervisor drivers behind one trait.
//!
//! A driver turns a [`VmSpec`] into one hypervisor process per VM and controls it afterwards
//! through that process's control socket: cloud-hypervisor's REST API ([`cloud_hypervisor`])
//! or QEMU's QMP ([`qemu`]). Everything a driver needs to find a VM again after a daemon
//! restart lives in the VM's [`RunDir`] (control socket, serial console socket, console log,
//! hypervisor log), so the driver itself keeps no state.
//!
//! The serial console of both drivers is a unix socket served by the hypervisor; the daemon
//! connects to it as a client (`console.rs`), so the console survives a daemon restart.

pub mod cloud_hypervisor;
pub mod qemu;
pub mod qmp;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{DiskSpec, NicSpec, ProcessIdentity, VmSpec};

/// Per-VM runtime directory: `<data_dir>/run/<vm id>/`.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The hypervisor's control socket (QMP or cloud-hypervisor's API).
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }
    /// The serial console, served by the hypervisor.
    pub fn console_socket(&self) -> PathBuf {
        self.path.join("console.sock")
    }
    /// Everything the guest wrote to its serial port (written by QEMU; for cloud-hypervisor
    /// the daemon's console hub appends to it).
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }
    /// stdout/stderr of the hypervisor process.
    pub fn hypervisor_log(&self) -> PathBuf {
        self.path.join("hypervisor.log")
    }
    /// The host side of a pod microVM's vsock (hybrid vsock: `CONNECT <port>` to reach the
    /// guest; guest-initiated connections to host port P arrive on `vsock.sock_P`).
    pub fn vsock_socket(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }
    /// Where the host listens for guest connections to vsock port `port`.
    pub fn vsock_listener(&self, port: u32) -> PathBuf {
        self.path.join(format!("vsock.sock_{port}"))
    }
    /// The vhost-user socket between QEMU and its vhost-device-vsock backend.
    pub fn vhost_vsock_socket(&self) -> PathBuf {
        self.path.join("vhost-vsock.sock")
    }
    /// stdout/stderr of the vhost-device-vsock backend (QEMU pods).
    pub fn vsock_backend_log(&self) -> PathBuf {
        self.path.join("vhost-device-vsock.log")
    }
    /// The cloud-init NoCloud seed image.
    pub fn cidata_image(&self) -> PathBuf {
        self.path.join("cidata.img")
    }

    /// The last `max` bytes of the hypervisor log, for error messages.
    pub fn hypervisor_log_tail(&self, max: usize) -> String {
        tail(&self.hypervisor_log(), max)
    }
}

/// The last `max` bytes of a file, lossily decoded.
pub fn tail(path: &Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// What a driver needs to start a VM.
pub struct LaunchRequest<'a> {
    pub vm_id: &'a str,
    pub spec: &'a VmSpec,
    pub run: &'a RunDir,
    /// The cloud-init seed image to attach read-only, if the VM has cloud-init.
    pub cidata: Option<&'a Path>,
}

/// A started hypervisor process.
pub struct Launched {
    pub identity: ProcessIdentity,
    /// The child handle when this process spawned it (to collect its exit status).
    pub child: Option<tokio::process::Child>,
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited during start-up ({status}): {log}")]
    EarlyExit {
        program: String,
        status: String,
        log: String,
    },
    #[error("{program} did not open its control socket within {timeout:?}: {log}")]
    StartTimeout {
        program: String,
        timeout: Duration,
        log: String,
    },
    #[error("control socket {path} unreachable")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("control call timed out after {0:?}")]
    Timeout(Duration),
    #[error("{call} failed: {message}")]
    Api { call: String, message: String },
    #[error("malformed answer from the hypervisor: {0}")]
    Protocol(String),
    /// The VM's spec asks for something this host does not offer (hugepages, nested KVM).
    #[error("this host cannot run the VM as specified: {0}")]
    HostLacks(String),
    #[error("not supported live by the {driver} driver: {what}")]
    Unsupported { driver: &'static str, what: String },
    #[error("cannot prepare the run directory {path}")]
    RunDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One hypervisor implementation. Methods taking a [`RunDir`] talk to a running process.
#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// `cloud-hypervisor` or `qemu`.
    fn name(&self) -> &'static str;

    /// Spawns the process, configures and boots the VM; returns once the VM runs.
    async fn launch(&self, request: &LaunchRequest<'_>) -> Result<Launched, HypervisorError>;

    /// The hypervisor program this driver runs.
    fn binary(&self) -> &Path;

    /// Whether a process with this command line is this driver's process for `run`
    /// (part of the identity check when adopting after a restart): it runs the driver's program
    /// and its arguments name the VM's run directory, which contains the VM id. (So an
    /// operator's `less …/console.log` is never taken for a hypervisor.)
    fn owns_process(&self, run: &RunDir, cmdline: &[String]) -> bool {
        names_run_dir(self.binary(), run, cmdline)
    }

    /// Whether a process is a device backend this driver started beside the hypervisor for
    /// `run` (QEMU's vhost-device-vsock of a pod). Backends are killed once the hypervisor is
    /// gone, and with the VM's deletion.
    fn owns_backend(&self, _run: &RunDir, _cmdline: &[String]) -> bool {
        false
    }

    /// Presses the ACPI power button (the guest decides whether to power off).
    async fn power_button(&self, run: &RunDir) -> Result<(), HypervisorError>;

    /// Stops the VM now and makes the process exit (the caller still SIGKILLs on failure).
    async fn hard_stop(&self, run: &RunDir) -> Result<(), HypervisorError>;

    /// Whether the hypervisor answers on its control socket.
    async fn ping(&self, run: &RunDir) -> Result<(), HypervisorError>;

    async fn add_disk(&self, run: &RunDir, disk: &DiskSpec) -> Result<(), HypervisorError>;
    async fn add_nic(&self, run: &RunDir, nic: &NicSpec) -> Result<(), HypervisorError>;
    async fn remove_disk(&self, run: &RunDir, disk_id: &str) -> Result<(), HypervisorError>;
    async fn remove_nic(&self, run: &RunDir, nic_id: &str) -> Result<(), HypervisorError>;
    async fn resize(
        &self,
        run: &RunDir,
        vcpus: Option<u32>,
        memory_mib: Option<u64>,
    ) -> Result<(), HypervisorError>;

    // --- Live migration (see `crate::vmm::migration` for the whole walk) ---

    /// Spawns the hypervisor waiting for an incoming migration: it listens on `socket` (a unix
    /// socket) and keeps the guest paused after the state arrived, until
    /// [`Hypervisor::resume`]. Returns once the process answers on its control socket.
    async fn launch_incoming(
        &self,
        _request: &LaunchRequest<'_>,
        _socket: &Path,
    ) -> Result<Launched, HypervisorError> {
        Err(HypervisorError::Unsupported {
            driver: self.name(),
            what: "incoming live migration".into(),
        })
    }

    /// Starts sending the running VM (memory, devices, and its disks when `with_disks`) to
    /// `destination`, a unix socket something listens on; returns once the migration runs
    /// (follow it with [`Hypervisor::migration_progress`]).
    async fn migrate_out(
        &self,
        _run: &RunDir,
        _destination: &Path,
        _with_disks: bool,
        _max_downtime: Duration,
    ) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported {
            driver: self.name(),
            what: "outgoing live migration".into(),
        })
    }

    /// The state of the current (or last) migration of the process, either side.
    async fn migration_progress(&self, _run: &RunDir) -> Result<MigrationStats, HypervisorError> {
        Err(HypervisorError::Unsupported {
            driver: self.name(),
            what: "migration progress".into(),
        })
    }

    /// Waits until the outgoing migration's state may have changed and returns it. `watch`
    /// is what the driver keeps between calls of one follower (QEMU: the QMP connection it
    /// receives `MIGRATION` events on). The default sleeps [`MIGRATION_POLL`] and asks
    /// [`Hypervisor::migration_progress`].
    async fn watch_migration(
        &self,
        run: &RunDir,
        _watch: &mut MigrationWatch,
    ) -> Result<MigrationStats, HypervisorError> {
        tokio::time::sleep(MIGRATION_POLL).await;
        self.migration_progress(run).await
    }

    /// Cancels an outgoing migration (if one runs) and lets the guest run here again.
    async fn cancel_migration(&self, _run: &RunDir) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported {
            driver: self.name(),
            what: "migration cancel".into(),
        })
    }

    /// Lets a paused guest run (an incoming VM whose state arrived, or a source whose
    /// migration completed but whose target could not take over).
    async fn resume(&self, _run: &RunDir) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported {
            driver: self.name(),
            what: "resume".into(),
        })
    }
}

/// Where a migration stands, as the hypervisor reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStats {
    pub status: MigrationStatus,
    /// Bytes of RAM (and of disks with block migration) sent so far.
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    /// Disk bytes sent so far (block migration), part of `transferred_bytes`.
    pub disk_transferred_bytes: u64,
    /// How long the guest was paused for the final switch-over (once completed).
    pub downtime_ms: u64,
    pub total_time_ms: u64,
    /// Why it failed, when it did.
    pub error: String,
}

/// How often [`Hypervisor::watch_migration`] polls a driver without migration events.
pub const MIGRATION_POLL: Duration = Duration::from_millis(50);

/// What a driver keeps between [`Hypervisor::watch_migration`] calls of one follower; drop it
/// (or [`MigrationWatch::close`]) before anything else talks to the process's control socket
/// for long (QEMU serves one QMP client at a time).
#[derive(Default)]
pub struct MigrationWatch {
    /// QEMU: the QMP connection waiting for `MIGRATION` events, and since when it is open.
    pub(crate) session: Option<(qmp::Session, tokio::time::Instant)>,
}

impl MigrationWatch {
    /// Closes what the driver kept open.
    pub fn close(&mut self) {
        self.session = None;
    }
}

/// A migration's state (QEMU's `query-migrate` status, reduced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration ran on this process.
    #[default]
    None,
    Active,
    Completed,
    Failed,
    Cancelled,
}

impl MigrationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::None => "none",
            MigrationStatus::Active => "active",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Failed => "failed",
            MigrationStatus::Cancelled => "cancelled",
        }
    }
}

/// Whether `cmdline` runs `program` and one of its arguments names a path in `run`.
pub fn names_run_dir(program: &Path, run: &RunDir, cmdline: &[String]) -> bool {
    let Some(first) = cmdline.first() else {
        return false;
    };
    if Path::new(first).file_name() != program.file_name() {
        return false;
    }
    let dir = format!("{}/", run.path().display());
    cmdline.iter().skip(1).any(|arg| arg.contains(&dir))
}

/// Which driver `--hypervisor` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypervisorChoice {
    Auto,
    CloudHypervisor,
    Qemu,
}

impl std::str::FromStr for HypervisorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cloud-hypervisor" | "ch" => Ok(Self::CloudHypervisor),
            "qemu" => Ok(Self::Qemu),
            other => Err(format!(
                "unknown hypervisor {other:?}: expected auto, cloud-hypervisor or qemu"
            )),
        }
    }
}

/// Whether `/dev/kvm` can run ordinary guests: it opens, answers `KVM_GET_API_VERSION` with 12,
/// and is not a PVM host (`kvm_pvm` loaded), where only PVM-enabled guest kernels run and a
/// normal one hangs. `Err` says why not.
pub fn kvm_status() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != 12 {
        return Err(format!(
            "/dev/kvm answers API version {version}, expected 12"
        ));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("/dev/kvm is a PVM host (kvm_pvm): ordinary guest kernels hang".into());
    }
    Ok(())
}

/// See [`kvm_status`].
pub fn kvm_usable() -> bool {
    kvm_status().is_ok()
}

/// Finds an executable in `PATH` (or checks an explicit path).
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| is_exec(p))
}

/// The driver `auto` picks and why: cloud-hypervisor when its binary and a usable KVM exist,
/// QEMU otherwise.
pub fn resolve_auto(ch_binary: &str) -> (HypervisorChoice, String) {
    let ch = find_program(ch_binary);
    match (ch, kvm_status()) {
        (Some(path), Ok(())) => (
            HypervisorChoice::CloudHypervisor,
            format!("{} found and /dev/kvm is usable", path.display()),
        ),
        (None, Ok(())) => (
            HypervisorChoice::Qemu,
            format!("{ch_binary} not found in PATH (KVM is usable: QEMU uses it)"),
        ),
        (Some(path), Err(why)) => (
            HypervisorChoice::Qemu,
            format!(
                "{} found but KVM is not usable ({why}): QEMU runs guests under TCG",
                path.display()
            ),
        ),
        (None, Err(why)) => (
            HypervisorChoice::Qemu,
            format!("{ch_binary} not found and KVM is not usable ({why}): QEMU with TCG"),
        ),
    }
}

/// Binds a listening unix socket at `path` (replacing a stale one) and returns its fd, to be
/// handed to the hypervisor. Because the socket listens before the hypervisor even starts,
/// clients can connect at once and simply wait for the first answer: no polling for readiness.
pub(crate) fn listen_socket(path: &Path) -> Result<OwnedFd, HypervisorError> {
    let _ = std::fs::remove_file(path);
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|source| HypervisorError::RunDir {
            path: path.display().to_string(),
            source,
        })?;
    Ok(OwnedFd::from(listener))
}

/// Spawns a hypervisor with stdio going to the run directory's log (never to a pipe that would
/// break when the daemon restarts), in its own process group so that a Ctrl-C aimed at the
/// daemon does not reach guests. `inherited[i]` becomes fd `3 + i` in the child.
pub(crate) fn spawn_hypervisor(
    program: &Path,
    args: &[String],
    run: &RunDir,
    inherited: &[OwnedFd],
) -> Result<tokio::process::Child, HypervisorError> {
    spawn_detached(program, args, &run.hypervisor_log(), inherited)
}

/// Spawns a process that must outlive the daemon (a hypervisor or its device backend): stdio
/// to `log_path`, its own process group, `inherited[i]` as fd `3 + i`.
pub(crate) fn spawn_detached(
    program: &Path,
    args: &[String],
    log_path: &Path,
    inherited: &[OwnedFd],
) -> Result<tokio::process::Child, HypervisorError> {
    let program_name = program.display().to_string();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|source| HypervisorError::RunDir {
            path: log_path.display().to_string(),
            source,
        })?;
    let log2 = log.try_clone()?;
    // Copies above the target numbers (close-on-exec), so that moving them to 3, 4, ... in the
    // child never overwrites one that is still to be moved.
    let mut high = Vec::with_capacity(inherited.len());
    for fd in inherited {
        let raw = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3 + inherited.len() as RawFd + 16),
        )
        .map_err(std::io::Error::from)?;
        // SAFETY: fcntl returned a fresh fd that nothing else owns.
        high.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    let raw_fds: Vec<RawFd> = high.iter().map(|fd| fd.as_raw_fd()).collect();
    tracing::info!(program = %program_name, ?args, "starting process");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: between fork and exec the closure only calls dup2, which is async-signal-safe,
    // on fds that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw_fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| HypervisorError::Spawn {
        program: program_name,
        source,
    });
    drop(high);
    child
}

/// Runs `ready` (the first control call) unless the child exits first or `timeout` passes.
pub(crate) async fn until_ready<T>(
    program: &str,
    child: &mut tokio::process::Child,
    run: &RunDir,
    timeout: Duration,
    ready: impl std::future::Future<Output = Result<T, HypervisorError>>,
) -> Result<T, HypervisorError> {
    let outcome = tokio::select! {
        status = child.wait() => {
            let status = status?;
            return Err(HypervisorError::EarlyExit {
                program: program.to_string(),
                status: status.to_string(),
                log: run.hypervisor_log_tail(2000),
            });
        }
        outcome = tokio::time::timeout(timeout, ready) => outcome,
    };
    let result = match outcome {
        Ok(result) => result,
        Err(_) => Err(HypervisorError::StartTimeout {
            program: program.to_string(),
            timeout,
            log: run.hypervisor_log_tail(2000),
        }),
    };
    if let Err(err) = result {
        // The hypervisor may be exiting (bad kernel, bad option): prefer its own message.
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            return Err(HypervisorError::EarlyExit {
                program: program.to_string(),
                status: status.to_string(),
                log: run.hypervisor_log_tail(2000),
            });
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(err);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::qemu::{QemuConfig, QemuDriver};

    #[test]
    fn only_the_hypervisor_program_naming_the_run_dir_is_owned() {
        let driver = QemuDriver::new(QemuConfig {
            accel: crate::hypervisor::qemu::Accel::Tcg,
            ..QemuConfig::default()
        });
        let run = RunDir::new(PathBuf::from("/var/lib/mvirt/vmm/run/abc"));
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(driver.owns_process(
            &run,
            &args(&[
                "/usr/bin/qemu-system-x86_64",
                "-chardev",
                "socket,logfile=/var/lib/mvirt/vmm/run/abc/console.log"
            ])
        ));
        assert!(!driver.owns_process(
            &run,
            &args(&["less", "/var/lib/mvirt/vmm/run/abc/console.log"])
        ));
        assert!(!driver.owns_process(
            &run,
            &args(&[
                "qemu-system-x86_64",
                "-chardev",
                "logfile=/var/lib/mvirt/vmm/run/abcd/console.log"
            ])
        ));
        assert!(!driver.owns_process(&run, &[]));
    }

    #[test]
    fn auto_picks_qemu_without_a_cloud_hypervisor_binary_and_says_why() {
        let (choice, reason) = resolve_auto("/nonexistent/cloud-hypervisor");
        assert_eq!(choice, HypervisorChoice::Qemu);
        assert!(reason.contains("not found"), "{reason}");
        // With a binary present the choice depends on KVM, and the reason names the binary.
        let (choice, reason) = resolve_auto("/bin/true");
        assert!(reason.contains("/bin/true"), "{reason}");
        assert_eq!(choice == HypervisorChoice::CloudHypervisor, kvm_usable());
    }
}
