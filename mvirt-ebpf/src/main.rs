//! `mvirt-ebpf`: flags, tracing, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mvirt_common::daemon::{DaemonArgs, DaemonSpec};
use mvirt_ebpf::responder::ControlRateLimit;

/// mvirt's networking daemon: manages networks, NICs (persistent TAP devices), security groups
/// and routes of this node, and runs the eBPF datapath that routes VM traffic within each
/// network, enforces security groups, answers ARP/DHCP/NDP as the gateway (169.254.0.1,
/// fe80::1) and SNATs public networks. Serves NetService over gRPC. Refuses to start if the
/// eBPF programs cannot be loaded (needs root).
#[derive(Parser, Debug)]
#[command(name = "mvirt-ebpf", version)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// bpffs directory where maps and links are pinned (kept across restarts).
    #[arg(long, default_value = "/sys/fs/bpf/mvirt-ebpf")]
    bpf_pin_dir: PathBuf,
    /// DHCP lease time in seconds.
    #[arg(long, default_value_t = 86400)]
    lease_secs: u32,
    /// MTU announced to guests by DHCP (option 26) and router advertisements; 0 = none. Use
    /// 1450 when routes carry networks between nodes (VXLAN adds 50 bytes).
    #[arg(long, default_value_t = 1450)]
    guest_mtu: u16,
    /// Idle time after which a tracked connection is forgotten, in seconds.
    #[arg(long, default_value_t = 600)]
    conntrack_timeout_secs: u64,
    /// Host uplink interface public networks are SNATed to (unset: no NAT).
    #[arg(long)]
    uplink: Option<String>,
    /// nftables table (family ip) owned by this daemon for SNAT.
    #[arg(long, default_value = "mvirt_ebpf")]
    nft_table: String,
    /// VXLAN (external/collect_md) device carrying routes to other nodes.
    #[arg(long, default_value = "mvvxlan0")]
    tunnel_device: String,
    /// UDP port of the VXLAN tunnel between nodes.
    #[arg(long, default_value_t = 4789)]
    tunnel_port: u16,
    /// mvirt-log endpoint for audit entries (empty: tracing only).
    #[arg(long, default_value = "unix:/run/mvirt/log.sock")]
    log_endpoint: String,
    /// Control frames (ARP, DHCP, DHCPv6, NDP, echo to the gateway) each NIC may send per
    /// second; more are dropped and counted, so one guest cannot starve the others. 0 = no limit.
    #[arg(long, default_value_t = ControlRateLimit::default().per_sec)]
    control_rate: u32,
    /// Control frames a NIC may send at once above `--control-rate` (the token bucket's size).
    #[arg(long, default_value_t = ControlRateLimit::default().burst)]
    control_burst: u32,
}

const DAEMON: DaemonSpec = DaemonSpec {
    name: "mvirt-ebpf",
    env_prefix: "MVIRT_EBPF",
    listen: Some("/run/mvirt/ebpf.sock"),
    data_dir: "/var/lib/mvirt/ebpf",
    data_dir_help: "Directory of the SQLite database.",
    log_filter: "info",
    metrics_listen: Some("127.0.0.1:50064"),
};

fn main() -> ExitCode {
    let args: Args = DAEMON.parse();
    let config = mvirt_ebpf::DaemonConfig {
        data_dir: args.daemon.common.data_dir.clone(),
        pin_dir: args.bpf_pin_dir,
        lease_secs: args.lease_secs,
        guest_mtu: args.guest_mtu,
        conntrack_timeout_secs: args.conntrack_timeout_secs,
        uplink: args.uplink,
        nft_table: args.nft_table,
        tunnel_device: args.tunnel_device,
        tunnel_port: args.tunnel_port,
        log_endpoint: args.log_endpoint,
        control_rate: ControlRateLimit {
            per_sec: args.control_rate,
            burst: args.control_burst,
        },
    };
    DAEMON.serve(&args.daemon, |listener, shutdown| async move {
        mvirt_ebpf::start(config, listener, shutdown)
            .await?
            .wait()
            .await
    })
}
