//! Volumes: raw image files in one dataset each; create, read, resize, delete.

use std::path::PathBuf;

use mvirt_common::validate;

use super::{
    processes_holding, processes_holding_any, set_image_len, validate_size, Storage, StorageError,
    Volume,
};
use crate::layout::{self, PROP_ID, PROP_KIND};
use crate::store::{self, VolumeRecord};
use crate::zfs::ZfsError;

impl Storage {
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

    pub(crate) fn check_volume_name(&self, name: &str) -> Result<(), StorageError> {
        if let Some(owner) = self.store.volume_name_owner(name)? {
            return Err(StorageError::AlreadyExists(format!(
                "volume name {name:?} is already used by volume {owner}"
            )));
        }
        Ok(())
    }

    /// Refuses an operation that would change a replica (it only changes by receiving).
    pub(super) fn check_not_replica(&self, id: &str, doing: &str) -> Result<(), StorageError> {
        if self.store.replica_source(id)?.is_some() {
            return Err(StorageError::FailedPrecondition(format!(
                "volume {id} is a replica (read-only, changed only by receiving increments); promote it before {doing}"
            )));
        }
        Ok(())
    }

    pub(crate) async fn undo_dataset(&self, dataset: &str) {
        if let Err(err) = self.zfs.destroy_if_exists(dataset).await {
            tracing::error!(dataset, error = %mvirt_common::error::error_chain(&err), "cannot remove dataset after a failed operation");
        }
    }

    pub(super) fn volume_record(&self, id: &str) -> Result<VolumeRecord, StorageError> {
        validate::resource_id("volume id", id)?;
        self.store
            .get_volume(id)?
            .ok_or_else(|| StorageError::NotFound {
                what: "volume",
                id: id.to_string(),
            })
    }

    pub(super) async fn volume_view(&self, record: VolumeRecord) -> Result<Volume, StorageError> {
        let dataset = self.layout.volume_dataset(&record.id);
        let used = match self.zfs.get_u64(&dataset, "used").await {
            Ok(used) => used,
            Err(ZfsError::NotFound(_)) => 0,
            Err(err) => return Err(err.into()),
        };
        Ok(self.volume_view_with(record, used).await)
    }

    pub(super) async fn volume_view_with(&self, record: VolumeRecord, used_bytes: u64) -> Volume {
        let path = self.layout.volume_dir(&record.id).join(layout::IMAGE_FILE);
        let holders_path = path.clone();
        let in_use_by = tokio::task::spawn_blocking(move || processes_holding(&holders_path))
            .await
            .unwrap_or_default();
        self.volume_view_held(record, used_bytes, in_use_by).await
    }

    pub(super) async fn volume_view_held(
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
        let replica_source = match self.store.replica_source(&record.id) {
            Ok(source) => source,
            Err(err) => {
                tracing::warn!(volume_id = %record.id, error = %mvirt_common::error::error_chain(&err), "cannot read the replica marker");
                None
            }
        };
        Volume {
            replica_source,
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

    /// The normal volumes of this node: replicas are left out (see [`Storage::list_replicas`]),
    /// so that nothing that reconciles volumes mistakes one for its own.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>, StorageError> {
        self.list_volumes_where(false).await
    }

    /// Replicas received from other nodes and not promoted.
    pub async fn list_replicas(&self) -> Result<Vec<Volume>, StorageError> {
        self.list_volumes_where(true).await
    }

    async fn list_volumes_where(&self, replicas: bool) -> Result<Vec<Volume>, StorageError> {
        let sources = self.store.replica_sources()?;
        let records: Vec<_> = self
            .store
            .list_volumes()?
            .into_iter()
            .filter(|r| sources.contains_key(&r.id) == replicas)
            .collect();
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
    pub(super) async fn dependents_of(&self, dataset: &str) -> Result<Vec<String>, StorageError> {
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
        self.check_not_replica(id, "resizing it")?;
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
}
