//! `mvirt-node`: the node agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mvirt_common::daemon::{CommonArgs, DaemonSpec};
use mvirt_node::agent::{self, AgentConfig};
use mvirt_node::daemons::Endpoints;

/// mvirt's node agent. Registers this host with the control plane (mvirt-api), watches the
/// desired state of everything placed on it, and converges the local daemons (mvirt-ebpf
/// networks and NICs, mvirt-zfs templates and volumes, mvirt-vmm VMs) to it, reporting every
/// outcome back. Level-triggered: restarting it at any moment converges without duplicates.
#[derive(Debug, Parser)]
#[command(name = "mvirt-node", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// mvirt-api NodeService endpoint (https://; http:// only with --insecure-plaintext). The
    /// default reaches a member on this host at mvirt-api's default --grpc-listen
    /// (0.0.0.0:50056, IPv4).
    #[arg(long, default_value = "https://127.0.0.1:50056")]
    api: String,
    /// Trust this cluster CA certificate (PEM, e.g. a member's <data-dir>/tls/ca.pem) for the
    /// API and the NodeAgent's callers.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Trust the CA the API presents if its fingerprint is this (`sha256:<hex>`, shown by
    /// mvirt-api at start-up and by `token create`); fetched on the first start and pinned in
    /// <data-dir>/tls/ca.pem.
    #[arg(long)]
    ca_fingerprint: Option<String>,
    /// Plain gRPC to the API and on the console relay (the API must run with
    /// --insecure-plaintext too). No encryption, no certificates: development only; logged
    /// as a warning.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Node token (or admin token) for NodeService.
    #[arg(long, hide_env_values = true, default_value = "")]
    token: String,
    /// File holding the token (used when --token is empty).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// mvirt-vmm endpoint: its unix socket (`unix:/path`), or `http://host:port` if it listens
    /// on TCP.
    #[arg(long, default_value = "unix:/run/mvirt/vmm.sock")]
    vmm: String,
    /// mvirt-log endpoint (audit entries).
    #[arg(long, default_value = "unix:/run/mvirt/log.sock")]
    log: String,
    /// mvirt-zfs endpoint.
    #[arg(long, default_value = "unix:/run/mvirt/zfs.sock")]
    zfs: String,
    /// mvirt-ebpf endpoint.
    #[arg(long, default_value = "unix:/run/mvirt/ebpf.sock")]
    ebpf: String,
    /// Node name registered with the API (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Address the control plane and other nodes reach this host on.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Node labels, `key=value`, repeatable (used by node selectors).
    #[arg(long = "label", value_delimiter = ',')]
    labels: Vec<String>,
    /// UEFI firmware for VMs whose root volume carries no kernel.
    #[arg(long)]
    firmware: Option<String>,
    /// Seconds between full resyncs.
    #[arg(long, default_value_t = 30)]
    resync_secs: u64,
    /// Seconds a graceful VM stop waits before the hard stop.
    #[arg(long, default_value_t = 30)]
    stop_timeout_secs: u32,
    /// vCPU overcommit ratio: the node offers its host threads times this as vCPUs to the
    /// scheduler (1.0 = none; OpenStack's cpu_allocation_ratio defaults to 4.0). Memory is never
    /// overcommitted.
    #[arg(long, default_value_t = 1.0, value_parser = parse_overcommit)]
    cpu_overcommit: f64,
    /// HA fencing: without a successful heartbeat for this many seconds the agent kills its HA
    /// VMs (must match mvirt-api's --ha-fencing-secs).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    ha_fencing_secs: u64,
    /// Where the console relay (the API's path to VM consoles) listens; "off" disables it.
    #[arg(long, default_value = "0.0.0.0:50057")]
    console_listen: String,
    /// Console endpoint advertised to the API (default: https://<address>:<console port>, or
    /// http:// with --insecure-plaintext).
    #[arg(long, default_value = "")]
    console_endpoint: String,
    /// Deregister the node on a clean shutdown.
    #[arg(long)]
    deregister_on_shutdown: bool,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "node".into())
}

const DAEMON: DaemonSpec = DaemonSpec {
    name: "mvirt-node",
    env_prefix: "MVIRT_NODE",
    listen: None,
    data_dir: "/var/lib/mvirt/node",
    data_dir_help: "Directory for the agent's state (node id, owned objects).",
    log_filter: "info",
    metrics_listen: Some("127.0.0.1:50067"),
};

fn main() -> ExitCode {
    let args: Args = DAEMON.parse();
    let mut labels = HashMap::new();
    for label in &args.labels {
        match label.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_string(), v.to_string());
            }
            _ => {
                eprintln!("mvirt-node: --label {label:?} must be key=value");
                return ExitCode::from(2);
            }
        }
    }
    let mut token = args.token.clone();
    if token.is_empty() {
        if let Some(path) = &args.token_file {
            match std::fs::read_to_string(path) {
                Ok(t) => token = t.trim().to_string(),
                Err(err) => {
                    eprintln!(
                        "mvirt-node: cannot read token file {}: {err}",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
            }
        }
    }
    let console_listen = if args.console_listen == "off" {
        None
    } else {
        match args.console_listen.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                eprintln!(
                    "mvirt-node: --console-listen {:?} is not an address (or \"off\")",
                    args.console_listen
                );
                return ExitCode::from(2);
            }
        }
    };
    let config = AgentConfig {
        data_dir: args.common.data_dir.clone(),
        endpoints: Endpoints {
            api: args.api,
            vmm: args.vmm,
            zfs: args.zfs,
            ebpf: args.ebpf,
            log: args.log,
        },
        token,
        name: args.name.unwrap_or_else(host_name),
        address: args.address,
        labels,
        firmware: args.firmware,
        resync_interval: Duration::from_secs(args.resync_secs.max(1)),
        stop_timeout_secs: args.stop_timeout_secs,
        cpu_overcommit: args.cpu_overcommit,
        ha_fencing: Duration::from_secs(args.ha_fencing_secs),
        deregister_on_shutdown: args.deregister_on_shutdown,
        console_listen,
        console_endpoint: args.console_endpoint,
        tls: mvirt_node::tls::TlsOptions {
            insecure_plaintext: args.insecure_plaintext,
            ca_file: args.ca_file,
            ca_fingerprint: args.ca_fingerprint,
        },
    };
    DAEMON.run_daemon(&args.common, |shutdown| agent::run(config, shutdown))
}

/// `--cpu-overcommit`: a finite ratio from 1.0 to 64.0.
fn parse_overcommit(value: &str) -> Result<f64, String> {
    let ratio: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number (e.g. 1.0 or 4.0)"))?;
    if !(1.0..=64.0).contains(&ratio) {
        return Err(format!("{value} is outside 1.0 to 64.0"));
    }
    Ok(ratio)
}

#[cfg(test)]
mod tests {
    use super::parse_overcommit;

    #[test]
    fn cpu_overcommit_takes_ratios_from_one_to_sixty_four() {
        assert_eq!(parse_overcommit("1"), Ok(1.0));
        assert_eq!(parse_overcommit("4.0"), Ok(4.0));
        assert!(parse_overcommit("0.5")
            .unwrap_err()
            .contains("outside 1.0 to 64.0"));
        assert!(parse_overcommit("65").is_err());
        assert!(parse_overcommit("NaN").is_err());
        assert!(parse_overcommit("lots")
            .unwrap_err()
            .contains("not a number"));
    }
}
