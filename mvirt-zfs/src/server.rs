//! Wiring: checks the pool, prepares the parent dataset, opens the metadata, recovers
//! interrupted imports, reports drift, and serves `ZfsService` until shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use mvirt_common::grpc::{GrpcServer, ServeError};
use mvirt_common::listen::Listener;
use mvirt_common::version::VersionInfo;
use mvirt_common::Shutdown;

use crate::backup::{BackupDirError, Backups};
use crate::drift;
use crate::grpc::ZfsGrpc;
use crate::import::{ImportError, ImportManager};
use crate::layout::Layout;
use crate::locks::ObjectLocks;
use crate::proto::zfs_service_server::ZfsServiceServer;
use crate::storage::{Storage, StorageError};
use crate::store::{Store, StoreError};
use crate::zfs::{Zfs, ZfsError};

/// Daemon configuration (flags in `main.rs`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The ZFS pool (must exist).
    pub pool: String,
    /// Parent dataset under the pool for everything mvirt creates (empty: the pool itself).
    pub parent_dataset: String,
    /// Directory of the SQLite metadata.
    pub data_dir: PathBuf,
    /// The only directory `file://` sources may come from (none: `file://` is refused).
    pub import_dir: Option<PathBuf>,
    /// mvirt-log endpoint for audit entries (empty: tracing only).
    pub log_endpoint: String,
    /// `compression` set on the parent dataset when it is created.
    pub compression: String,
    /// Where backups go (absolute; created with mode 0700).
    pub backup_dir: PathBuf,
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidConfig {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("ZFS pool {pool} is not available")]
    Pool {
        pool: String,
        #[source]
        source: ZfsError,
    },
    #[error("cannot prepare dataset {dataset}")]
    Dataset {
        dataset: String,
        #[source]
        source: ZfsError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    BackupDir(#[from] BackupDirError),
    #[error("cannot clean up interrupted receives")]
    RecoverReceives(#[source] StorageError),
    #[error("cannot clean up interrupted backups")]
    RecoverBackups(#[source] StorageError),
    #[error("cannot recover interrupted detaches of clones")]
    RecoverDetach(#[source] StorageError),
    #[error("cannot recover interrupted imports")]
    Recover(#[source] ImportError),
    #[error("drift check failed")]
    Drift(#[source] StorageError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

fn valid_dataset_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && !s.starts_with(['-', '.'])
}

/// The storage service, ready to serve.
pub struct Daemon {
    pub storage: Arc<Storage>,
    pub imports: Arc<ImportManager>,
    pub backups: Arc<Backups>,
}

impl Daemon {
    /// Prepares everything before serving. `shutdown` also stops running imports.
    pub async fn prepare(config: &Config, shutdown: &Shutdown) -> Result<Self, StartError> {
        if !valid_dataset_component(&config.pool) {
            return Err(StartError::InvalidConfig {
                what: "pool",
                value: config.pool.clone(),
                reason: "must be a ZFS pool name",
            });
        }
        if !config.parent_dataset.is_empty()
            && !config
                .parent_dataset
                .split('/')
                .all(valid_dataset_component)
        {
            return Err(StartError::InvalidConfig {
                what: "parent dataset",
                value: config.parent_dataset.clone(),
                reason: "must be a relative ZFS dataset path",
            });
        }
        let zfs = Zfs;
        zfs.get(&config.pool, &["type"], false)
            .await
            .map_err(|source| StartError::Pool {
                pool: config.pool.clone(),
                source,
            })?;
        let root = if config.parent_dataset.is_empty() {
            config.pool.clone()
        } else {
            format!("{}/{}", config.pool, config.parent_dataset)
        };
        let dataset_err = |dataset: &str| {
            let dataset = dataset.to_string();
            move |source| StartError::Dataset { dataset, source }
        };
        if !zfs.exists(&root).await.map_err(dataset_err(&root))? {
            zfs.create(&root, true, &[("compression", &config.compression)])
                .await
                .map_err(dataset_err(&root))?;
        }
        for child in ["volumes", "templates", "staging"] {
            let dataset = format!("{root}/{child}");
            if !zfs.exists(&dataset).await.map_err(dataset_err(&dataset))? {
                zfs.create(&dataset, false, &[])
                    .await
                    .map_err(dataset_err(&dataset))?;
            }
        }
        let mountpoint = zfs
            .get(&root, &["mountpoint"], false)
            .await
            .map_err(dataset_err(&root))?
            .remove(&root)
            .and_then(|mut p| p.remove("mountpoint"))
            .filter(|m| m.starts_with('/'))
            .ok_or_else(|| StartError::Dataset {
                dataset: root.clone(),
                source: ZfsError::Parse("the parent dataset has no mountpoint".into()),
            })?;
        let store = Arc::new(Store::open(&config.data_dir.join("mvirt-zfs.sqlite"))?);
        let audit = mvirt_log::create_audit_logger(&config.log_endpoint, "mvirt-zfs");
        let storage = Arc::new(Storage {
            zfs,
            store,
            layout: Layout {
                root,
                mountpoint: PathBuf::from(mountpoint),
            },
            locks: ObjectLocks::default(),
            audit: audit.clone(),
        });
        let imports = Arc::new(ImportManager::new(
            storage.clone(),
            config.import_dir.clone(),
            shutdown.token(),
        ));
        let backups = Arc::new(Backups::open(storage.clone(), &config.backup_dir)?);
        let receives = storage
            .recover_receives()
            .await
            .map_err(StartError::RecoverReceives)?;
        if !receives.is_empty() {
            tracing::warn!(volumes = ?receives, "removed receives interrupted by a restart");
        }
        let leftovers = backups
            .recover()
            .await
            .map_err(StartError::RecoverBackups)?;
        if leftovers > 0 {
            tracing::warn!(leftovers, "removed what interrupted backups left");
        }
        storage
            .recover_detaches()
            .await
            .map_err(StartError::RecoverDetach)?;
        let recovered = imports.recover().await.map_err(StartError::Recover)?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "marked imports interrupted by a restart as failed"
            );
        }
        let drift = drift::check(&storage).await.map_err(StartError::Drift)?;
        for item in &drift {
            audit.warn(
                format!(
                    "drift: {} {} ({}): {}",
                    item.object_kind, item.object_id, item.dataset, item.detail
                ),
                &[&item.object_id],
            );
        }
        tracing::info!(
            dataset = %storage.layout.root,
            mountpoint = %storage.layout.mountpoint.display(),
            drift = drift.len(),
            "storage ready"
        );
        Ok(Self {
            storage,
            imports,
            backups,
        })
    }

    /// Serves on `listener` until `shutdown` fires.
    pub async fn serve(
        self,
        listener: impl Into<Listener>,
        shutdown: Shutdown,
    ) -> Result<(), StartError> {
        let service = ZfsGrpc {
            storage: self.storage.clone(),
            imports: self.imports,
            backups: self.backups,
            version: VersionInfo::new("mvirt-zfs", env!("CARGO_PKG_VERSION")),
        };
        crate::metrics::watch(&self.storage, &shutdown);
        let server = GrpcServer::for_daemon("mvirt-zfs")
            .add_service(ZfsServiceServer::new(service))
            .await;
        server.serve(listener, shutdown).await?;
        self.storage.audit.flush().await;
        Ok(())
    }
}

/// Prepares and serves on `listener` (bound first, so that a taken socket is reported before
/// any work) until `shutdown` fires.
pub async fn run(config: Config, listener: Listener, shutdown: Shutdown) -> Result<(), StartError> {
    let daemon = Daemon::prepare(&config, &shutdown).await?;
    daemon.serve(listener, shutdown).await
}
