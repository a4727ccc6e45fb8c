//! Snapshots of a volume: create, list, delete, roll back.

use std::collections::BTreeMap;

use mvirt_common::validate;

use super::{io_err, processes_holding, Snapshot, Storage, StorageError, Volume};
use crate::layout;
use crate::store::{self, SnapshotRecord};
use crate::zfs::ZfsError;

impl Storage {
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
        self.check_not_replica(volume_id, "taking snapshots of it")?;
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

    pub(super) async fn snapshot_view(
        &self,
        record: SnapshotRecord,
    ) -> Result<Snapshot, StorageError> {
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

    pub(super) fn snapshot_record(
        &self,
        volume_id: &str,
        id: &str,
    ) -> Result<SnapshotRecord, StorageError> {
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
        self.check_not_replica(volume_id, "rolling it back")?;
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
}
