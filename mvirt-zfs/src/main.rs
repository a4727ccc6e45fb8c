//! The `mvirt-zfs` daemon: flags → [`mvirt_zfs::Config`] → run until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
    /// gRPC listen address.
    #[arg(long, env = "MVIRT_ZFS_LISTEN", default_value = "[::1]:50053")]
    listen: SocketAddr,
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
        default_value = "http://[::1]:50052"
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
        listen: flags.listen,
        pool: flags.pool,
        parent_dataset: flags.parent_dataset,
        data_dir: flags.data_dir,
        import_dir: flags.import_dir,
        log_endpoint: flags.log_endpoint,
        compression: flags.compression,
    };
    match mvirt_zfs::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %mvirt_common::error::error_chain(&err), "mvirt-zfs failed");
            eprintln!("mvirt-zfs: {}", mvirt_common::error::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
