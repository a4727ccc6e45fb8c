//! `mvirt-log`: the audit log daemon: flags → [`Config`] → serve until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mvirt_common::daemon::{DaemonArgs, DaemonSpec};
use mvirt_log::retention::RetentionPolicy;
use mvirt_log::server::{BoundServer, Config};

/// mvirt's audit log. Every mvirt daemon records its state changes here with the ids of the
/// objects they concern; operators and the API query them by object, component, level, time
/// and text, and follow new entries live. Serves `mvirt.log.v1.LogService` and the standard
/// gRPC health service.
#[derive(Debug, Parser)]
#[command(name = "mvirt-log", version)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Delete entries older than this many days (0 keeps them regardless of age).
    #[arg(long, default_value_t = 90)]
    retention_days: u64,
    /// Keep at most this many entries, deleting the oldest (0: no limit).
    #[arg(long, default_value_t = 10_000_000)]
    retention_max_entries: u64,
    /// Seconds between two retention runs.
    #[arg(long, default_value_t = 300)]
    retention_interval_secs: u64,
}

const DAEMON: DaemonSpec = DaemonSpec {
    name: "mvirt-log",
    env_prefix: "MVIRT_LOG",
    listen: Some("/run/mvirt/log.sock"),
    data_dir: "/var/lib/mvirt/log",
    data_dir_help: "Directory holding the SQLite database (log.db).",
    log_filter: "info",
    metrics_listen: Some("127.0.0.1:50062"),
};

fn main() -> ExitCode {
    let args: Args = DAEMON.parse();
    let config = Config {
        listen: args.daemon.socket.listen.clone(),
        data_dir: args.daemon.common.data_dir.clone(),
        retention: RetentionPolicy {
            max_age: (args.retention_days > 0)
                .then(|| Duration::from_secs(args.retention_days * 86_400)),
            max_rows: (args.retention_max_entries > 0).then_some(args.retention_max_entries),
            interval: Duration::from_secs(args.retention_interval_secs),
        },
    };
    DAEMON.serve(&args.daemon, |listener, shutdown| async move {
        BoundServer::with_listener(config, listener)?
            .serve(shutdown)
            .await
    })
}
