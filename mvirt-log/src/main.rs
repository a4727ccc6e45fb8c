//! `mvirt-log`: the audit log daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mvirt_common::listen::{Listen, ListenAddr, SocketOptions};
use mvirt_common::telemetry::{self, LogFormat};
use mvirt_common::Shutdown;
use mvirt_log::retention::RetentionPolicy;
use mvirt_log::server::{self, Config};

/// mvirt's audit log. Every mvirt daemon records its state changes here with the ids of the
/// objects they concern; operators and the API query them by object, component, level, time
/// and text, and follow new entries live. Serves `mvirt.log.v1.LogService` and the standard
/// gRPC health service.
#[derive(Debug, Parser)]
#[command(name = "mvirt-log", version)]
struct Args {
    /// gRPC listen address: a unix socket (`/path` or `unix:/path`; mode 0600, see
    /// --socket-group) or, only with --allow-tcp, a TCP host:port.
    #[arg(long, env = "MVIRT_LOG_LISTEN", default_value = "/run/mvirt/log.sock")]
    listen: ListenAddr,
    /// Allow --listen to be a TCP address. TCP has no access control: every local user (and
    /// anyone who reaches the address) can call this daemon. For development only.
    #[arg(long, env = "MVIRT_LOG_ALLOW_TCP")]
    allow_tcp: bool,
    /// Give the unix socket this group and mode 0660 (default: mode 0600, only the daemon's
    /// user and root may connect).
    #[arg(long, env = "MVIRT_LOG_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// Directory holding the SQLite database (log.db).
    #[arg(long, env = "MVIRT_LOG_DATA_DIR", default_value = "/var/lib/mvirt/log")]
    data_dir: PathBuf,
    /// Delete entries older than this many days (0 keeps them regardless of age).
    #[arg(long, env = "MVIRT_LOG_RETENTION_DAYS", default_value_t = 90)]
    retention_days: u64,
    /// Keep at most this many entries, deleting the oldest (0: no limit).
    #[arg(
        long,
        env = "MVIRT_LOG_RETENTION_MAX_ENTRIES",
        default_value_t = 10_000_000
    )]
    retention_max_entries: u64,
    /// Seconds between two retention runs.
    #[arg(long, env = "MVIRT_LOG_RETENTION_INTERVAL_SECS", default_value_t = 300)]
    retention_interval_secs: u64,
    /// Log output: auto (text on a terminal, JSON otherwise), text or json.
    #[arg(long, env = "MVIRT_LOG_LOG_FORMAT", default_value = "auto", value_parser = ["auto", "text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let format = match args.log_format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        _ => LogFormat::Auto,
    };
    telemetry::init("mvirt-log", format);
    let config = Config {
        listen: args.listen.clone(),
        data_dir: args.data_dir,
        retention: RetentionPolicy {
            max_age: (args.retention_days > 0)
                .then(|| Duration::from_secs(args.retention_days * 86_400)),
            max_rows: (args.retention_max_entries > 0).then_some(args.retention_max_entries),
            interval: Duration::from_secs(args.retention_interval_secs),
        },
    };
    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            eprintln!("mvirt-log: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let listen = Listen {
        addr: args.listen.clone(),
        allow_tcp: args.allow_tcp,
        socket: SocketOptions {
            group: args.socket_group.clone(),
        },
    };
    let result = match listen.bind().await {
        Ok(listener) => match server::BoundServer::with_listener(config, listener) {
            Ok(bound) => bound.serve(shutdown).await,
            Err(err) => Err(err),
        },
        Err(err) => Err(err.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %mvirt_common::error::error_chain(&err), "mvirt-log failed");
            eprintln!("mvirt-log: {}", mvirt_common::error::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
