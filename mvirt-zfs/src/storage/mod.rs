//! Volumes, snapshots and templates: the storage operations behind `ZfsService`.
//!
//! A request is validated here (ids, names, sizes), then runs under the object's lock
//! ([`ObjectLocks`]): first the ZFS change, then the metadata row, undoing the ZFS change if the
//! row cannot be written, so a failure leaves nothing behind. Creates are idempotent by id.
//! Every change is an AUDIT entry.
//!
//! One module per kind of object: [`volume`], [`snapshot`], [`template`] (templates, clones
//! from them, and the detaching of a clone when its template goes), [`pool`] (statistics).
//! This file holds the shared types, errors and helpers.

mod pool;
pub mod replica;
mod snapshot;
mod template;
mod volume;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mvirt_common::validate::InvalidName;
use mvirt_common::{ErrorKind, HasErrorKind};
use mvirt_log::AuditLogger;

use crate::layout::Layout;
use crate::locks::ObjectLocks;
use crate::store::{SnapshotRecord, Store, StoreError, TemplateRecord, VolumeRecord};
use crate::zfs::{Zfs, ZfsError};

/// Disk sizes must be whole 512-byte sectors.
pub const SECTOR: u64 = 512;

/// Failure of a storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Data that arrived or was stored is not what its checksum says (gRPC DATA_LOSS).
    #[error("{0}")]
    DataLoss(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl HasErrorKind for StorageError {
    fn kind(&self) -> ErrorKind {
        match self {
            StorageError::InvalidName(_) | StorageError::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
            StorageError::NotFound { .. } => ErrorKind::NotFound,
            StorageError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            StorageError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            StorageError::Zfs(e) => e.kind(),
            StorageError::Store(e) => e.kind(),
            // DATA_LOSS has no ErrorKind; the conversion below maps it.
            StorageError::Io { .. } | StorageError::DataLoss(_) => ErrorKind::Internal,
        }
    }
}

impl From<StorageError> for tonic::Status {
    fn from(err: StorageError) -> Self {
        match &err {
            StorageError::DataLoss(message) => {
                tracing::warn!(error = %message, "data loss");
                tonic::Status::data_loss(message.clone())
            }
            _ => mvirt_common::error::to_status(&err),
        }
    }
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
    let context = context.into();
    move |source| StorageError::Io { context, source }
}

/// A volume as reported to callers.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub record: VolumeRecord,
    pub used_bytes: u64,
    pub path: PathBuf,
    pub dataset: String,
    pub kernel_path: String,
    pub initramfs_path: String,
    pub cmdline: String,
    pub in_use_by: Vec<u32>,
    /// The source of a replica (received, not promoted); `None` for a normal volume.
    pub replica_source: Option<String>,
}

/// A snapshot as reported to callers.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub record: SnapshotRecord,
    pub used_bytes: u64,
    pub referenced_bytes: u64,
}

/// A template as reported to callers.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub record: TemplateRecord,
    pub path: PathBuf,
    pub dataset: String,
    pub kernel_path: String,
    pub initramfs_path: String,
    pub clone_count: u32,
}

/// What `delete_template` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedTemplate {
    /// Clones that depended on the template (all made independent first).
    pub dependent_clones: u32,
    pub detached_volume_ids: Vec<String>,
}

/// Pool usage.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStats {
    pub pool: String,
    pub dataset: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
    pub free_bytes: u64,
    pub provisioned_bytes: u64,
    pub compression_ratio: f64,
    pub volume_count: u32,
    pub template_count: u32,
}

/// Checks that a disk size is usable.
pub fn validate_size(what: &str, size: u64) -> Result<(), StorageError> {
    if size == 0 {
        return Err(StorageError::InvalidArgument(format!(
            "{what} must be greater than zero"
        )));
    }
    if !size.is_multiple_of(SECTOR) {
        return Err(StorageError::InvalidArgument(format!(
            "{what} {size} is not a multiple of {SECTOR} bytes"
        )));
    }
    Ok(())
}

/// Pids of processes that hold `path` open (found through `/proc/<pid>/fd`).
pub fn processes_holding(path: &Path) -> Vec<u32> {
    processes_holding_any(&[path.to_path_buf()])
        .remove(path)
        .unwrap_or_default()
}

/// For each of `paths` held open by some process, the pids holding it (one `/proc` scan).
pub fn processes_holding_any(paths: &[PathBuf]) -> BTreeMap<PathBuf, Vec<u32>> {
    let mut holders: BTreeMap<PathBuf, Vec<u32>> = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return holders;
    };
    let own = std::process::id();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            // The daemon itself only holds images briefly while writing them.
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if paths.contains(&target) {
                let pids = holders.entry(target).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    holders
}

/// Volumes, snapshots and templates on one parent dataset.
pub struct Storage {
    pub zfs: Zfs,
    pub store: Arc<Store>,
    pub layout: Layout,
    pub locks: ObjectLocks,
    pub audit: AuditLogger,
}

/// Creates (when `create`) or grows a sparse image file to `size` bytes.
async fn set_image_len(path: &Path, size: u64, create: bool) -> Result<(), StorageError> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .await
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    file.set_len(size)
        .await
        .map_err(io_err(format!("cannot size {}", path.display())))?;
    file.sync_all()
        .await
        .map_err(io_err(format!("cannot sync {}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_whole_nonzero_sectors() {
        assert!(validate_size("size", 0).is_err());
        assert!(validate_size("size", 1000).is_err());
        assert!(validate_size("size", 1 << 20).is_ok());
    }

    #[test]
    fn a_file_held_open_is_reported_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, b"x").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(&path).unwrap())
            .spawn()
            .unwrap();
        let holders = processes_holding(&path);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(holders, vec![child.id()]);
    }
}
