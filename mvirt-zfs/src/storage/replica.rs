//! Replication primitives: replication snapshots, sending a volume as a `zfs send` stream,
//! receiving one into a replica, promoting a replica to a normal volume.
//!
//! A replica lives where a volume lives (`volumes/<id>`, the same id as on the sending node)
//! with `mvirt:replica=<source>` and `readonly=on`, and a row in the `replicas` table. It is left
//! out of `list_volumes` (so that a node agent reconciling its volumes never takes it for one of
//! its own or deletes it), refuses resize, snapshots and rollback, and changes only by receiving
//! increments. A full receive goes to `staging/<id>.recv` first and takes its name only once the
//! stream was verified and `zfs receive` succeeded; `recover_receives` at start destroys what an
//! interrupted one left there.

use futures::{Stream, StreamExt};

use bytes::Bytes;
use mvirt_common::validate;

use super::{io_err, Storage, StorageError, Volume};
use crate::layout::{self, PROP_ID, PROP_KIND, PROP_REPLICA, REPLICATION_PREFIX};
use crate::store::{self, VolumeRecord};
use crate::zfs::ZfsError;
use crate::zstream::{Receiver, Sender, StreamSum};

/// A replication snapshot as reported to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSnapshot {
    pub id: String,
    pub volume_id: String,
    pub created_at: i64,
    pub used_bytes: u64,
    pub referenced_bytes: u64,
}

/// The first message of a received stream.
#[derive(Debug, Clone, Default)]
pub struct ReceiveHeader {
    pub volume_id: String,
    pub name: String,
    pub base_snapshot_id: String,
    pub source: String,
}

/// One piece of a received stream after the header.
#[derive(Debug, Clone)]
pub enum StreamPart {
    Data(Bytes),
    /// The sender's checksum and byte count of everything before it: the last part.
    Trailer {
        sha256: String,
        byte_count: u64,
    },
}

/// What a receive produced.
#[derive(Debug, Clone)]
pub struct Received {
    pub volume: Volume,
    pub snapshot_id: String,
    pub sum: StreamSum,
}

/// Checks a replica source description (stored as a ZFS property value).
fn validate_source(source: &str) -> Result<String, StorageError> {
    if source.is_empty() {
        return Ok("unknown".into());
    }
    if source.len() > 200
        || !source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b))
    {
        return Err(StorageError::InvalidArgument(format!(
            "replica source {source:?} must be at most 200 letters, digits or .-_:/"
        )));
    }
    Ok(source.to_string())
}

/// The replication snapshot id in a snapshot's full name (`…@repl-<id>`), if it is one.
fn replication_id(full_name: &str) -> Option<&str> {
    full_name
        .split_once('@')
        .and_then(|(_, snap)| snap.strip_prefix(REPLICATION_PREFIX))
        .filter(|id| validate::resource_id("snapshot id", id).is_ok())
}

impl Storage {
    /// Takes the replication snapshot `repl-<snapshot_id>` (idempotent).
    pub async fn create_replication_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
    ) -> Result<ReplicationSnapshot, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        validate::resource_id("snapshot id", snapshot_id)?;
        let _guard = self.locks.lock(volume_id).await;
        self.volume_record(volume_id)?;
        self.check_not_replica(volume_id, "taking replication snapshots of it")?;
        let snapshot = self.layout.replication_snapshot(volume_id, snapshot_id);
        if !self.zfs.exists(&snapshot).await? {
            self.zfs.snapshot(&snapshot).await?;
            self.audit.audit(
                format!("created replication snapshot {snapshot_id} of volume {volume_id}"),
                &[volume_id, snapshot_id],
            );
        }
        self.replication_snapshots(volume_id)
            .await?
            .into_iter()
            .find(|s| s.id == snapshot_id)
            .ok_or_else(|| StorageError::NotFound {
                what: "replication snapshot",
                id: snapshot_id.to_string(),
            })
    }

    /// The volume's replication snapshots, oldest first.
    pub async fn list_replication_snapshots(
        &self,
        volume_id: &str,
    ) -> Result<Vec<ReplicationSnapshot>, StorageError> {
        self.volume_record(volume_id)?;
        self.replication_snapshots(volume_id).await
    }

    async fn replication_snapshots(
        &self,
        volume_id: &str,
    ) -> Result<Vec<ReplicationSnapshot>, StorageError> {
        let dataset = self.layout.volume_dataset(volume_id);
        let names: Vec<String> = self
            .zfs
            .snapshots(&dataset)
            .await?
            .into_iter()
            .filter(|n| replication_id(n).is_some())
            .collect();
        let props = self
            .zfs
            .get_each(&names, &["creation", "used", "referenced"])
            .await?;
        Ok(names
            .iter()
            .filter_map(|name| {
                let id = replication_id(name)?;
                let p = props.get(name);
                let num = |k: &str| {
                    p.and_then(|p| p.get(k))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                Some(ReplicationSnapshot {
                    id: id.to_string(),
                    volume_id: volume_id.to_string(),
                    created_at: num("creation") as i64,
                    used_bytes: num("used"),
                    referenced_bytes: num("referenced"),
                })
            })
            .collect())
    }

    /// Destroys all but the newest `keep_last` replication snapshots; returns their ids.
    pub async fn prune_replication_snapshots(
        &self,
        volume_id: &str,
        keep_last: u32,
    ) -> Result<Vec<String>, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        if keep_last == 0 {
            return Err(StorageError::InvalidArgument(
                "keep_last must be at least 1 (the newest replication snapshot is the base of the next increment)".into(),
            ));
        }
        let _guard = self.locks.lock(volume_id).await;
        self.volume_record(volume_id)?;
        let snapshots = self.replication_snapshots(volume_id).await?;
        let excess = snapshots.len().saturating_sub(keep_last as usize);
        let mut deleted = Vec::new();
        for s in snapshots.into_iter().take(excess) {
            match self
                .zfs
                .destroy(&self.layout.replication_snapshot(volume_id, &s.id), false)
                .await
            {
                Ok(()) | Err(ZfsError::NotFound(_)) => deleted.push(s.id),
                Err(err) => return Err(err.into()),
            }
        }
        if !deleted.is_empty() {
            self.audit.audit(
                format!(
                    "pruned {} replication snapshot(s) of volume {volume_id}, kept {keep_last}",
                    deleted.len()
                ),
                &[volume_id],
            );
        }
        Ok(deleted)
    }

    /// Starts `zfs send` of replication snapshot `snapshot_id` (incremental from
    /// `base_snapshot_id` when not empty), after checking both exist and the base is older.
    pub async fn send_volume(
        &self,
        volume_id: &str,
        snapshot_id: &str,
        base_snapshot_id: &str,
    ) -> Result<Sender, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        validate::resource_id("snapshot id", snapshot_id)?;
        if !base_snapshot_id.is_empty() {
            validate::resource_id("base snapshot id", base_snapshot_id)?;
        }
        self.volume_record(volume_id)?;
        let snapshots = self.replication_snapshots(volume_id).await?;
        let position = |id: &str| snapshots.iter().position(|s| s.id == id);
        let Some(at) = position(snapshot_id) else {
            return Err(StorageError::NotFound {
                what: "replication snapshot",
                id: format!("{snapshot_id} of volume {volume_id}"),
            });
        };
        let base = if base_snapshot_id.is_empty() {
            None
        } else {
            let Some(base_at) = position(base_snapshot_id) else {
                return Err(StorageError::NotFound {
                    what: "base replication snapshot",
                    id: format!("{base_snapshot_id} of volume {volume_id}"),
                });
            };
            if base_at >= at {
                return Err(StorageError::InvalidArgument(format!(
                    "base snapshot {base_snapshot_id} is not older than snapshot {snapshot_id}"
                )));
            }
            Some(
                self.layout
                    .replication_snapshot(volume_id, base_snapshot_id),
            )
        };
        let snapshot = self.layout.replication_snapshot(volume_id, snapshot_id);
        Sender::start(&snapshot, base.as_deref())
    }

    /// Receives a stream into a new replica (no base) or onto an existing one (base = its newest
    /// snapshot). Nothing is kept unless the trailer's checksum and byte count match.
    pub async fn receive_volume<S>(
        &self,
        header: ReceiveHeader,
        parts: S,
    ) -> Result<Received, StorageError>
    where
        S: Stream<Item = Result<StreamPart, StorageError>> + Unpin,
    {
        let id = header.volume_id.as_str();
        validate::resource_id("volume id", id)?;
        let source = validate_source(&header.source)?;
        if header.base_snapshot_id.is_empty() {
            validate::dns_label("volume name", &header.name)?;
        } else {
            validate::resource_id("base snapshot id", &header.base_snapshot_id)?;
        }
        let _guard = self.locks.lock(id).await;
        if header.base_snapshot_id.is_empty() {
            self.receive_full(&header, &source, parts).await
        } else {
            self.receive_increment(&header, parts).await
        }
    }

    /// Feeds `parts` into `receiver` up to the trailer, then lets it finish.
    async fn pump<S>(mut receiver: Receiver, mut parts: S) -> Result<StreamSum, StorageError>
    where
        S: Stream<Item = Result<StreamPart, StorageError>> + Unpin,
    {
        loop {
            match parts.next().await {
                Some(Ok(StreamPart::Data(data))) => {
                    if let Err(err) = receiver.push(data).await {
                        receiver.abort().await;
                        return Err(err);
                    }
                }
                Some(Ok(StreamPart::Trailer { sha256, byte_count })) => {
                    return receiver.finish(&sha256, byte_count).await;
                }
                Some(Err(err)) => {
                    receiver.abort().await;
                    return Err(err);
                }
                None => {
                    let count = receiver.byte_count();
                    let refused = receiver.take_refusal();
                    receiver.abort().await;
                    return Err(refused.unwrap_or_else(|| StorageError::InvalidArgument(format!(
                        "the stream ended after {count} bytes without its trailer (sha256, byte_count): truncated; nothing was kept"
                    ))));
                }
            }
        }
    }

    async fn receive_full<S>(
        &self,
        header: &ReceiveHeader,
        source: &str,
        parts: S,
    ) -> Result<Received, StorageError>
    where
        S: Stream<Item = Result<StreamPart, StorageError>> + Unpin,
    {
        let id = header.volume_id.as_str();
        let dataset = self.layout.volume_dataset(id);
        if self.store.get_volume(id)?.is_some() || self.zfs.exists(&dataset).await? {
            return Err(StorageError::AlreadyExists(format!(
                "volume {id} already exists on this node; a full stream needs a new volume (send an increment onto a replica instead)"
            )));
        }
        self.check_volume_name(&header.name)?;
        let staged = self.layout.receive_staging(id);
        self.zfs.destroy_if_exists(&staged).await?;
        let receiver = Receiver::start(&staged, false)?;
        let result = async {
            let sum = Self::pump(receiver, parts).await?;
            let snapshots = self.zfs.snapshots(&staged).await?;
            let snapshot_id = match snapshots.as_slice() {
                [only] => replication_id(only).map(str::to_string),
                _ => None,
            }
            .ok_or_else(|| {
                StorageError::InvalidArgument(format!(
                    "the stream must carry one replication snapshot (repl-<uuid>), it carried {snapshots:?}"
                ))
            })?;
            let image = self.layout.receive_staging_dir(id).join(layout::IMAGE_FILE);
            let size = tokio::fs::metadata(&image)
                .await
                .map_err(|_| {
                    StorageError::InvalidArgument(format!(
                        "the stream holds no volume image ({})",
                        layout::IMAGE_FILE
                    ))
                })?
                .len();
            // Set while unmounted: zfs-fuse applies readonly only when it mounts.
            self.zfs.unmount(&staged).await?;
            for (key, value) in [
                (PROP_ID, id),
                (PROP_KIND, "volume"),
                (PROP_REPLICA, source),
                ("readonly", "on"),
            ] {
                self.zfs.set(&staged, key, value).await?;
            }
            Ok::<_, StorageError>((sum, snapshot_id, size))
        }
        .await;
        let (sum, snapshot_id, size) = match result {
            Ok(done) => done,
            Err(err) => {
                self.undo_dataset(&staged).await;
                return Err(err);
            }
        };
        if let Err(err) = self.zfs.rename(&staged, &dataset).await {
            self.undo_dataset(&staged).await;
            return Err(err.into());
        }
        let record = VolumeRecord {
            id: id.to_string(),
            name: header.name.clone(),
            size_bytes: size,
            spec_size_bytes: size,
            template_id: None,
            created_at: store::now(),
        };
        if let Err(err) = self.store.insert_replica(&record, source) {
            self.undo_dataset(&dataset).await;
            return Err(err.into());
        }
        self.audit.audit(
            format!(
                "received replica {} from {source}: snapshot {snapshot_id}, {} bytes",
                header.name, sum.byte_count
            ),
            &[id, &snapshot_id],
        );
        Ok(Received {
            volume: self.volume_view(record).await?,
            snapshot_id,
            sum,
        })
    }

    async fn receive_increment<S>(
        &self,
        header: &ReceiveHeader,
        parts: S,
    ) -> Result<Received, StorageError>
    where
        S: Stream<Item = Result<StreamPart, StorageError>> + Unpin,
    {
        let id = header.volume_id.as_str();
        let base = header.base_snapshot_id.as_str();
        let record = self.volume_record(id)?;
        if self.store.replica_source(id)?.is_none() {
            return Err(StorageError::FailedPrecondition(format!(
                "volume {id} is not a replica: increments are received only onto replicas"
            )));
        }
        let before = self.replication_snapshots(id).await?;
        match before.last() {
            Some(newest) if newest.id == base => {}
            Some(newest) => {
                return Err(StorageError::FailedPrecondition(format!(
                    "replica {id} cannot take an increment from {base}: its newest snapshot is {}",
                    newest.id
                )))
            }
            None => {
                return Err(StorageError::FailedPrecondition(format!(
                    "replica {id} has no replication snapshot to take an increment onto"
                )))
            }
        }
        let dataset = self.layout.volume_dataset(id);
        let receiver = Receiver::start(&dataset, true)?;
        let result = async {
            let sum = Self::pump(receiver, parts).await?;
            let after = self.replication_snapshots(id).await?;
            let new: Vec<&ReplicationSnapshot> = after
                .iter()
                .filter(|s| !before.iter().any(|b| b.id == s.id))
                .collect();
            match new.as_slice() {
                [one] => Ok((sum, one.id.clone())),
                _ => Err(StorageError::InvalidArgument(format!(
                    "the increment must carry one new replication snapshot (repl-<uuid>), it carried {}",
                    new.len()
                ))),
            }
        }
        .await;
        let (sum, snapshot_id) = match result {
            Ok(done) => done,
            Err(err) => {
                // A refused or corrupted increment committed nothing; anything newer than the
                // base that appeared anyway goes.
                if let Ok(names) = self.zfs.snapshots(&dataset).await {
                    let base_name = self.layout.replication_snapshot(id, base);
                    let mut newer = false;
                    for name in names {
                        if newer {
                            self.undo_dataset(&name).await;
                        }
                        newer |= name == base_name;
                    }
                }
                return Err(err);
            }
        };
        // Mounted again so that what is read through the mount is the received data: zfs-fuse
        // keeps serving cached pages of the rolled-back or replaced files otherwise.
        self.zfs.unmount(&dataset).await?;
        self.zfs.mount(&dataset).await?;
        let image = self.layout.volume_dir(id).join(layout::IMAGE_FILE);
        let size = tokio::fs::metadata(&image)
            .await
            .map_err(io_err(format!("cannot stat {}", image.display())))?
            .len();
        if size != record.size_bytes {
            self.store.set_volume_size(id, size)?;
        }
        self.audit.audit(
            format!(
                "received increment {base} → {snapshot_id} into replica {}, {} bytes",
                record.name, sum.byte_count
            ),
            &[id, &snapshot_id],
        );
        Ok(Received {
            volume: self.volume_view(self.volume_record(id)?).await?,
            snapshot_id,
            sum,
        })
    }

    /// Makes a replica a normal volume of this node (idempotent).
    pub async fn promote_replica(&self, volume_id: &str) -> Result<Volume, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        let _guard = self.locks.lock(volume_id).await;
        let record = self.volume_record(volume_id)?;
        if let Some(source) = self.store.replica_source(volume_id)? {
            let dataset = self.layout.volume_dataset(volume_id);
            // ZFS first, the row last: a crash in between leaves a replica row, and asking
            // again finishes.
            self.zfs.inherit(&dataset, "readonly").await?;
            self.zfs.inherit(&dataset, PROP_REPLICA).await?;
            self.store.delete_replica(volume_id)?;
            self.audit.audit(
                format!(
                    "promoted replica {} (from {source}) to a volume of this node",
                    record.name
                ),
                &[volume_id],
            );
        }
        self.volume_view(record).await
    }

    /// Destroys what interrupted receives and restores left in `staging/` (`<uuid>.recv`).
    pub async fn recover_receives(&self) -> Result<Vec<String>, StorageError> {
        let staging = self.layout.staging_dataset();
        let prefix = format!("{staging}/");
        let children = self.zfs.get(&staging, &["type"], true).await?;
        let mut removed = Vec::new();
        for name in children.keys() {
            let Some(id) = name
                .strip_prefix(&prefix)
                .and_then(|c| c.strip_suffix(".recv"))
            else {
                continue;
            };
            if id.contains(['/', '@']) || validate::resource_id("volume id", id).is_err() {
                continue;
            }
            tracing::warn!(dataset = %name, "removing a receive interrupted by a restart");
            self.zfs.destroy_if_exists(name).await?;
            removed.push(id.to_string());
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_ids_and_sources_are_checked() {
        let id = "0190a5e4-8c2b-7d3e-9f00-123456789abc";
        assert_eq!(
            replication_id(&format!("p/m/volumes/x@repl-{id}")),
            Some(id)
        );
        assert_eq!(replication_id("p/m/volumes/x@backup-1"), None);
        assert_eq!(replication_id("p/m/volumes/x@repl-../x"), None);
        assert_eq!(validate_source("").unwrap(), "unknown");
        assert_eq!(validate_source("node-2:a/b").unwrap(), "node-2:a/b");
        assert!(validate_source("a b").is_err());
        assert!(validate_source("x\ny").is_err());
        assert!(validate_source(&"a".repeat(201)).is_err());
    }
}
