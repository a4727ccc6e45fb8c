//! `mvirt-ebpf`: flags, tracing, run.

use std::path::PathBuf;

use clap::Parser;
use mvirt_common::listen::{Listen, ListenAddr, SocketOptions};
use mvirt_common::telemetry::{self, LogFormat};
use mvirt_common::Shutdown;

/// mvirt's networking daemon: manages networks, NICs (persistent TAP devices), security groups
/// and routes of this node, and runs the eBPF datapath that routes VM traffic within each
/// network, enforces security groups, answers ARP/DHCP/NDP as the gateway (169.254.0.1,
/// fe80::1) and SNATs public networks. Serves NetService over gRPC. Refuses to start if the
/// eBPF programs cannot be loaded (needs root).
#[derive(Parser, Debug)]
#[command(name = "mvirt-ebpf", version)]
struct Args {
    /// gRPC listen address: a unix socket (`/path` or `unix:/path`; mode 0600, see
    /// --socket-group) or, only with --allow-tcp, a TCP host:port.
    #[arg(
        long,
        env = "MVIRT_EBPF_LISTEN",
        default_value = "/run/mvirt/ebpf.sock"
    )]
    listen: ListenAddr,
    /// Allow --listen to be a TCP address. TCP has no access control: every local user (and
    /// anyone who reaches the address) can call this daemon. For development only.
    #[arg(long, env = "MVIRT_EBPF_ALLOW_TCP")]
    allow_tcp: bool,
    /// Give the unix socket this group and mode 0660 (default: mode 0600, only the daemon's
    /// user and root may connect).
    #[arg(long, env = "MVIRT_EBPF_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// Directory of the SQLite database.
    #[arg(
        long,
        env = "MVIRT_EBPF_DATA_DIR",
        default_value = "/var/lib/mvirt/ebpf"
    )]
    data_dir: PathBuf,
    /// bpffs directory where maps and links are pinned (kept across restarts).
    #[arg(
        long,
        env = "MVIRT_EBPF_BPF_PIN_DIR",
        default_value = "/sys/fs/bpf/mvirt-ebpf"
    )]
    bpf_pin_dir: PathBuf,
    /// DHCP lease time in seconds.
    #[arg(long, env = "MVIRT_EBPF_LEASE_SECS", default_value_t = 86400)]
    lease_secs: u32,
    /// MTU announced to guests by DHCP (option 26) and router advertisements; 0 = none. Use
    /// 1450 when routes carry networks between nodes (VXLAN adds 50 bytes).
    #[arg(long, env = "MVIRT_EBPF_GUEST_MTU", default_value_t = 1450)]
    guest_mtu: u16,
    /// Idle time after which a tracked connection is forgotten, in seconds.
    #[arg(long, env = "MVIRT_EBPF_CONNTRACK_TIMEOUT_SECS", default_value_t = 600)]
    conntrack_timeout_secs: u64,
    /// Host uplink interface public networks are SNATed to (unset: no NAT).
    #[arg(long, env = "MVIRT_EBPF_UPLINK")]
    uplink: Option<String>,
    /// nftables table (family ip) owned by this daemon for SNAT.
    #[arg(long, env = "MVIRT_EBPF_NFT_TABLE", default_value = "mvirt_ebpf")]
    nft_table: String,
    /// VXLAN (external/collect_md) device carrying routes to other nodes.
    #[arg(long, env = "MVIRT_EBPF_TUNNEL_DEVICE", default_value = "mvvxlan0")]
    tunnel_device: String,
    /// UDP port of the VXLAN tunnel between nodes.
    #[arg(long, env = "MVIRT_EBPF_TUNNEL_PORT", default_value_t = 4789)]
    tunnel_port: u16,
    /// mvirt-log endpoint for audit entries (empty: tracing only).
    #[arg(
        long,
        env = "MVIRT_EBPF_LOG_ENDPOINT",
        default_value = "unix:/run/mvirt/log.sock"
    )]
    log_endpoint: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    telemetry::init("mvirt-ebpf", LogFormat::Auto);
    let shutdown = match Shutdown::on_signals() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = mvirt_ebpf::DaemonConfig {
        data_dir: args.data_dir,
        pin_dir: args.bpf_pin_dir,
        lease_secs: args.lease_secs,
        guest_mtu: args.guest_mtu,
        conntrack_timeout_secs: args.conntrack_timeout_secs,
        uplink: args.uplink,
        nft_table: args.nft_table,
        tunnel_device: args.tunnel_device,
        tunnel_port: args.tunnel_port,
        log_endpoint: args.log_endpoint,
    };
    let result = async {
        let listener = Listen {
            addr: args.listen.clone(),
            allow_tcp: args.allow_tcp,
            socket: SocketOptions {
                group: args.socket_group.clone(),
            },
        }
        .bind()
        .await
        .map_err(mvirt_ebpf::DaemonError::Serve)?;
        mvirt_ebpf::start(config, listener, shutdown)
            .await?
            .wait()
            .await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mvirt-ebpf: {}", mvirt_common::error::error_chain(&e));
            tracing::error!(error = %mvirt_common::error::error_chain(&e), "mvirt-ebpf failed");
            std::process::ExitCode::FAILURE
        }
    }
}
