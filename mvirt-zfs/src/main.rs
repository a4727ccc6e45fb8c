//! The `mvirt-zfs` daemon: flags → [`mvirt_zfs::Config`] → run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mvirt_common::listen::{Listen, ListenAddr, SocketOptions};
use mvirt_common::telemetry::{self, LogFormat};
use mvirt_common::Shutdown;

/// mvirt's storage daemon. Serves ZfsService (gRPC): volumes as raw image files in one ZFS
/// dataset each, snapshots and rollback, O(1) clones from templates, and template imports from
/// file:// or http(s):// (raw or qcow2, optionally .gz/.xz/.zst) with checksum, progress and
/// cancellation. Metadata lives in SQLite; datasets carry their mvirt ids as ZFS user properties
/// and drift between the two is reported at start.
#[derive(Debug, Parser)]
#[command(name = "mvirt-zfs", version, about, long_about)]
struct Flags {
    /// gRPC listen address: a unix socket (`/path` or `unix:/path`; mode 0600, see
    /// --socket-group) or, only with --allow-tcp, a TCP host:port.
    #[arg(long, env = "MVIRT_ZFS_LISTEN", default_value = "/run/mvirt/zfs.sock")]
    listen: ListenAddr,
    /// Allow --listen to be a TCP address. TCP has no access control: every local user (and
    /// anyone who reaches the address) can call this daemon. For development only.
    #[arg(long, env = "MVIRT_ZFS_ALLOW_TCP")]
    allow_tcp: bool,
    /// Give the unix socket this group and mode 0660 (default: mode 0600, only the daemon's
    /// user and root may connect).
    #[arg(long, env = "MVIRT_ZFS_SOCKET_GROUP")]
    socket_group: Option<String>,
    /// ZFS pool to use (must exist).
    #[arg(long, env = "MVIRT_ZFS_POOL", default_value = "tank")]
    pool: String,
    /// Parent dataset under the pool for volumes/ and templates/ (created if missing).
    #[arg(long, env = "MVIRT_ZFS_PARENT_DATASET", default_value = "mvirt")]
    parent_dataset: String,
    /// Directory for the SQLite metadata.
    #[arg(long, env = "MVIRT_ZFS_DATA_DIR", default_value = "/var/lib/mvirt/zfs")]
    data_dir: PathBuf,
    /// The only directory file:// template sources may be read from (unset: file:// refused).
    #[arg(long, env = "MVIRT_ZFS_IMPORT_DIR")]
    import_dir: Option<PathBuf>,
    /// mvirt-log endpoint for audit entries (empty: audit entries go to the log output only).
    #[arg(
        long,
        env = "MVIRT_ZFS_LOG_ENDPOINT",
        default_value = "unix:/run/mvirt/log.sock"
    )]
    log_endpoint: String,
    /// ZFS compression set on the parent dataset when it is created.
    #[arg(long, env = "MVIRT_ZFS_COMPRESSION", default_value = "on")]
    compression: String,
    /// Log format: auto, text or json.
    #[arg(long, env = "MVIRT_ZFS_LOG_FORMAT", default_value = "auto")]
    log_format: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    let format = match flags.log_format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        _ => LogFormat::Auto,
    };
    telemetry::init("mvirt-zfs", format);
    let shutdown = match Shutdown::on_signals() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("mvirt-zfs: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let config = mvirt_zfs::Config {
        pool: flags.pool,
        parent_dataset: flags.parent_dataset,
        data_dir: flags.data_dir,
        import_dir: flags.import_dir,
        log_endpoint: flags.log_endpoint,
        compression: flags.compression,
    };
    let listen = Listen {
        addr: flags.listen.clone(),
        allow_tcp: flags.allow_tcp,
        socket: SocketOptions {
            group: flags.socket_group.clone(),
        },
    };
    let result = match listen.bind().await {
        Ok(listener) => mvirt_zfs::run(config, listener, shutdown).await,
        Err(err) => Err(err.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %mvirt_common::error::error_chain(&err), "mvirt-zfs failed");
            eprintln!("mvirt-zfs: {}", mvirt_common::error::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
