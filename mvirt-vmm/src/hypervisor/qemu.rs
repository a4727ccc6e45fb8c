//! The QEMU driver: `qemu-system-x86_64` with KVM when it is usable, TCG otherwise, controlled
//! over QMP.
//!
//! One process per VM. The serial port is a unix-socket chardev served by QEMU (with a logfile,
//! so output produced while the daemon is down is kept); the daemon connects as a client. Disks
//! are virtio-blk, NICs virtio-net on an existing TAP (`script=no`, no vhost: the TAP belongs to
//! mvirt-ebpf). The machine is `pc` so that ACPI PCI hot-plug works without root ports.
//! Live resize is not implemented for QEMU: it is recorded for the next boot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::{
    listen_socket, names_run_dir, qmp, spawn_detached, spawn_hypervisor, until_ready, Hypervisor,
    HypervisorError, LaunchRequest, Launched, MigrationStats, MigrationStatus, MigrationWatch,
    RunDir,
};
use crate::model::{BootSource, DiskSpec, NicSpec, ProcessIdentity, VmSpec};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` answers, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!("unknown accelerator {other:?}: auto, kvm or tcg")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub accel: Accel,
    /// TCG translation cache size in MiB (QEMU's default of 1 GiB per VM is wasteful).
    pub tcg_tb_size_mib: u32,
    /// Firmware when a VM boots UEFI without naming one.
    pub default_firmware: PathBuf,
    pub start_timeout: Duration,
    /// The vhost-user vsock backend of pod microVMs (one process per pod).
    pub vhost_vsock_binary: PathBuf,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Auto,
            tcg_tb_size_mib: 64,
            default_firmware: PathBuf::from("/usr/share/ovmf/OVMF.fd"),
            start_timeout: Duration::from_secs(20),
            vhost_vsock_binary: PathBuf::from("vhost-device-vsock"),
        }
    }
}

/// QEMU's migration bandwidth cap (bytes/s).
const MIGRATION_MAX_BANDWIDTH: u64 = 10 * 1024 * 1024 * 1024;

/// How long a hot-unplug waits for the guest to release the device.
const UNPLUG_WAIT: Duration = Duration::from_secs(10);

/// The block node of a hot-plugged disk. QEMU limits node names to 31 characters, which a
/// `drive-<uuid>` exceeds, so the name is a digest of the whole disk id (19 characters).
fn block_node(disk_id: &str) -> String {
    format!("drive-{}", mvirt_common::names::digest(disk_id, 13))
}

pub struct QemuDriver {
    config: QemuConfig,
    use_kvm: bool,
}

impl QemuDriver {
    pub fn new(config: QemuConfig) -> Self {
        let (use_kvm, why) = match config.accel {
            Accel::Kvm => (true, "--qemu-accel kvm".to_string()),
            Accel::Tcg => (false, "--qemu-accel tcg".to_string()),
            Accel::Auto => match super::kvm_status() {
                Ok(()) => (true, "auto: /dev/kvm is usable".to_string()),
                Err(why) => (false, format!("auto: {why}")),
            },
        };
        tracing::info!(
            accel = if use_kvm { "kvm" } else { "tcg" },
            reason = %why,
            "qemu driver ready"
        );
        Self { config, use_kvm }
    }

    /// The QEMU command line for a VM (without the program name).
    pub fn command_line(&self, request: &LaunchRequest<'_>) -> Vec<String> {
        let spec = request.spec;
        let run = request.run;
        let mut args: Vec<String> = Vec::new();
        let mut push = |a: &str, b: String| {
            args.push(a.to_string());
            args.push(b);
        };
        push("-name", format!("guest={},debug-threads=on", request.vm_id));
        push("-uuid", request.vm_id.to_string());
        push("-machine", "pc".into());
        if self.use_kvm {
            // The host's virtualisation extensions reach the guest only when its spec asks for
            // nested virtualization.
            let virt_flags = if spec.nested_virtualization {
                ""
            } else {
                ",-vmx,-svm"
            };
            push("-accel", "kvm".into());
            push("-cpu", format!("host{virt_flags}"));
        } else {
            // TCG's `max` model is left whole: `max,-svm` makes glibc's static start-up abort in
            // the guest (`_dl_get_origin` assertion, seen with QEMU 7.2), and nested
            // virtualization is refused under TCG anyway (`check_host`).
            push(
                "-accel",
                format!("tcg,tb-size={}", self.config.tcg_tb_size_mib),
            );
            push("-cpu", "max".into());
        }
        push("-smp", spec.vcpus.to_string());
        push("-m", format!("{}M", spec.memory_mib));
        if spec.hugepages {
            let mount = hugetlbfs_mount().unwrap_or_else(|| PathBuf::from(DEFAULT_HUGETLBFS));
            push(
                "-object",
                format!(
                    "memory-backend-file,id=mem0,size={}M,mem-path={},share=on,prealloc=on",
                    spec.memory_mib,
                    mount.display()
                ),
            );
            push("-numa", "node,memdev=mem0".into());
        } else if spec.vsock.is_some() {
            // vhost-user devices need guest memory the backend can map.
            push(
                "-object",
                format!(
                    "memory-backend-memfd,id=mem0,size={}M,share=on",
                    spec.memory_mib
                ),
            );
            push("-numa", "node,memdev=mem0".into());
        }
        args.extend(
            ["-nodefaults", "-no-user-config", "-display", "none"]
                .iter()
                .map(|s| s.to_string()),
        );
        let mut push = |a: &str, b: String| {
            args.push(a.to_string());
            args.push(b);
        };
        // fd 3: the QMP socket, fd 4: the serial console socket, both bound by the daemon
        // (see `launch`).
        push("-chardev", "socket,id=qmp,fd=3,server=on,wait=off".into());
        push("-mon", "chardev=qmp,mode=control".into());
        push(
            "-chardev",
            format!(
                "socket,id=serial0,fd=4,server=on,wait=off,logfile={},logappend=on",
                run.console_log().display()
            ),
        );
        push("-serial", "chardev:serial0".into());
        match &spec.boot {
            BootSource::Kernel {
                kernel,
                initramfs,
                cmdline,
            } => {
                push("-kernel", kernel.clone());
                if let Some(initramfs) = initramfs {
                    push("-initrd", initramfs.clone());
                }
                if !cmdline.is_empty() {
                    push("-append", cmdline.clone());
                }
            }
            BootSource::Firmware { firmware } => {
                let firmware = firmware
                    .clone()
                    .unwrap_or_else(|| self.config.default_firmware.display().to_string());
                push("-bios", firmware);
            }
        }
        for disk in &spec.disks {
            push(
                "-drive",
                format!(
                    "file={},if=none,id=drive-{},format=raw,readonly={}",
                    disk.path,
                    disk.id,
                    if disk.read_only { "on" } else { "off" }
                ),
            );
            push(
                "-device",
                format!("virtio-blk-pci,drive=drive-{0},id=disk-{0}", disk.id),
            );
        }
        if let Some(cidata) = request.cidata {
            push(
                "-drive",
                format!(
                    "file={},if=none,id=drive-cidata,format=raw,readonly=on",
                    cidata.display()
                ),
            );
            push(
                "-device",
                "virtio-blk-pci,drive=drive-cidata,id=disk-cidata".into(),
            );
        }
        if spec.vsock.is_some() {
            push(
                "-chardev",
                format!(
                    "socket,id=vsock0,path={}",
                    run.vhost_vsock_socket().display()
                ),
            );
            push(
                "-device",
                "vhost-user-vsock-pci,chardev=vsock0,id=vsock0".into(),
            );
        }
        for nic in &spec.nics {
            push(
                "-netdev",
                format!(
                    "tap,id=netdev-{},ifname={},script=no,downscript=no",
                    nic.id, nic.tap
                ),
            );
            push(
                "-device",
                format!(
                    "virtio-net-pci,netdev=netdev-{0},id=nic-{0},mac={1}",
                    nic.id, nic.mac
                ),
            );
        }
        args
    }
}

impl QemuDriver {
    async fn launch_qemu(
        &self,
        request: &LaunchRequest<'_>,
        sockets: [std::os::fd::OwnedFd; 2],
    ) -> Result<Launched, HypervisorError> {
        self.launch_qemu_with(request, sockets, Vec::new()).await
    }

    async fn launch_qemu_with(
        &self,
        request: &LaunchRequest<'_>,
        sockets: [std::os::fd::OwnedFd; 2],
        extra_args: Vec<String>,
    ) -> Result<Launched, HypervisorError> {
        let run = request.run;
        let mut args = self.command_line(request);
        args.extend(extra_args);
        let program = self.config.binary.display().to_string();
        let mut child = spawn_hypervisor(&self.config.binary, &args, run, &sockets)?;
        drop(sockets);
        let pid = child.id().unwrap_or(0);
        let status = until_ready(
            &program,
            &mut child,
            run,
            self.config.start_timeout,
            qmp::execute(&run.control_socket(), "query-status", None),
        )
        .await?;
        tracing::debug!(vm = request.vm_id, %status, "qemu started");
        let identity = crate::process::identity(pid).ok_or_else(|| HypervisorError::EarlyExit {
            program: program.clone(),
            status: "gone right after start".into(),
            log: run.hypervisor_log_tail(2000),
        })?;
        Ok(Launched {
            identity: ProcessIdentity {
                pid: identity.pid,
                start_time: identity.start_time,
            },
            child: Some(child),
        })
    }

    /// Starts the pod's vhost-device-vsock (one per pod; it serves the hybrid vsock socket and
    /// the vhost-user socket QEMU connects to) and waits until it listens. It names the run
    /// directory in its arguments, which is how it is found again after a daemon restart and
    /// killed once QEMU is gone ([`Hypervisor::owns_backend`]).
    async fn start_vsock_backend(
        &self,
        run: &RunDir,
        cid: u32,
    ) -> Result<tokio::process::Child, HypervisorError> {
        let socket = run.vhost_vsock_socket();
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(run.vsock_socket());
        let args = vec![
            "--guest-cid".to_string(),
            cid.to_string(),
            "--socket".to_string(),
            socket.display().to_string(),
            "--uds-path".to_string(),
            run.vsock_socket().display().to_string(),
        ];
        let program = self.config.vhost_vsock_binary.display().to_string();
        let mut child = spawn_detached(
            &self.config.vhost_vsock_binary,
            &args,
            &run.vsock_backend_log(),
            &[],
        )?;
        // vhost-device-vsock cannot take a listening fd: its socket appears once it listens.
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        while !socket.exists() {
            if tokio::time::Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(HypervisorError::StartTimeout {
                    program,
                    timeout: self.config.start_timeout,
                    log: super::tail(&run.vsock_backend_log(), 2000),
                });
            }
            tokio::select! {
                status = child.wait() => {
                    return Err(HypervisorError::EarlyExit {
                        program,
                        status: status?.to_string(),
                        log: super::tail(&run.vsock_backend_log(), 2000),
                    });
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        // Once QEMU runs, the backend lives as long as it (it outlives the daemon like the
        // hypervisor; dropping the handle leaves it to tokio's orphan reaping) and is killed when
        // the microVM is gone (`Hypervisor::owns_backend`).
        Ok(child)
    }
}

/// QEMU's `query-migrate` answer, reduced. `setup`, `active`, `pre-switchover`, `device` and
/// the postcopy states count as active; `cancelling` too (it is not over yet).
pub fn migration_stats(info: &serde_json::Value) -> MigrationStats {
    let u =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let status = match info.get("status").and_then(serde_json::Value::as_str) {
        None => MigrationStatus::None,
        Some("completed") => MigrationStatus::Completed,
        Some("failed") => MigrationStatus::Failed,
        Some("cancelled") => MigrationStatus::Cancelled,
        Some("none") => MigrationStatus::None,
        Some(_) => MigrationStatus::Active,
    };
    let ram = info.get("ram").cloned().unwrap_or_default();
    let disk = info.get("disk").cloned().unwrap_or_default();
    MigrationStats {
        status,
        transferred_bytes: u(&ram, "transferred") + u(&disk, "transferred"),
        remaining_bytes: u(&ram, "remaining") + u(&disk, "remaining"),
        total_bytes: u(&ram, "total") + u(&disk, "total"),
        disk_transferred_bytes: u(&disk, "transferred"),
        downtime_ms: u(info, "downtime"),
        total_time_ms: u(info, "total-time"),
        error: info
            .get("error-desc")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string(),
    }
}

/// How long a migration follower keeps its QMP connection before giving other clients their
/// turn (see `watch_migration`).
const QMP_HOLD: Duration = Duration::from_millis(500);

async fn watch_migration_on(
    run: &RunDir,
    watch: &mut MigrationWatch,
) -> Result<MigrationStats, HypervisorError> {
    if let Some((_, since)) = &watch.session {
        if since.elapsed() >= QMP_HOLD {
            watch.close();
            // Let a client queued behind this connection take its turn first.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (session, since) = match &mut watch.session {
        Some((session, since)) => (session, *since),
        None => {
            let session = qmp::Session::connect(&run.control_socket()).await?;
            let (session, _) = watch.session.insert((session, tokio::time::Instant::now()));
            return settled_stats(session).await;
        }
    };
    // Progress every 50 ms as before (cheap on an open connection), a state change at once.
    let left = QMP_HOLD
        .saturating_sub(since.elapsed())
        .min(super::MIGRATION_POLL);
    session.wait_event("MIGRATION", |_| true, left).await?;
    settled_stats(session).await
}

/// `query-migrate` on `session`. QEMU announces `completed` a moment before it computed the
/// total time and downtime (both still 0): asked right after the event, it is asked again.
async fn settled_stats(session: &mut qmp::Session) -> Result<MigrationStats, HypervisorError> {
    let mut tries = 0;
    loop {
        let stats = migration_stats(&session.execute("query-migrate", None).await?);
        if stats.status != MigrationStatus::Completed || stats.total_time_ms > 0 || tries >= 50 {
            return Ok(stats);
        }
        tries += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Where systemd mounts the default-size hugetlbfs.
const DEFAULT_HUGETLBFS: &str = "/dev/hugepages";

/// The hugetlbfs mount QEMU backs guest memory with: `/dev/hugepages` when it is one, else the
/// first hugetlbfs of the default page size in `/proc/mounts`.
fn hugetlbfs_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let default_size = crate::sysinfo::meminfo()
        .get("Hugepagesize")
        .copied()
        .unwrap_or(2048);
    let candidates: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (mountpoint, fstype, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            if *fstype != "hugetlbfs" {
                return None;
            }
            let page_kib = options
                .split(',')
                .find_map(|o| o.strip_prefix("pagesize="))
                .map(parse_page_size)
                .unwrap_or(Some(default_size))?;
            (page_kib == default_size).then(|| PathBuf::from(mountpoint))
        })
        .collect();
    candidates
        .iter()
        .find(|p| p.as_path() == Path::new(DEFAULT_HUGETLBFS))
        .or_else(|| candidates.first())
        .cloned()
}

/// `2M`, `1G`, `2048k` → KiB.
fn parse_page_size(text: &str) -> Option<u64> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = digits.parse().ok()?;
    match unit.to_ascii_uppercase().as_str() {
        "K" => Some(n),
        "M" => Some(n * 1024),
        "G" => Some(n * 1024 * 1024),
        _ => None,
    }
}

/// Refuses a VM whose spec asks for what this host cannot give, so that a VM never runs
/// silently without it: hugepages need a hugetlbfs mount with enough free pages, nested
/// virtualization needs KVM (`kvm` says whether the driver uses it) with the vendor module's
/// `nested` parameter on. Both drivers call it before they start a hypervisor.
pub(super) fn check_host(spec: &VmSpec, kvm: bool) -> Result<(), HypervisorError> {
    if spec.nested_virtualization {
        if !kvm {
            return Err(HypervisorError::HostLacks(
                "nested virtualization needs KVM, but this mvirt-vmm runs QEMU with TCG \
                 (see --qemu-accel)"
                    .into(),
            ));
        }
        if !kvm_nested_enabled() {
            return Err(HypervisorError::HostLacks(
                "nested virtualization asked for, but the kvm_intel/kvm_amd module has \
                 nested=N"
                    .into(),
            ));
        }
    }
    if spec.hugepages {
        if hugetlbfs_mount().is_none() {
            return Err(HypervisorError::HostLacks(format!(
                "hugepages asked for, but no hugetlbfs is mounted (expected at \
                 {DEFAULT_HUGETLBFS})"
            )));
        }
        let info = crate::sysinfo::meminfo();
        let free = info.get("HugePages_Free").copied().unwrap_or(0);
        let page_kib = info.get("Hugepagesize").copied().unwrap_or(2048).max(1);
        let needed = (spec.memory_mib * 1024).div_ceil(page_kib);
        if free < needed {
            return Err(HypervisorError::HostLacks(format!(
                "hugepages asked for: the guest's {} MiB need {needed} free pages of {page_kib} \
                 KiB, the host has {free} (vm.nr_hugepages)",
                spec.memory_mib
            )));
        }
    }
    Ok(())
}

/// Whether the loaded KVM vendor module lets guests run their own hypervisor.
fn kvm_nested_enabled() -> bool {
    ["kvm_intel", "kvm_amd"].iter().any(|module| {
        std::fs::read_to_string(format!("/sys/module/{module}/parameters/nested"))
            .map(|v| matches!(v.trim(), "Y" | "y" | "1"))
            .unwrap_or(false)
    })
}

#[async_trait]
impl Hypervisor for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn binary(&self) -> &Path {
        &self.config.binary
    }

    fn owns_backend(&self, run: &RunDir, cmdline: &[String]) -> bool {
        names_run_dir(&self.config.vhost_vsock_binary, run, cmdline)
    }

    async fn launch(&self, request: &LaunchRequest<'_>) -> Result<Launched, HypervisorError> {
        check_host(request.spec, self.use_kvm)?;
        let run = request.run;
        let sockets = [
            listen_socket(&run.control_socket())?,
            listen_socket(&run.console_socket())?,
        ];
        let backend = match request.spec.vsock {
            Some(vsock) => Some(self.start_vsock_backend(run, vsock.cid).await?),
            None => None,
        };
        let launched = self.launch_qemu(request, sockets).await;
        if let (Err(_), Some(mut backend)) = (&launched, backend) {
            // Without its QEMU the backend serves nothing.
            let _ = backend.start_kill();
            let _ = backend.wait().await;
        }
        launched
    }

    async fn launch_incoming(
        &self,
        request: &LaunchRequest<'_>,
        socket: &Path,
    ) -> Result<Launched, HypervisorError> {
        check_host(request.spec, self.use_kvm)?;
        if request.spec.vsock.is_some() {
            return Err(HypervisorError::Unsupported {
                driver: "qemu",
                what: "live migration of a pod microVM (its vhost-user vsock backend)".into(),
            });
        }
        let run = request.run;
        let _ = std::fs::remove_file(socket);
        let sockets = [
            listen_socket(&run.control_socket())?,
            listen_socket(&run.console_socket())?,
        ];
        // `-S`: the guest stays paused after the state arrived, until `resume` (`cont`), so
        // it never runs before the source is known to have stopped for good.
        let extra = vec![
            "-incoming".to_string(),
            format!("unix:{}", socket.display()),
            "-S".to_string(),
        ];
        self.launch_qemu_with(request, sockets, extra).await
    }

    async fn migrate_out(
        &self,
        run: &RunDir,
        destination: &Path,
        with_disks: bool,
        max_downtime: Duration,
    ) -> Result<(), HypervisorError> {
        let mut session = qmp::Session::connect(&run.control_socket()).await?;
        // `block`: the disks travel in the same stream (QEMU's block migration: a bulk copy
        // while the guest runs, dirty blocks re-sent, the rest during the final pause), onto
        // same-sized images the target opened.
        session
            .execute(
                "migrate-set-capabilities",
                Some(json!({"capabilities": [
                    {"capability": "block", "state": with_disks},
                    {"capability": "zero-blocks", "state": with_disks},
                    // `MIGRATION` events on every state change: the follower reacts to the
                    // completion at once instead of polling (see `watch_migration`).
                    {"capability": "events", "state": true},
                ]})),
            )
            .await?;
        session
            .execute(
                "migrate-set-parameters",
                Some(json!({
                    "downtime-limit": max_downtime.as_millis() as u64,
                    // QEMU's default cap is 32 MiB/s (and 0 means almost nothing, not
                    // unlimited): 10 GiB/s leaves the pace to the relay's flow control.
                    "max-bandwidth": MIGRATION_MAX_BANDWIDTH,
                })),
            )
            .await?;
        session
            .execute(
                "migrate",
                Some(json!({"uri": format!("unix:{}", destination.display())})),
            )
            .await?;
        Ok(())
    }

    async fn migration_progress(&self, run: &RunDir) -> Result<MigrationStats, HypervisorError> {
        let info = qmp::execute(&run.control_socket(), "query-migrate", None).await?;
        Ok(migration_stats(&info))
    }

    /// One QMP connection waits for `MIGRATION` events (state changes: setup, active,
    /// device, completed, failed, cancelled) and asks `query-migrate` on the same connection
    /// after each, or after 50 ms without one. QEMU serves one QMP client at a time, so the
    /// connection is closed after [`QMP_HOLD`] and opened again (a cancel, stop or delete
    /// waits at most that long for its turn); the first `query-migrate` on a new connection
    /// catches a change that happened while none was open.
    async fn watch_migration(
        &self,
        run: &RunDir,
        watch: &mut MigrationWatch,
    ) -> Result<MigrationStats, HypervisorError> {
        let result = watch_migration_on(run, watch).await;
        if result.is_err() {
            watch.close();
        }
        result
    }

    async fn cancel_migration(&self, run: &RunDir) -> Result<(), HypervisorError> {
        let socket = run.control_socket();
        let _ = qmp::execute(&socket, "migrate_cancel", None).await;
        // migrate_cancel is asynchronous: wait until QEMU left the migration states before
        // letting the guest run again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.migration_progress(run).await?;
            if stats.status != MigrationStatus::Active || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.resume(run).await
    }

    async fn resume(&self, run: &RunDir) -> Result<(), HypervisorError> {
        let socket = run.control_socket();
        let status = qmp::execute(&socket, "query-status", None).await?;
        if status.get("running").and_then(serde_json::Value::as_bool) == Some(true) {
            return Ok(());
        }
        qmp::execute(&socket, "cont", None).await?;
        Ok(())
    }

    async fn power_button(&self, run: &RunDir) -> Result<(), HypervisorError> {
        qmp::execute(&run.control_socket(), "system_powerdown", None).await?;
        Ok(())
    }

    async fn hard_stop(&self, run: &RunDir) -> Result<(), HypervisorError> {
        qmp::execute(&run.control_socket(), "quit", None).await?;
        Ok(())
    }

    async fn ping(&self, run: &RunDir) -> Result<(), HypervisorError> {
        qmp::execute(&run.control_socket(), "query-status", None).await?;
        Ok(())
    }

    async fn add_disk(&self, run: &RunDir, disk: &DiskSpec) -> Result<(), HypervisorError> {
        let socket = run.control_socket();
        // A node left by an earlier hot-unplug of the same disk (QEMU keeps blockdev-add'ed
        // nodes after device_del) would block the name: drop it if nothing uses it any more.
        let _ = qmp::execute(
            &socket,
            "blockdev-del",
            Some(json!({"node-name": block_node(&disk.id)})),
        )
        .await;
        qmp::execute(
            &socket,
            "blockdev-add",
            Some(json!({
                "driver": "raw",
                "node-name": block_node(&disk.id),
                "read-only": disk.read_only,
                "file": {"driver": "file", "filename": disk.path},
            })),
        )
        .await?;
        let added = qmp::execute(
            &socket,
            "device_add",
            Some(json!({
                "driver": "virtio-blk-pci",
                "id": format!("disk-{}", disk.id),
                "drive": block_node(&disk.id),
            })),
        )
        .await;
        if let Err(err) = added {
            let _ = qmp::execute(
                &socket,
                "blockdev-del",
                Some(json!({"node-name": block_node(&disk.id)})),
            )
            .await;
            return Err(err);
        }
        Ok(())
    }

    async fn add_nic(&self, run: &RunDir, nic: &NicSpec) -> Result<(), HypervisorError> {
        let socket = run.control_socket();
        // Same for a netdev left by an earlier unplug.
        let _ = qmp::execute(
            &socket,
            "netdev_del",
            Some(json!({"id": format!("netdev-{}", nic.id)})),
        )
        .await;
        qmp::execute(
            &socket,
            "netdev_add",
            Some(json!({
                "type": "tap",
                "id": format!("netdev-{}", nic.id),
                "ifname": nic.tap,
                "script": "no",
                "downscript": "no",
            })),
        )
        .await?;
        let added = qmp::execute(
            &socket,
            "device_add",
            Some(json!({
                "driver": "virtio-net-pci",
                "id": format!("nic-{}", nic.id),
                "netdev": format!("netdev-{}", nic.id),
                "mac": nic.mac,
            })),
        )
        .await;
        if let Err(err) = added {
            let _ = qmp::execute(
                &socket,
                "netdev_del",
                Some(json!({"id": format!("netdev-{}", nic.id)})),
            )
            .await;
            return Err(err);
        }
        Ok(())
    }

    async fn remove_disk(&self, run: &RunDir, disk_id: &str) -> Result<(), HypervisorError> {
        // device_del asks the guest to eject; QEMU reports DEVICE_DELETED once it has. Then the
        // backing node can go (disks attached at boot with -drive go with the device, so that
        // blockdev-del fails harmlessly). A guest slower than the wait keeps the node until the
        // next attach of the same id or the VM's end.
        let device = format!("disk-{disk_id}");
        let mut session = qmp::Session::connect(&run.control_socket()).await?;
        session
            .execute("device_del", Some(json!({ "id": device })))
            .await?;
        let deleted = session
            .wait_event(
                "DEVICE_DELETED",
                |data| data.get("device").and_then(|d| d.as_str()) == Some(device.as_str()),
                UNPLUG_WAIT,
            )
            .await?;
        if deleted {
            let _ = session
                .execute(
                    "blockdev-del",
                    Some(json!({"node-name": block_node(disk_id)})),
                )
                .await;
        } else {
            tracing::warn!(disk = disk_id, "guest has not released the disk yet");
        }
        Ok(())
    }

    async fn remove_nic(&self, run: &RunDir, nic_id: &str) -> Result<(), HypervisorError> {
        let device = format!("nic-{nic_id}");
        let mut session = qmp::Session::connect(&run.control_socket()).await?;
        session
            .execute("device_del", Some(json!({ "id": device })))
            .await?;
        let deleted = session
            .wait_event(
                "DEVICE_DELETED",
                |data| data.get("device").and_then(|d| d.as_str()) == Some(device.as_str()),
                UNPLUG_WAIT,
            )
            .await?;
        if !deleted {
            tracing::warn!(nic = nic_id, "guest has not released the NIC yet");
        }
        if let Err(err) = session
            .execute(
                "netdev_del",
                Some(json!({"id": format!("netdev-{nic_id}")})),
            )
            .await
        {
            tracing::warn!(nic = nic_id, error = %err, "netdev_del after device_del failed");
        }
        Ok(())
    }

    async fn resize(
        &self,
        _run: &RunDir,
        _vcpus: Option<u32>,
        _memory_mib: Option<u64>,
    ) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported {
            driver: "qemu",
            what: "vCPU/memory resize of a running VM".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BootSource, VsockSpec};

    #[test]
    fn a_pod_microvm_gets_shared_memory_and_a_vhost_user_vsock_device() {
        let driver = QemuDriver::new(QemuConfig {
            accel: Accel::Tcg,
            ..QemuConfig::default()
        });
        let run = RunDir::new(PathBuf::from("/var/lib/mvirt/vmm/run/id"));
        let spec = VmSpec {
            name: "pod-web".into(),
            vcpus: 1,
            memory_mib: 512,
            boot: BootSource::Kernel {
                kernel: "/k/vmlinuz".into(),
                initramfs: Some("/k/initramfs.img".into()),
                cmdline: "console=ttyS0 mvirt.ready_port=1025".into(),
            },
            disks: vec![],
            nics: vec![],
            cloud_init: None,
            hugepages: false,
            nested_virtualization: false,
            labels: Default::default(),
            vsock: Some(VsockSpec { cid: 3 }),
        };
        let request = LaunchRequest {
            vm_id: "id",
            spec: &spec,
            run: &run,
            cidata: None,
        };
        let args = driver.command_line(&request).join(" ");
        assert!(
            args.contains(
                "-object memory-backend-memfd,id=mem0,size=512M,share=on -numa node,memdev=mem0"
            ),
            "{args}"
        );
        assert!(
            args.contains(
                "-chardev socket,id=vsock0,path=/var/lib/mvirt/vmm/run/id/vhost-vsock.sock"
            ),
            "{args}"
        );
        assert!(
            args.contains("-device vhost-user-vsock-pci,chardev=vsock0"),
            "{args}"
        );
        let plain = VmSpec {
            vsock: None,
            ..spec.clone()
        };
        let request = LaunchRequest {
            spec: &plain,
            ..request
        };
        let args = driver.command_line(&request).join(" ");
        assert!(!args.contains("vsock") && !args.contains("memfd"), "{args}");
        // The backend is recognised by its program and the run directory it names.
        let cmd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(driver.owns_backend(
            &run,
            &cmd(&[
                "/root/.cargo/bin/vhost-device-vsock",
                "--socket",
                "/var/lib/mvirt/vmm/run/id/vhost-vsock.sock"
            ])
        ));
        assert!(!driver.owns_backend(
            &run,
            &cmd(&[
                "vhost-device-vsock",
                "--socket",
                "/var/lib/mvirt/vmm/run/other/vhost-vsock.sock"
            ])
        ));
    }
}
