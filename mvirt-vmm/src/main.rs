//! `mvirt-vmm`: flags, tracing, run.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mvirt_common::listen::{Listen, ListenAddr, SocketOptions};
use mvirt_vmm::hypervisor::qemu::Accel;
use mvirt_vmm::hypervisor::HypervisorChoice;
use mvirt_vmm::vmm::VmmConfig;

/// mvirt's local hypervisor daemon: runs VMs on this host with cloud-hypervisor or QEMU,
/// serves their serial consoles, writes cloud-init seeds, and keeps their state in SQLite.
/// Restarting it never stops a running guest: running VMs are adopted at start.
#[derive(Parser, Debug)]
#[command(name = "mvirt-vmm", version)]
struct Flags {
    /// gRPC listen address of VmService: a unix socket (`/path` or `unix:/path`; mode 0600, see
    /// --socket-group) or, only with --allow-tcp, a TCP host:port.
    #[arg(long, env = "MVIRT_VMM_LISTEN", default_value = "/run/mvirt/vmm.sock")]
    listen: ListenAddr,
    /// Allow --listen to be a TCP address. TCP has no access control: every local user (and
    /// anyone who reaches the address) can call this daemon. For development only.
    #[arg(long, env = "MVIRT_VMM_ALLOW_TCP")]
    allow_tcp: bool,
    /// Give the unix socket this group and mode 0660 (default: mode 0600, only the daemon's
    /// user and root may connect).
    #[arg(long, env = "MVIRT_VMM_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// Directory for the database, per-VM sockets, console logs and cloud-init seeds.
    #[arg(long, env = "MVIRT_VMM_DATA_DIR", default_value = "/var/lib/mvirt/vmm")]
    data_dir: PathBuf,
    /// Kernel, initramfs, firmware and disk paths must be inside one of these (repeatable or
    /// comma-separated). The data dir is always allowed.
    #[arg(
        long = "allowed-dir",
        env = "MVIRT_VMM_ALLOWED_DIRS",
        value_delimiter = ',',
        default_value = "/var/lib/mvirt"
    )]
    allowed_dirs: Vec<PathBuf>,
    /// Hypervisor driver: auto (cloud-hypervisor when its binary and a usable KVM exist, else
    /// QEMU), cloud-hypervisor or qemu.
    #[arg(long, env = "MVIRT_VMM_HYPERVISOR", default_value = "auto")]
    hypervisor: HypervisorChoice,
    /// cloud-hypervisor binary.
    #[arg(
        long,
        env = "MVIRT_VMM_CLOUD_HYPERVISOR_BINARY",
        default_value = "cloud-hypervisor"
    )]
    cloud_hypervisor_binary: PathBuf,
    /// UEFI firmware for cloud-hypervisor VMs that boot from disk without naming one.
    #[arg(
        long,
        env = "MVIRT_VMM_CLOUD_HYPERVISOR_FIRMWARE",
        default_value = "/usr/share/cloud-hypervisor/CLOUDHV.fd"
    )]
    cloud_hypervisor_firmware: PathBuf,
    /// QEMU binary.
    #[arg(
        long,
        env = "MVIRT_VMM_QEMU_BINARY",
        default_value = "qemu-system-x86_64"
    )]
    qemu_binary: PathBuf,
    /// QEMU accelerator: auto (KVM when /dev/kvm answers), kvm or tcg.
    #[arg(long, env = "MVIRT_VMM_QEMU_ACCEL", default_value = "auto")]
    qemu_accel: Accel,
    /// TCG translation cache per VM, MiB.
    #[arg(long, env = "MVIRT_VMM_QEMU_TB_SIZE_MIB", default_value_t = 64)]
    qemu_tb_size_mib: u32,
    /// UEFI firmware for QEMU VMs that boot from disk without naming one.
    #[arg(
        long,
        env = "MVIRT_VMM_QEMU_FIRMWARE",
        default_value = "/usr/share/ovmf/OVMF.fd"
    )]
    qemu_firmware: PathBuf,
    /// mvirt-log endpoint for audit entries: `unix:/path` or `http://host:port` (empty:
    /// tracing only).
    #[arg(
        long,
        env = "MVIRT_VMM_LOG_ENDPOINT",
        default_value = "unix:/run/mvirt/log.sock"
    )]
    log_endpoint: String,
    /// Seconds StopVm waits for the guest to power off before a hard stop, when the request
    /// does not say.
    #[arg(long, env = "MVIRT_VMM_STOP_TIMEOUT", default_value_t = 30)]
    stop_timeout: u64,
    /// The daemon's own log output: auto (text on a terminal, JSON otherwise), text or json.
    #[arg(long, env = "MVIRT_VMM_LOG_FORMAT", default_value = "auto", value_parser = ["auto", "text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let format = match flags.log_format.as_str() {
        "text" => mvirt_common::telemetry::LogFormat::Text,
        "json" => mvirt_common::telemetry::LogFormat::Json,
        _ => mvirt_common::telemetry::LogFormat::Auto,
    };
    mvirt_common::telemetry::init("mvirt-vmm", format);
    let mut config = VmmConfig::new(flags.data_dir.clone());
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

    let shutdown = match mvirt_common::Shutdown::on_signals() {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listen = Listen {
        addr: flags.listen.clone(),
        allow_tcp: flags.allow_tcp,
        socket: SocketOptions {
            group: flags.socket_group.clone(),
        },
    };
    let listener = match listen.bind().await {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(error = %mvirt_common::error::error_chain(&err), "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    match mvirt_vmm::serve(config, listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %mvirt_common::error::error_chain(&err), "mvirt-vmm failed");
            std::process::ExitCode::FAILURE
        }
    }
}
