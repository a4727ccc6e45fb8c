//! `mvirt-api`: the mvirt control plane. Parses flags and runs the server from the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mvirt_api::scheduler::Strategy;
use mvirt_api::server::{self, ServerConfig};
use mvirt_common::daemon::{CommonArgs, DaemonSpec};

/// mimalloc instead of glibc's malloc: every write builds and drops many small JSON values and
/// maps on each member; with glibc, allocation (`malloc`, `free`, `malloc_consolidate`) was
/// about a third of the members' busy CPU in the write benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The mvirt control plane: holds the desired state of every VM, volume, network, NIC,
/// security group and template in a Raft-replicated SQLite store, serves it over REST (/v1)
/// and to node agents over NodeService gRPC, and schedules VMs onto nodes. The first start
/// on an empty data dir bootstraps a one-member cluster and writes an admin API token;
/// further members join with `--join <url> --token <join-token>`.
#[derive(Debug, Parser)]
#[command(name = "mvirt-api", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Without a command: run the member.
    #[command(subcommand)]
    tool: Option<Tool>,
    /// REST API listen address.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// NodeService gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:50056")]
    grpc_listen: SocketAddr,
    /// Raft (member-to-member) listen address.
    #[arg(long, default_value = "0.0.0.0:6001")]
    raft_listen: SocketAddr,
    /// Host name or IP other members and clients use to reach this member (default: the
    /// listen IP, or 127.0.0.1 when listening on all addresses).
    #[arg(long)]
    advertise_host: Option<String>,
    /// REST URL of an existing member to join (first start only).
    #[arg(long, requires = "join_token")]
    join: Option<String>,
    /// Join token from `POST /v1/controlplane/join-tokens` (visible in `ps`: prefer
    /// --token-file).
    #[arg(long, group = "join_token")]
    token: Option<String>,
    /// A file holding the join token; read only on the first start, when the member joins (it
    /// may be deleted afterwards).
    #[arg(long, group = "join_token")]
    token_file: Option<PathBuf>,
    /// A node whose heartbeats stop for this long becomes offline.
    #[arg(long, default_value_t = 15_000)]
    node_offline_after_ms: u64,
    /// HA: the agents' fencing time (must match mvirt-node's --ha-fencing-secs): an agent cut
    /// off from the API this long kills its HA VMs.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    ha_fencing_secs: u64,
    /// HA: how much longer than the fencing time a node must be silent before its HA VMs are
    /// restarted elsewhere.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    ha_margin_secs: u64,
    /// Placement strategy: spread or binpack.
    #[arg(long, default_value = "spread")]
    scheduler: Strategy,
    /// mvirt-log endpoint for audit entries and `GET /v1/logs` (empty: tracing only).
    #[arg(long, default_value = "unix:/run/mvirt/log.sock")]
    log_endpoint: String,
    /// Snapshot the state (and purge the Raft log before it) every this many entries. A
    /// snapshot encodes and writes the whole state (tens of MB with tens of thousands of VMs)
    /// on every member; fewer of them cost a larger log on disk (etcd's default is 100,000).
    #[arg(long, default_value_t = 50_000)]
    snapshot_every: u64,
    /// How long an `Idempotency-Key` is remembered; the leader prunes older records.
    #[arg(long, default_value_t = 86_400)]
    idempotency_retention_secs: u64,
    /// Directory of the built web UI (mvirt-ui), served at `/`.
    #[arg(long, default_value = mvirt_api::rest::ui::DEFAULT_UI_DIR)]
    ui_dir: PathBuf,
    /// Serve REST, NodeService and Raft WITHOUT TLS (logged as a warning). Every member of a
    /// cluster must agree; node agents and the CLI then use http:// URLs.
    #[arg(long)]
    insecure_plaintext: bool,
    /// With --join: the fingerprint of the cluster CA (sha256:<hex>, shown by the join-token
    /// response and GET /v1/controlplane) the member being joined must present.
    #[arg(long)]
    ca_fingerprint: Option<String>,
    /// With --join: the cluster CA certificate (a copy of a member's <data-dir>/tls/ca.pem).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Lifetime of issued certificates (e.g. 90d, 12h, 30s); renewed at 2/3 of it. For tests.
    #[arg(long, default_value = "90d", value_parser = parse_lifetime, hide = true)]
    cert_lifetime: Duration,
}

/// Control-plane backups (see docs/deploy.md, "Backups of the control plane").
#[derive(Debug, clap::Subcommand)]
enum Tool {
    /// Writes a consistent backup of this member's state (while it runs), with the cluster CA
    /// and the admin token, to a new file (mode 0600: keep it like a root password).
    Backup {
        /// The member's data directory [default: --data-dir].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The backup file to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Prepares a new data directory from a backup: the next start of mvirt-api on it runs a
    /// one-member cluster with the backup's state (after losing a majority of the members;
    /// further members join it as usual). Run it as the user mvirt-api runs as.
    Restore {
        /// The backup file (from `mvirt-api backup`).
        #[arg(long)]
        from: PathBuf,
        /// The data directory to create: absent or without mvirt-api files [default: --data-dir].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn run_tool(tool: Tool, default_data_dir: PathBuf) -> ExitCode {
    let (what, result) = match tool {
        Tool::Backup { data_dir, out } => {
            let data_dir = data_dir.unwrap_or(default_data_dir);
            let r = mvirt_api::backup::backup(&data_dir, &out).map(|info| {
                format!(
                    "backup of member {} at applied index {} written to {} (cluster CA: {}, admin token: {})",
                    info.member_id,
                    info.applied_index,
                    out.display(),
                    if info.has_ca { "included" } else { "none, plaintext cluster" },
                    if info.has_admin_token { "included" } else { "not on this member" },
                )
            });
            ("backup", r)
        }
        Tool::Restore { from, data_dir } => {
            let data_dir = data_dir.unwrap_or(default_data_dir);
            let r = mvirt_api::backup::restore(&from, &data_dir).map(|info| {
                format!(
                    "restored member {}'s backup (applied index {}) into {}: the next `mvirt-api --data-dir {}` runs a one-member cluster with this state; never start the old members again",
                    info.member_id,
                    info.applied_index,
                    data_dir.display(),
                    data_dir.display(),
                )
            });
            ("restore", r)
        }
    };
    match result {
        Ok(message) => {
            println!("mvirt-api {what}: {message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("mvirt-api {what}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `<n>` followed by s, m, h or d.
fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    if secs < 3 {
        return Err(format!("{s:?}: at least 3 seconds"));
    }
    Ok(Duration::from_secs(secs))
}

const DAEMON: DaemonSpec = DaemonSpec {
    name: "mvirt-api",
    env_prefix: "MVIRT_API",
    listen: None,
    data_dir: "/var/lib/mvirt/api",
    data_dir_help: "Data directory (Raft log, state, member identity, admin token).",
    // openraft logs every election step at INFO; keep the default output about mvirt.
    log_filter: "info,openraft=warn",
    metrics_listen: Some("127.0.0.1:50066"),
};

// mimalloc's C API (statically linked by the `mimalloc` crate); `mi_option_purge_delay` is
// option 15 in both mimalloc 2 and 3 (`mimalloc.h`, `mi_option_e`).
extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long mimalloc keeps freed pages before handing them back to the kernel: 10 s here
/// instead of its default of 1 s. Each write frees and soon re-uses buffers of the
/// same sizes; handing the pages back means an `madvise` now and a page fault plus a zeroed page
/// at the next use. The write benchmark measured 4–10 % less CPU per write with 10 s (mvirt-api
/// README, "mimalloc's purge delay"); the price is up to 10 s of freed memory held after a burst.
/// `MIMALLOC_PURGE_DELAY` in the environment (read by mimalloc itself) wins over this default.
fn allocator_purge_delay() -> i64 {
    // SAFETY: plain option setters/getters of the linked allocator, no pointers involved.
    unsafe {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            mi_option_set(MI_OPTION_PURGE_DELAY, 10_000);
        }
        mi_option_get(MI_OPTION_PURGE_DELAY) as i64
    }
}

fn main() -> ExitCode {
    // No transparent huge pages for this process: the allocator hands freed pages back to the
    // kernel and touches them again moments later, and with THP (`always` on many hosts,
    // Debian's default included) every such touch zeroed a whole 2 MiB page — 12 % of the
    // members' CPU in the write benchmark. Without THP only the 4 KiB pages used are zeroed.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("mvirt-api: cannot opt out of transparent huge pages (continuing): {e}");
    }
    let purge_delay = allocator_purge_delay();
    let args: Args = DAEMON.parse();
    if let Some(tool) = args.tool {
        return run_tool(tool, args.common.data_dir);
    }
    let config = ServerConfig {
        listen: args.listen,
        grpc_listen: args.grpc_listen,
        raft_listen: args.raft_listen,
        advertise_host: args.advertise_host,
        data_dir: args.common.data_dir.clone(),
        join: args.join,
        join_token: args.token,
        join_token_file: args.token_file,
        node_offline_after: Duration::from_millis(args.node_offline_after_ms),
        ha_lost_after: Duration::from_secs(args.ha_fencing_secs + args.ha_margin_secs),
        strategy: args.scheduler,
        log_endpoint: args.log_endpoint,
        snapshot_every: args.snapshot_every,
        idempotency_retention: Duration::from_secs(args.idempotency_retention_secs),
        ui_dir: Some(args.ui_dir),
        insecure_plaintext: args.insecure_plaintext,
        cert_lifetime: args.cert_lifetime,
        join_ca_fingerprint: args.ca_fingerprint,
        join_ca_file: args.ca_file,
    };
    DAEMON.run_daemon(&args.common, |shutdown| async move {
        tracing::info!(purge_delay_ms = purge_delay, "allocator: mimalloc");
        server::start(config, shutdown).await?.wait().await;
        Ok::<(), server::ServerError>(())
    })
}
