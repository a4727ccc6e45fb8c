//! The `mvirt-zfs` daemon: flags → [`mvirt_zfs::Config`] → run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mvirt_common::daemon::{DaemonArgs, DaemonSpec};

/// mvirt's storage daemon. Serves ZfsService (gRPC): volumes as raw image files in one ZFS
/// dataset each, snapshots and rollback, O(1) clones from templates, and template imports from
/// file:// or http(s):// (raw or qcow2, optionally .gz/.xz/.zst) with checksum, progress and
/// cancellation. Metadata lives in SQLite; datasets carry their mvirt ids as ZFS user properties
/// and drift between the two is reported at start.
#[derive(Debug, Parser)]
#[command(name = "mvirt-zfs", version, about, long_about)]
struct Flags {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// ZFS pool to use (must exist).
    #[arg(long, default_value = "tank")]
    pool: String,
    /// Parent dataset under the pool for volumes/ and templates/ (created if missing).
    #[arg(long, default_value = "mvirt")]
    parent_dataset: String,
    /// The only directory file:// template sources may be read from (unset: file:// refused).
    #[arg(long)]
    import_dir: Option<PathBuf>,
    /// mvirt-log endpoint for audit entries (empty: audit entries go to the log output only).
    #[arg(long, default_value = "unix:/run/mvirt/log.sock")]
    log_endpoint: String,
    /// ZFS compression set on the parent dataset when it is created.
    #[arg(long, default_value = "on")]
    compression: String,
    /// Directory for volume backups (zfs send stream files + JSON manifests); an absolute
    /// path, created with mode 0700 (default: <data-dir>/backups).
    #[arg(long)]
    backup_dir: Option<PathBuf>,
}

const DAEMON: DaemonSpec = DaemonSpec {
    name: "mvirt-zfs",
    env_prefix: "MVIRT_ZFS",
    listen: Some("/run/mvirt/zfs.sock"),
    data_dir: "/var/lib/mvirt/zfs",
    data_dir_help: "Directory for the SQLite metadata.",
    log_filter: "info",
    metrics_listen: Some("127.0.0.1:50063"),
};

fn main() -> ExitCode {
    let flags: Flags = DAEMON.parse();
    let backup_dir = flags.backup_dir.unwrap_or_else(|| {
        let dir = flags.daemon.common.data_dir.join("backups");
        std::path::absolute(&dir).unwrap_or(dir)
    });
    let config = mvirt_zfs::Config {
        backup_dir,
        pool: flags.pool,
        parent_dataset: flags.parent_dataset,
        data_dir: flags.daemon.common.data_dir.clone(),
        import_dir: flags.import_dir,
        log_endpoint: flags.log_endpoint,
        compression: flags.compression,
    };
    DAEMON.serve(&flags.daemon, |listener, shutdown| {
        mvirt_zfs::run(config, listener, shutdown)
    })
}
