//! `mvirt-vmm`: flags, tracing, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mvirt_common::daemon::{DaemonArgs, DaemonSpec};
use mvirt_vmm::hypervisor::qemu::Accel;
use mvirt_vmm::hypervisor::HypervisorChoice;
use mvirt_vmm::vmm::VmmConfig;

/// mvirt's local hypervisor daemon: runs VMs on this host with cloud-hypervisor or QEMU,
/// serves their serial consoles, writes cloud-init seeds, and keeps their state in SQLite.
/// Restarting it never stops a running guest: running VMs are adopted at start.
#[derive(Parser, Debug)]
#[command(name = "mvirt-vmm", version)]
struct Flags {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Kernel, initramfs, firmware and disk paths must be inside one of these (repeatable or
    /// comma-separated). The data dir is always allowed.
    #[arg(
        long = "allowed-dir",
        value_delimiter = ',',
        default_value = "/var/lib/mvirt"
    )]
    allowed_dirs: Vec<PathBuf>,
    /// Hypervisor driver: auto (cloud-hypervisor when its binary and a usable KVM exist, else
    /// QEMU), cloud-hypervisor or qemu.
    #[arg(long, default_value = "auto")]
    hypervisor: HypervisorChoice,
    /// cloud-hypervisor binary.
    #[arg(long, default_value = "cloud-hypervisor")]
    cloud_hypervisor_binary: PathBuf,
    /// UEFI firmware for cloud-hypervisor VMs that boot from disk without naming one.
    #[arg(long, default_value = "/usr/share/cloud-hypervisor/CLOUDHV.fd")]
    cloud_hypervisor_firmware: PathBuf,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu_binary: PathBuf,
    /// QEMU accelerator: auto (KVM when /dev/kvm answers), kvm or tcg.
    #[arg(long, default_value = "auto")]
    qemu_accel: Accel,
    /// TCG translation cache per VM, MiB.
    #[arg(long, default_value_t = 64)]
    qemu_tb_size_mib: u32,
    /// UEFI firmware for QEMU VMs that boot from disk without naming one.
    #[arg(long, default_value = "/usr/share/ovmf/OVMF.fd")]
    qemu_firmware: PathBuf,
    /// mvirt-log endpoint for audit entries: `unix:/path` or `http://host:port` (empty:
    /// tracing only).
    #[arg(long, default_value = "unix:/run/mvirt/log.sock")]
    log_endpoint: String,
    /// Seconds StopVm waits for the guest to power off before a hard stop, when the request
    /// does not say.
    #[arg(long, default_value_t = 30)]
    stop_timeout: u64,
    /// Pod boot artefacts (mvirt-pod-image's vmlinuz, initramfs.img, manifest.json).
    #[arg(long, default_value = "/var/lib/mvirt/pod-artefacts")]
    pod_artefacts: PathBuf,
    /// vhost-user vsock backend run beside each QEMU pod microVM (a name is looked up in PATH).
    #[arg(long, default_value = "vhost-device-vsock")]
    vhost_device_vsock_binary: PathBuf,
    /// Seconds a pod start waits for mvirt-one's readiness connection.
    #[arg(long, default_value_t = 120)]
    pod_ready_timeout: u64,
    /// Extra kernel command-line words for pod microVMs (e.g. `tsc_early_khz=2100000`).
    #[arg(long, value_delimiter = ' ')]
    pod_kernel_args: Vec<String>,
    /// Registries (`host:port`) pods may pull from over plain HTTP (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pod_insecure_registries: Vec<String>,
}

const DAEMON: DaemonSpec = DaemonSpec {
    name: "mvirt-vmm",
    env_prefix: "MVIRT_VMM",
    listen: Some("/run/mvirt/vmm.sock"),
    data_dir: "/var/lib/mvirt/vmm",
    data_dir_help: "Directory for the database, per-VM sockets, console logs and cloud-init seeds.",
    log_filter: "info",
    metrics_listen: Some("127.0.0.1:50061"),
};

fn main() -> ExitCode {
    let flags: Flags = DAEMON.parse();
    let mut config = VmmConfig::new(flags.daemon.common.data_dir.clone());
    config.allowed_dirs.extend(flags.allowed_dirs);
    config.hypervisor = flags.hypervisor;
    config.cloud_hypervisor.binary = flags.cloud_hypervisor_binary;
    config.cloud_hypervisor.default_firmware = flags.cloud_hypervisor_firmware;
    config.qemu.binary = flags.qemu_binary;
    config.qemu.accel = flags.qemu_accel;
    config.qemu.tcg_tb_size_mib = flags.qemu_tb_size_mib;
    config.qemu.default_firmware = flags.qemu_firmware;
    config.log_endpoint = flags.log_endpoint;
    config.default_stop_timeout = Duration::from_secs(flags.stop_timeout);
    config.qemu.vhost_vsock_binary = flags.vhost_device_vsock_binary;
    config.pod.artefacts_dir = flags.pod_artefacts;
    config.pod.ready_timeout = Duration::from_secs(flags.pod_ready_timeout);
    config.pod.kernel_args = flags.pod_kernel_args;
    config.pod.insecure_registries = flags.pod_insecure_registries;
    DAEMON.serve(&flags.daemon, |listener, shutdown| {
        mvirt_vmm::serve(config, listener, shutdown)
    })
}
