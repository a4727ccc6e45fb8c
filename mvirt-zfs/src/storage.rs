//! Volumes, snapshots and templates: the storage operations behind `ZfsService`.
//!
//! A request is validated here (ids, names, sizes), then runs under the object's lock
//! ([`ObjectLocks`]): first the ZFS change, then the metadata row, undoing the ZFS change if the
//! row cannot be written, so a failure leaves nothing behind. Creates are idempotent by id.
//! Every change is an AUDIT entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mvirt_common::validate::{self, InvalidName};
use mvirt_common::{ErrorKind, HasErrorKind};
use mvirt_log::AuditLogger;

use crate::layout::{self, Layout, PROP_ID, PROP_KIND};
use crate::locks::ObjectLocks;
use crate::store::{
    self, SnapshotRecord, Store, StoreError, TemplateRecord, TemplateState, VolumeRecord,
};
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
            StorageError::Io { .. } => ErrorKind::Internal,
        }
    }
}
mvirt_common::impl_status_from!(StorageError);

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
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

impl Storage {
    // ---------------------------------------------------------------- volumes

    pub async fn create_volume(
        &self,
        id: &str,
        name: &str,
        size: u64,
    ) -> Result<Volume, StorageError> {
        validate::resource_id("volume id", id)?;
        validate::dns_label("volume name", name)?;
        validate_size("volume size", size)?;
        let _guard = self.locks.lock(id).await;
        if let Some(existing) = self.store.get_volume(id)? {
            if existing.name == name
                && existing.spec_size_bytes == size
                && existing.template_id.is_none()
            {
                return self.volume_view(existing).await;
            }
            return Err(StorageError::AlreadyExists(format!(
                "volume {id} already exists with a different spec"
            )));
        }
        self.check_volume_name(name)?;
        let dataset = self.layout.volume_dataset(id);
        self.zfs
            .create(&dataset, false, &[(PROP_ID, id), (PROP_KIND, "volume")])
            .await?;
        let record = VolumeRecord {
            id: id.to_string(),
            name: name.to_string(),
            size_bytes: size,
            spec_size_bytes: size,
            template_id: None,
            created_at: store::now(),
        };
        let image = self.layout.volume_dir(id).join(layout::IMAGE_FILE);
        let result = async {
            set_image_len(&image, size, true).await?;
            self.store.insert_volume(&record)?;
            Ok::<_, StorageError>(())
        }
        .await;
        if let Err(err) = result {
            self.undo_dataset(&dataset).await;
            return Err(err);
        }
        self.audit
            .audit(format!("created volume {name} ({size} bytes)"), &[id]);
        self.volume_view(record).await
    }

    fn check_volume_name(&self, name: &str) -> Result<(), StorageError> {
        if let Some(owner) = self.store.volume_name_owner(name)? {
            return Err(StorageError::AlreadyExists(format!(
                "volume name {name:?} is already used by volume {owner}"
            )));
        }
        Ok(())
    }

    async fn undo_dataset(&self, dataset: &str) {
        if let Err(err) = self.zfs.destroy_if_exists(dataset).await {
            tracing::error!(dataset, error = %mvirt_common::error::error_chain(&err), "cannot remove dataset after a failed operation");
        }
    }

    fn volume_record(&self, id: &str) -> Result<VolumeRecord, StorageError> {
        validate::resource_id("volume id", id)?;
        self.store
            .get_volume(id)?
            .ok_or_else(|| StorageError::NotFound {
                what: "volume",
                id: id.to_string(),
            })
    }

    async fn volume_view(&self, record: VolumeRecord) -> Result<Volume, StorageError> {
        let dataset = self.layout.volume_dataset(&record.id);
        let used = match self.zfs.get_u64(&dataset, "used").await {
            Ok(used) => used,
            Err(ZfsError::NotFound(_)) => 0,
            Err(err) => return Err(err.into()),
        };
        Ok(self.volume_view_with(record, used).await)
    }

    async fn volume_view_with(&self, record: VolumeRecord, used_bytes: u64) -> Volume {
        let path = self.layout.volume_dir(&record.id).join(layout::IMAGE_FILE);
        let holders_path = path.clone();
        let in_use_by = tokio::task::spawn_blocking(move || processes_holding(&holders_path))
            .await
            .unwrap_or_default();
        self.volume_view_held(record, used_bytes, in_use_by).await
    }

    async fn volume_view_held(
        &self,
        record: VolumeRecord,
        used_bytes: u64,
        in_use_by: Vec<u32>,
    ) -> Volume {
        let dir = self.layout.volume_dir(&record.id);
        let path = dir.join(layout::IMAGE_FILE);
        let cmdline = tokio::fs::read_to_string(dir.join(layout::CMDLINE_FILE))
            .await
            .unwrap_or_default();
        Volume {
            dataset: self.layout.volume_dataset(&record.id),
            kernel_path: layout::existing(&dir.join(layout::KERNEL_FILE)),
            initramfs_path: layout::existing(&dir.join(layout::INITRAMFS_FILE)),
            cmdline: cmdline.trim_end().to_string(),
            path,
            record,
            used_bytes,
            in_use_by,
        }
    }

    pub async fn get_volume(&self, id: &str) -> Result<Volume, StorageError> {
        let record = self.volume_record(id)?;
        self.volume_view(record).await
    }

    pub async fn list_volumes(&self) -> Result<Vec<Volume>, StorageError> {
        let records = self.store.list_volumes()?;
        let used = self
            .zfs
            .get(&self.layout.volumes_dataset(), &["used"], true)
            .await?;
        let paths: Vec<PathBuf> = records
            .iter()
            .map(|r| self.layout.volume_dir(&r.id).join(layout::IMAGE_FILE))
            .collect();
        let mut holders = tokio::task::spawn_blocking(move || processes_holding_any(&paths))
            .await
            .unwrap_or_default();
        let mut volumes = Vec::with_capacity(records.len());
        for record in records {
            let u = used
                .get(&self.layout.volume_dataset(&record.id))
                .and_then(|p| p.get("used"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let path = self.layout.volume_dir(&record.id).join(layout::IMAGE_FILE);
            let pids = holders.remove(&path).unwrap_or_default();
            volumes.push(self.volume_view_held(record, u, pids).await);
        }
        Ok(volumes)
    }

    /// Datasets whose origin is a snapshot of `dataset`.
    async fn dependents_of(&self, dataset: &str) -> Result<Vec<String>, StorageError> {
        let origins = self.zfs.get(&self.layout.root, &["origin"], true).await?;
        let prefix = format!("{dataset}@");
        Ok(origins
            .into_iter()
            .filter(|(_, p)| p.get("origin").is_some_and(|o| o.starts_with(&prefix)))
            .map(|(name, _)| name)
            .collect())
    }

    pub async fn delete_volume(&self, id: &str, force: bool) -> Result<(), StorageError> {
        validate::resource_id("volume id", id)?;
        let _guard = self.locks.lock(id).await;
        let record = self.volume_record(id)?;
        let dataset = self.layout.volume_dataset(id);
        let image = self.layout.volume_dir(id).join(layout::IMAGE_FILE);
        let holders = tokio::task::spawn_blocking(move || processes_holding(&image))
            .await
            .unwrap_or_default();
        if !holders.is_empty() && !force {
            return Err(StorageError::FailedPrecondition(format!(
                "volume {id} is in use (image open by pid {holders:?}); detach it or delete with force"
            )));
        }
        // Dependent clones are other volumes' data: never destroyed implicitly, even with force.
        let dependents = self.dependents_of(&dataset).await?;
        if !dependents.is_empty() {
            return Err(StorageError::FailedPrecondition(format!(
                "volume {id} has {} dependent clone(s): {}",
                dependents.len(),
                dependents.join(", ")
            )));
        }
        self.zfs.destroy_if_exists(&dataset).await?;
        self.store.delete_volume(id)?;
        self.audit.audit(
            format!(
                "deleted volume {}{}",
                record.name,
                if force { " (forced)" } else { "" }
            ),
            &[id],
        );
        Ok(())
    }

    pub async fn resize_volume(&self, id: &str, size: u64) -> Result<Volume, StorageError> {
        validate::resource_id("volume id", id)?;
        validate_size("volume size", size)?;
        let _guard = self.locks.lock(id).await;
        let record = self.volume_record(id)?;
        if size < record.size_bytes {
            return Err(StorageError::InvalidArgument(format!(
                "volume {id} cannot shrink from {} to {size} bytes (grow only)",
                record.size_bytes
            )));
        }
        if size > record.size_bytes {
            let image = self.layout.volume_dir(id).join(layout::IMAGE_FILE);
            set_image_len(&image, size, false).await?;
            self.store.set_volume_size(id, size)?;
            self.audit.audit(
                format!(
                    "resized volume {} from {} to {size} bytes",
                    record.name, record.size_bytes
                ),
                &[id],
            );
        }
        self.get_volume(id).await
    }

    // ---------------------------------------------------------------- snapshots

    pub async fn create_snapshot(
        &self,
        volume_id: &str,
        id: &str,
        name: &str,
    ) -> Result<Snapshot, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        validate::resource_id("snapshot id", id)?;
        validate::dns_label("snapshot name", name)?;
        let _guard = self.locks.lock(volume_id).await;
        let volume = self.volume_record(volume_id)?;
        if let Some(existing) = self.store.get_snapshot(id)? {
            if existing.volume_id == volume_id && existing.name == name {
                return self.snapshot_view(existing).await;
            }
            return Err(StorageError::AlreadyExists(format!(
                "snapshot {id} already exists with a different spec"
            )));
        }
        if let Some(other) = self
            .store
            .list_snapshots(volume_id)?
            .into_iter()
            .find(|s| s.name == name)
        {
            return Err(StorageError::AlreadyExists(format!(
                "volume {volume_id} already has a snapshot named {name:?} ({})",
                other.id
            )));
        }
        let snapshot = self.layout.volume_snapshot(volume_id, id);
        self.zfs.snapshot(&snapshot).await?;
        let record = SnapshotRecord {
            id: id.to_string(),
            volume_id: volume_id.to_string(),
            name: name.to_string(),
            created_at: store::now(),
        };
        if let Err(err) = self.store.insert_snapshot(&record) {
            self.undo_dataset(&snapshot).await;
            return Err(err.into());
        }
        self.audit.audit(
            format!("created snapshot {name} of volume {}", volume.name),
            &[volume_id, id],
        );
        self.snapshot_view(record).await
    }

    async fn snapshot_view(&self, record: SnapshotRecord) -> Result<Snapshot, StorageError> {
        let name = self.layout.volume_snapshot(&record.volume_id, &record.id);
        let props = match self.zfs.get(&name, &["used", "referenced"], false).await {
            Ok(mut props) => props.remove(&name).unwrap_or_default(),
            Err(ZfsError::NotFound(_)) => BTreeMap::new(),
            Err(err) => return Err(err.into()),
        };
        let num = |k: &str| props.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Snapshot {
            used_bytes: num("used"),
            referenced_bytes: num("referenced"),
            record,
        })
    }

    pub async fn list_snapshots(&self, volume_id: &str) -> Result<Vec<Snapshot>, StorageError> {
        self.volume_record(volume_id)?;
        let mut out = Vec::new();
        for record in self.store.list_snapshots(volume_id)? {
            out.push(self.snapshot_view(record).await?);
        }
        Ok(out)
    }

    fn snapshot_record(&self, volume_id: &str, id: &str) -> Result<SnapshotRecord, StorageError> {
        validate::resource_id("snapshot id", id)?;
        self.store
            .get_snapshot(id)?
            .filter(|s| s.volume_id == volume_id)
            .ok_or_else(|| StorageError::NotFound {
                what: "snapshot",
                id: id.to_string(),
            })
    }

    pub async fn delete_snapshot(&self, volume_id: &str, id: &str) -> Result<(), StorageError> {
        validate::resource_id("volume id", volume_id)?;
        let _guard = self.locks.lock(volume_id).await;
        let volume = self.volume_record(volume_id)?;
        let record = self.snapshot_record(volume_id, id)?;
        let snapshot = self.layout.volume_snapshot(volume_id, id);
        match self.zfs.destroy(&snapshot, false).await {
            Ok(()) | Err(ZfsError::NotFound(_)) => {}
            Err(ZfsError::HasDependents(_)) => {
                return Err(StorageError::FailedPrecondition(format!(
                    "snapshot {id} has dependent clones"
                )))
            }
            Err(err) => return Err(err.into()),
        }
        self.store.delete_snapshot(id)?;
        self.audit.audit(
            format!("deleted snapshot {} of volume {}", record.name, volume.name),
            &[volume_id, id],
        );
        Ok(())
    }

    pub async fn rollback_snapshot(
        &self,
        volume_id: &str,
        id: &str,
    ) -> Result<Volume, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        let _guard = self.locks.lock(volume_id).await;
        let volume = self.volume_record(volume_id)?;
        let record = self.snapshot_record(volume_id, id)?;
        let image = self.layout.volume_dir(volume_id).join(layout::IMAGE_FILE);
        let holders = tokio::task::spawn_blocking(move || processes_holding(&image))
            .await
            .unwrap_or_default();
        if !holders.is_empty() {
            return Err(StorageError::FailedPrecondition(format!(
                "volume {volume_id} is in use (image open by pid {holders:?}); stop the VM before rolling back"
            )));
        }
        let dataset = self.layout.volume_dataset(volume_id);
        self.zfs
            .rollback(&self.layout.volume_snapshot(volume_id, id))
            .await?;
        // `rollback -r` destroyed the newer snapshots: forget them too.
        let remaining = self.zfs.snapshots(&dataset).await?;
        for snap in self.store.list_snapshots(volume_id)? {
            if !remaining.contains(&self.layout.volume_snapshot(volume_id, &snap.id)) {
                self.store.delete_snapshot(&snap.id)?;
            }
        }
        let image = self.layout.volume_dir(volume_id).join(layout::IMAGE_FILE);
        let size = tokio::fs::metadata(&image)
            .await
            .map_err(io_err(format!("cannot stat {}", image.display())))?
            .len();
        if size != volume.size_bytes {
            self.store.set_volume_size(volume_id, size)?;
        }
        self.audit.audit(
            format!(
                "rolled back volume {} to snapshot {}",
                volume.name, record.name
            ),
            &[volume_id, id],
        );
        drop(_guard);
        self.get_volume(volume_id).await
    }

    // ---------------------------------------------------------------- templates

    fn template_record(&self, id: &str) -> Result<TemplateRecord, StorageError> {
        validate::resource_id("template id", id)?;
        self.store
            .get_template(id)?
            .ok_or_else(|| StorageError::NotFound {
                what: "template",
                id: id.to_string(),
            })
    }

    /// Number of datasets cloned from each template's @base, by template id.
    async fn clone_counts(&self) -> Result<BTreeMap<String, u32>, StorageError> {
        let origins = self
            .zfs
            .get(&self.layout.volumes_dataset(), &["origin"], true)
            .await?;
        let prefix = format!("{}/", self.layout.templates_dataset());
        let suffix = format!("@{}", layout::BASE_SNAPSHOT);
        let mut counts = BTreeMap::new();
        for props in origins.values() {
            if let Some(template) = props
                .get("origin")
                .and_then(|o| o.strip_prefix(&prefix))
                .and_then(|o| o.strip_suffix(&suffix))
            {
                *counts.entry(template.to_string()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    fn template_view(&self, record: TemplateRecord, clone_count: u32) -> Template {
        let dir = self.layout.template_dir(&record.id);
        Template {
            path: dir.join(layout::IMAGE_FILE),
            dataset: self.layout.template_dataset(&record.id),
            kernel_path: layout::existing(&dir.join(layout::KERNEL_FILE)),
            initramfs_path: layout::existing(&dir.join(layout::INITRAMFS_FILE)),
            clone_count,
            record,
        }
    }

    pub async fn get_template(&self, id: &str) -> Result<Template, StorageError> {
        let record = self.template_record(id)?;
        let counts = self.clone_counts().await?;
        let count = counts.get(id).copied().unwrap_or(0);
        Ok(self.template_view(record, count))
    }

    pub async fn list_templates(&self) -> Result<Vec<Template>, StorageError> {
        let counts = self.clone_counts().await?;
        Ok(self
            .store
            .list_templates()?
            .into_iter()
            .map(|t| {
                let count = counts.get(&t.id).copied().unwrap_or(0);
                self.template_view(t, count)
            })
            .collect())
    }

    /// Deletes a template. While volumes are clones of it, this is refused with their count,
    /// unless `detach_clones`: then each clone is first made independent
    /// ([`Storage::detach_clone`]).
    pub async fn delete_template(
        &self,
        id: &str,
        detach_clones: bool,
    ) -> Result<DeletedTemplate, StorageError> {
        validate::resource_id("template id", id)?;
        let _guard = self.locks.lock(id).await;
        let record = self.template_record(id)?;
        if record.state == TemplateState::Importing {
            return Err(StorageError::FailedPrecondition(format!(
                "template {id} is still importing; cancel its import job first"
            )));
        }
        let dataset = self.layout.template_dataset(id);
        let mut detached = Vec::new();
        // Clones made while we copy (CloneFromTemplate does not take the template's lock, so
        // clones of one template run concurrently) are picked up by the next round.
        for _round in 0..3 {
            let dependents = self.dependents_of(&dataset).await?;
            if dependents.is_empty() {
                break;
            }
            if !detach_clones {
                return Err(StorageError::FailedPrecondition(format!(
                    "template {id} has {} dependent clone(s); delete them first or delete with detach_clones",
                    dependents.len()
                )));
            }
            let volumes_prefix = format!("{}/", self.layout.volumes_dataset());
            for dependent in dependents {
                if dependent.starts_with(&format!("{}/", self.layout.staging_dataset()))
                    && dependent.ends_with(".old")
                {
                    // A clone already replaced by its copy whose removal failed: finish it.
                    self.zfs.destroy_if_exists(&dependent).await?;
                    continue;
                }
                let volume_id = dependent
                    .strip_prefix(&volumes_prefix)
                    .filter(|v| validate::resource_id("volume id", v).is_ok())
                    .ok_or_else(|| {
                        StorageError::FailedPrecondition(format!(
                            "template {id} has a dependent clone {dependent} that is not an mvirt volume"
                        ))
                    })?;
                self.detach_clone(volume_id, id).await.map_err(|err| {
                    if detached.is_empty() {
                        return err;
                    }
                    StorageError::FailedPrecondition(format!(
                        "{} (volumes already made independent: {}); template {id} was not deleted",
                        mvirt_common::error::error_chain(&err),
                        detached.join(", ")
                    ))
                })?;
                detached.push(volume_id.to_string());
            }
        }
        match self.zfs.destroy(&dataset, true).await {
            Ok(()) | Err(ZfsError::NotFound(_)) => {}
            Err(ZfsError::HasDependents(_)) => {
                return Err(StorageError::FailedPrecondition(format!(
                    "template {id} has dependent clones (new clones keep appearing)"
                )))
            }
            Err(err) => return Err(err.into()),
        }
        self.store.delete_template(id)?;
        let how = if detached.is_empty() {
            String::new()
        } else {
            format!(" after making {} clone(s) independent", detached.len())
        };
        self.audit
            .audit(format!("deleted template {}{how}", record.name), &[id]);
        Ok(DeletedTemplate {
            dependent_clones: detached.len() as u32,
            detached_volume_ids: detached,
        })
    }

    /// Makes the clone `volume_id` of template `template_id` independent: its data (all its
    /// snapshots and every write made since it was cloned) is copied with `zfs send | zfs recv`
    /// into a dataset that depends on nothing, which then takes the volume's name. The image
    /// path, user properties, snapshots and metadata row stay what they were.
    ///
    /// Crash safety (see [`Storage::recover_detaches`]), in order:
    /// 1. `volumes/V@mvirt-detach` snapshot, received (with older snapshots) into
    ///    `staging/V.new`; user properties copied; only then `mvirt:detach=ready` is set on it.
    /// 2. rename `volumes/V` → `staging/V.old`, then `staging/V.new` → `volumes/V`.
    /// 3. destroy `staging/V.old` and `volumes/V@mvirt-detach`, clear `mvirt:detach`.
    ///
    /// A crash before `ready` leaves the clone in place and a partial copy that recovery
    /// destroys; after it, recovery completes the swap (or puts the clone back): the pool always
    /// holds the old clone or the complete copy.
    async fn detach_clone(&self, volume_id: &str, template_id: &str) -> Result<(), StorageError> {
        let _guard = self.locks.lock(volume_id).await;
        let dataset = self.layout.volume_dataset(volume_id);
        let base = self.layout.template_base(template_id);
        let origin = self
            .zfs
            .get(&dataset, &["origin"], false)
            .await?
            .remove(&dataset)
            .and_then(|mut p| p.remove("origin"))
            .unwrap_or_default();
        if origin != base {
            // Made independent (or deleted) meanwhile.
            return Ok(());
        }
        self.check_not_in_use(volume_id, "making it independent of its template")
            .await?;
        let staged = self.layout.detach_new(volume_id);
        let snapshot = format!("{dataset}@{}", layout::DETACH_SNAPSHOT);
        self.zfs.destroy_if_exists(&staged).await?;
        self.zfs.destroy_if_exists(&snapshot).await?;
        self.zfs.snapshot(&snapshot).await?;
        let copied = async {
            let snapshots = self.zfs.snapshots(&dataset).await?;
            let first = snapshots
                .first()
                .cloned()
                .unwrap_or_else(|| snapshot.clone());
            self.zfs.send_receive(&first, &staged).await?;
            if first != snapshot {
                self.zfs
                    .send_receive_incremental(&first, &snapshot, &staged)
                    .await?;
            }
            for (key, value) in self.zfs.local_user_properties(&dataset).await? {
                if key != layout::PROP_DETACH {
                    self.zfs.set(&staged, &key, &value).await?;
                }
            }
            // Nothing may have written to the clone after the snapshot.
            self.check_not_in_use(volume_id, "making it independent of its template")
                .await?;
            self.zfs
                .set(&staged, layout::PROP_DETACH, layout::DETACH_READY)
                .await?;
            Ok::<_, StorageError>(())
        }
        .await;
        if let Err(err) = copied {
            self.undo_dataset(&staged).await;
            self.undo_dataset(&snapshot).await;
            return Err(err);
        }
        let old = self.layout.detach_old(volume_id);
        if let Err(err) = self.zfs.rename(&dataset, &old).await {
            self.undo_dataset(&staged).await;
            self.undo_dataset(&snapshot).await;
            return Err(err.into());
        }
        if let Err(err) = self.zfs.rename(&staged, &dataset).await {
            // Put the clone back; if even that fails, recovery at the next start does it.
            if let Err(back) = self.zfs.rename(&old, &dataset).await {
                tracing::error!(volume_id, error = %mvirt_common::error::error_chain(&back), "cannot put the clone back after a failed swap");
            } else {
                self.undo_dataset(&staged).await;
                self.undo_dataset(&snapshot).await;
            }
            return Err(err.into());
        }
        self.finish_detach(volume_id).await;
        let volume = self.store.get_volume(volume_id)?;
        self.audit.audit(
            format!(
                "made volume {} independent of template {template_id} (copied out of its clone)",
                volume
                    .map(|v| v.name)
                    .unwrap_or_else(|| volume_id.to_string())
            ),
            &[volume_id, template_id],
        );
        Ok(())
    }

    /// Step 3 of a detach: removes the replaced clone and the markers. Failures are logged;
    /// recovery at the next start retries them.
    async fn finish_detach(&self, volume_id: &str) {
        let dataset = self.layout.volume_dataset(volume_id);
        self.undo_dataset(&self.layout.detach_old(volume_id)).await;
        self.undo_dataset(&format!("{dataset}@{}", layout::DETACH_SNAPSHOT))
            .await;
        if let Err(err) = self.zfs.inherit(&dataset, layout::PROP_DETACH).await {
            tracing::warn!(volume_id, error = %mvirt_common::error::error_chain(&err), "cannot clear the detach marker");
        }
    }

    async fn check_not_in_use(&self, volume_id: &str, doing: &str) -> Result<(), StorageError> {
        let image = self.layout.volume_dir(volume_id).join(layout::IMAGE_FILE);
        let holders = tokio::task::spawn_blocking(move || processes_holding(&image))
            .await
            .unwrap_or_default();
        if holders.is_empty() {
            Ok(())
        } else {
            Err(StorageError::FailedPrecondition(format!(
                "volume {volume_id} is in use (image open by pid {holders:?}); stop the VM before {doing}"
            )))
        }
    }

    /// Finishes or undoes detaches a crash interrupted (see [`Storage::detach_clone`]). Runs at
    /// start, before anything else touches volumes. Returns the volumes it repaired.
    pub async fn recover_detaches(&self) -> Result<Vec<String>, StorageError> {
        let staging = self.layout.staging_dataset();
        let prefix = format!("{staging}/");
        let children = self.zfs.get(&staging, &[layout::PROP_DETACH], true).await?;
        let mut repaired = Vec::new();
        // `.new` before `.old`: whether a complete copy exists decides what happens to the clone.
        let mut staged: Vec<(String, bool, bool)> = Vec::new();
        for (name, props) in &children {
            let Some(child) = name.strip_prefix(&prefix) else {
                continue;
            };
            if child.contains(['/', '@']) {
                continue;
            }
            let (volume_id, is_new) = match (child.strip_suffix(".new"), child.strip_suffix(".old"))
            {
                (Some(v), _) => (v, true),
                (_, Some(v)) => (v, false),
                _ => {
                    tracing::warn!(dataset = %name, "unexpected dataset in the staging area, left alone");
                    continue;
                }
            };
            if validate::resource_id("volume id", volume_id).is_err() {
                tracing::warn!(dataset = %name, "unexpected dataset in the staging area, left alone");
                continue;
            }
            let ready =
                props.get(layout::PROP_DETACH).map(String::as_str) == Some(layout::DETACH_READY);
            staged.push((volume_id.to_string(), is_new, ready));
        }
        staged.sort_by_key(|(_, is_new, _)| !is_new);
        for (volume_id, is_new, ready) in staged {
            let dataset = self.layout.volume_dataset(&volume_id);
            let new = self.layout.detach_new(&volume_id);
            let old = self.layout.detach_old(&volume_id);
            if is_new {
                if ready && !self.zfs.exists(&dataset).await? {
                    // Crashed between the two renames: the complete copy takes the name.
                    self.zfs.rename(&new, &dataset).await?;
                    tracing::warn!(volume_id, "completed a detach interrupted by a restart");
                } else {
                    // The clone is still in place (or the copy is incomplete): drop the copy.
                    self.zfs.destroy_if_exists(&new).await?;
                    tracing::warn!(
                        volume_id,
                        "dropped the copy of a detach interrupted by a restart"
                    );
                }
            } else if !self.zfs.exists(&dataset).await? {
                // Neither the copy nor the clone has the name: the clone takes it back.
                self.zfs.rename(&old, &dataset).await?;
                tracing::warn!(volume_id, "restored a clone after an interrupted detach");
            }
            self.finish_detach(&volume_id).await;
            if !repaired.contains(&volume_id) {
                self.audit.warn(
                    format!("repaired volume {volume_id} after a detach interrupted by a restart"),
                    &[&volume_id],
                );
                repaired.push(volume_id);
            }
        }
        // A crash right after the detach snapshot was taken leaves just that snapshot.
        let suffix = format!("@{}", layout::DETACH_SNAPSHOT);
        let snapshots = self
            .zfs
            .get(&self.layout.volumes_dataset(), &["type"], true)
            .await?;
        for name in snapshots.keys().filter(|n| n.ends_with(&suffix)) {
            self.zfs.destroy_if_exists(name).await?;
        }
        Ok(repaired)
    }

    pub async fn clone_from_template(
        &self,
        template_id: &str,
        volume_id: &str,
        name: &str,
        size: u64,
    ) -> Result<Volume, StorageError> {
        validate::resource_id("template id", template_id)?;
        validate::resource_id("volume id", volume_id)?;
        validate::dns_label("volume name", name)?;
        if size != 0 {
            validate_size("volume size", size)?;
        }
        let _guard = self.locks.lock(volume_id).await;
        if let Some(existing) = self.store.get_volume(volume_id)? {
            if existing.name == name
                && existing.template_id.as_deref() == Some(template_id)
                && (size == 0 || existing.spec_size_bytes == size)
            {
                return self.volume_view(existing).await;
            }
            return Err(StorageError::AlreadyExists(format!(
                "volume {volume_id} already exists with a different spec"
            )));
        }
        let template = self.template_record(template_id)?;
        if template.state != TemplateState::Ready {
            return Err(StorageError::FailedPrecondition(format!(
                "template {template_id} is still importing"
            )));
        }
        if size != 0 && size < template.size_bytes {
            return Err(StorageError::InvalidArgument(format!(
                "volume size {size} is smaller than template {template_id} ({} bytes)",
                template.size_bytes
            )));
        }
        self.check_volume_name(name)?;
        let size = if size == 0 { template.size_bytes } else { size };
        let dataset = self.layout.volume_dataset(volume_id);
        self.zfs
            .clone_snapshot(
                &self.layout.template_base(template_id),
                &dataset,
                &[(PROP_ID, volume_id), (PROP_KIND, "volume")],
            )
            .await?;
        let record = VolumeRecord {
            id: volume_id.to_string(),
            name: name.to_string(),
            size_bytes: size,
            spec_size_bytes: size,
            template_id: Some(template_id.to_string()),
            created_at: store::now(),
        };
        let image = self.layout.volume_dir(volume_id).join(layout::IMAGE_FILE);
        let result = async {
            if size > template.size_bytes {
                set_image_len(&image, size, false).await?;
            }
            self.store.insert_volume(&record)?;
            Ok::<_, StorageError>(())
        }
        .await;
        if let Err(err) = result {
            self.undo_dataset(&dataset).await;
            return Err(err);
        }
        self.audit.audit(
            format!(
                "cloned volume {name} ({size} bytes) from template {}",
                template.name
            ),
            &[volume_id, template_id],
        );
        self.volume_view(record).await
    }

    /// Copies a volume snapshot (`zfs send | zfs recv`) into a new template that depends on
    /// nothing, so the volume and the template can later be deleted independently.
    pub async fn promote_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
        template_id: &str,
        name: &str,
    ) -> Result<Template, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        validate::resource_id("snapshot id", snapshot_id)?;
        validate::resource_id("template id", template_id)?;
        validate::dns_label("template name", name)?;
        let source_url = format!("snapshot:{volume_id}@{snapshot_id}");
        let _template_guard = self.locks.lock(template_id).await;
        if let Some(existing) = self.store.get_template(template_id)? {
            if existing.name == name && existing.source_url == source_url {
                return self.get_template(template_id).await;
            }
            return Err(StorageError::AlreadyExists(format!(
                "template {template_id} already exists with a different spec"
            )));
        }
        if let Some(owner) = self.store.template_name_owner(name)? {
            return Err(StorageError::AlreadyExists(format!(
                "template name {name:?} is already used by template {owner}"
            )));
        }
        let _volume_guard = self.locks.lock(volume_id).await;
        let volume = self.volume_record(volume_id)?;
        let snapshot = self.snapshot_record(volume_id, snapshot_id)?;
        let dataset = self.layout.template_dataset(template_id);
        self.zfs
            .send_receive(
                &self.layout.volume_snapshot(volume_id, snapshot_id),
                &dataset,
            )
            .await?;
        let result = async {
            self.zfs.set(&dataset, PROP_ID, template_id).await?;
            self.zfs.set(&dataset, PROP_KIND, "template").await?;
            self.zfs
                .snapshot(&self.layout.template_base(template_id))
                .await?;
            self.zfs
                .destroy(&format!("{dataset}@{snapshot_id}"), false)
                .await?;
            let dir = self.layout.template_dir(template_id);
            let image = dir.join(layout::IMAGE_FILE);
            let size = tokio::fs::metadata(&image)
                .await
                .map_err(io_err(format!("cannot stat {}", image.display())))?
                .len();
            let cmdline = tokio::fs::read_to_string(dir.join(layout::CMDLINE_FILE))
                .await
                .unwrap_or_default();
            let record = TemplateRecord {
                id: template_id.to_string(),
                name: name.to_string(),
                state: TemplateState::Ready,
                size_bytes: size,
                source_url: source_url.clone(),
                format: "raw".into(),
                sha256: String::new(),
                kernel_url: String::new(),
                initramfs_url: String::new(),
                kernel_sha256: String::new(),
                initramfs_sha256: String::new(),
                cmdline: cmdline.trim_end().to_string(),
                has_kernel: dir.join(layout::KERNEL_FILE).exists(),
                has_initramfs: dir.join(layout::INITRAMFS_FILE).exists(),
                created_at: store::now(),
            };
            self.store.insert_template(&record)?;
            Ok::<_, StorageError>(record)
        }
        .await;
        let record = match result {
            Ok(record) => record,
            Err(err) => {
                self.undo_dataset(&dataset).await;
                return Err(err);
            }
        };
        self.audit.audit(
            format!(
                "promoted snapshot {} of volume {} to template {name}",
                snapshot.name, volume.name
            ),
            &[template_id, volume_id, snapshot_id],
        );
        Ok(self.template_view(record, 0))
    }

    // ---------------------------------------------------------------- pool

    pub async fn pool_stats(&self) -> Result<PoolStats, StorageError> {
        let pool = self
            .layout
            .root
            .split('/')
            .next()
            .unwrap_or(&self.layout.root)
            .to_string();
        let pool_props = self
            .zfs
            .get(&pool, &["used", "available"], false)
            .await?
            .remove(&pool)
            .unwrap_or_default();
        let ratio = self
            .zfs
            .get(&self.layout.root, &["compressratio"], false)
            .await?
            .remove(&self.layout.root)
            .and_then(|p| {
                p.get("compressratio")
                    .and_then(|v| crate::zfs::parse_ratio(v))
            })
            .unwrap_or(1.0);
        let num = |k: &str| {
            pool_props
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let volumes = self.store.list_volumes()?;
        let templates = self.store.list_templates()?;
        let provisioned = volumes.iter().map(|v| v.size_bytes).sum::<u64>()
            + templates.iter().map(|t| t.size_bytes).sum::<u64>();
        Ok(PoolStats {
            dataset: self.layout.root.clone(),
            pool,
            size_bytes: num("used") + num("available"),
            allocated_bytes: num("used"),
            free_bytes: num("available"),
            provisioned_bytes: provisioned,
            compression_ratio: ratio,
            volume_count: volumes.len() as u32,
            template_count: templates.len() as u32,
        })
    }
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
