//! Backups of volumes to a directory: `zfs send` stream files with a JSON manifest each.
//!
//! ```text
//! <backup-dir>/<volume id>/<backup id>.zstream          the stream (full or incremental)
//! <backup-dir>/<volume id>/<backup id>.json             its manifest, written last
//! <backup-dir>/<volume id>/<backup id>.zstream.partial  only while it is being written
//! ```
//!
//! A backup snapshots the volume as `@backup-<id>` and sends it (incrementally from the volume's
//! newest backup's snapshot when asked) into `.partial`, hashing as it goes; the file is synced,
//! renamed to `.zstream`, the directory synced, and then the manifest written durably
//! ([`mvirt_common::durable::write_atomic`]). A backup exists once its manifest does. After that
//! the volume's older `@backup-*` snapshots go: only the newest is the base of the next
//! incremental. At start [`Backups::recover`] removes `.partial`/`.tmp` files, streams without a
//! manifest and `@backup-*` snapshots without one (all left by a backup that was interrupted).
//!
//! Restores replay a chain (full, then each incremental in order) into `staging/<id>.recv`
//! through the same [`Receiver`] as ReceiveVolume: every file's size and SHA-256 are checked
//! before anything is created, and again while it streams (the last chunk held back).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mvirt_common::{durable, validate};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::layout::{self, BACKUP_PREFIX, PROP_ID, PROP_KIND};
use crate::storage::{io_err, Storage, StorageError, Volume};
use crate::store::{self, VolumeRecord};
use crate::zfs::ZfsError;
use crate::zstream::{self, Receiver, Sender};

const STREAM_EXT: &str = "zstream";
const PARTIAL_EXT: &str = "zstream.partial";
const MANIFEST_EXT: &str = "json";

/// What a backup is: its manifest (`<backup id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub volume_id: String,
    pub volume_name: String,
    /// The volume's snapshot the stream holds (`backup-<id>`).
    pub snapshot: String,
    /// The backup this one is an increment on; `None` for a full backup.
    pub base_backup_id: Option<String>,
    /// Position among the volume's backups (1, 2, …): "newest" means the highest.
    pub sequence: u64,
    /// Size and lowercase hex SHA-256 of the stream file.
    pub size_bytes: u64,
    pub sha256: String,
    /// The volume's virtual size when the backup was taken.
    pub volume_size_bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// The stream's file name in the volume's backup directory.
    pub file: String,
}

/// A backup as reported to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub manifest: Manifest,
    pub path: PathBuf,
}

/// Backups of the volumes of one [`Storage`] in one directory.
pub struct Backups {
    storage: Arc<Storage>,
    dir: PathBuf,
}

/// Why the backup directory is unusable.
#[derive(Debug, thiserror::Error)]
pub enum BackupDirError {
    #[error("backup directory {0:?} must be an absolute path")]
    NotAbsolute(PathBuf),
    #[error("cannot create backup directory {path:?}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup directory {0:?} is not a directory")]
    NotADirectory(PathBuf),
}

impl Backups {
    /// Checks (absolute, a directory) and creates (mode 0700) the backup directory.
    pub fn open(storage: Arc<Storage>, dir: &Path) -> Result<Self, BackupDirError> {
        if !dir.is_absolute() {
            return Err(BackupDirError::NotAbsolute(dir.to_path_buf()));
        }
        if dir.exists() && !dir.is_dir() {
            return Err(BackupDirError::NotADirectory(dir.to_path_buf()));
        }
        durable::create_dir_all(dir, 0o700).map_err(|source| BackupDirError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            storage,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn volume_dir(&self, volume_id: &str) -> PathBuf {
        self.dir.join(volume_id)
    }

    fn view(&self, manifest: Manifest) -> Backup {
        Backup {
            path: self.volume_dir(&manifest.volume_id).join(&manifest.file),
            manifest,
        }
    }

    /// The manifests of one volume, by sequence.
    async fn manifests_of(&self, volume_id: &str) -> Result<Vec<Manifest>, StorageError> {
        let dir = self.volume_dir(volume_id);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("cannot read {}", dir.display()))(e)),
        };
        let mut manifests = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io_err(format!("cannot read {}", dir.display())))?
        {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(MANIFEST_EXT) {
                continue;
            }
            let text = tokio::fs::read(&path)
                .await
                .map_err(io_err(format!("cannot read {}", path.display())))?;
            let manifest: Manifest =
                serde_json::from_slice(&text).map_err(|e| StorageError::Io {
                    context: format!("corrupt backup manifest {}", path.display()),
                    source: std::io::Error::other(e),
                })?;
            manifests.push(manifest);
        }
        manifests.sort_by_key(|m| m.sequence);
        Ok(manifests)
    }

    /// Volume ids that have a backup directory.
    async fn volume_ids(&self) -> Result<Vec<String>, StorageError> {
        let mut entries = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(io_err(format!("cannot read {}", self.dir.display())))?;
        let mut ids = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io_err(format!("cannot read {}", self.dir.display())))?
        {
            if let Some(name) = entry.file_name().to_str() {
                if validate::resource_id("volume id", name).is_ok() && entry.path().is_dir() {
                    ids.push(name.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every backup (of one volume when `volume_id` is not empty), by volume and sequence.
    pub async fn list(&self, volume_id: &str) -> Result<Vec<Backup>, StorageError> {
        let ids = if volume_id.is_empty() {
            self.volume_ids().await?
        } else {
            validate::resource_id("volume id", volume_id)?;
            vec![volume_id.to_string()]
        };
        let mut out = Vec::new();
        for id in ids {
            out.extend(
                self.manifests_of(&id)
                    .await?
                    .into_iter()
                    .map(|m| self.view(m)),
            );
        }
        Ok(out)
    }

    async fn find(&self, backup_id: &str) -> Result<Option<Manifest>, StorageError> {
        for volume_id in self.volume_ids().await? {
            if let Some(m) = self
                .manifests_of(&volume_id)
                .await?
                .into_iter()
                .find(|m| m.id == backup_id)
            {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    async fn get_manifest(&self, backup_id: &str) -> Result<Manifest, StorageError> {
        validate::resource_id("backup id", backup_id)?;
        self.find(backup_id)
            .await?
            .ok_or_else(|| StorageError::NotFound {
                what: "backup",
                id: backup_id.to_string(),
            })
    }

    /// Takes a backup of a volume: full, or incremental from its newest backup.
    pub async fn create(
        &self,
        id: &str,
        volume_id: &str,
        incremental: bool,
    ) -> Result<Backup, StorageError> {
        validate::resource_id("backup id", id)?;
        validate::resource_id("volume id", volume_id)?;
        let storage = &self.storage;
        let _guard = storage.locks.lock(volume_id).await;
        if let Some(existing) = self.find(id).await? {
            let same =
                existing.volume_id == volume_id && existing.base_backup_id.is_some() == incremental;
            if same {
                return Ok(self.view(existing));
            }
            return Err(StorageError::AlreadyExists(format!(
                "backup {id} already exists with a different spec (volume {}, {})",
                existing.volume_id,
                if existing.base_backup_id.is_some() {
                    "incremental"
                } else {
                    "full"
                }
            )));
        }
        let volume = storage.get_volume(volume_id).await?;
        if volume.replica_source.is_some() {
            return Err(StorageError::FailedPrecondition(format!(
                "volume {volume_id} is a replica; back up the volume where it runs, or promote the replica first"
            )));
        }
        let existing = self.manifests_of(volume_id).await?;
        let sequence = existing.last().map_or(1, |m| m.sequence + 1);
        let base = if incremental {
            let Some(newest) = existing.last() else {
                return Err(StorageError::FailedPrecondition(format!(
                    "volume {volume_id} has no backup to base an incremental one on; take a full backup"
                )));
            };
            let snapshot = storage.layout.backup_snapshot(volume_id, &newest.id);
            if !storage.zfs.exists(&snapshot).await? {
                return Err(StorageError::FailedPrecondition(format!(
                    "the snapshot of volume {volume_id}'s newest backup {} is gone (rolled back?); take a full backup",
                    newest.id
                )));
            }
            Some((newest.id.clone(), snapshot))
        } else {
            None
        };
        let snapshot = storage.layout.backup_snapshot(volume_id, id);
        storage.zfs.destroy_if_exists(&snapshot).await?;
        storage.zfs.snapshot(&snapshot).await?;
        let dir = self.volume_dir(volume_id);
        let file = format!("{id}.{STREAM_EXT}");
        let partial = dir.join(format!("{id}.{PARTIAL_EXT}"));
        let path = dir.join(&file);
        let written = async {
            durable::create_dir_all(&dir, 0o700)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
            let sum = self
                .write_stream(&snapshot, base.as_ref().map(|(_, s)| s.as_str()), &partial)
                .await?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(io_err(format!("cannot rename {}", partial.display())))?;
            durable::sync_dir(&dir).map_err(io_err(format!("cannot sync {}", dir.display())))?;
            let manifest = Manifest {
                id: id.to_string(),
                volume_id: volume_id.to_string(),
                volume_name: volume.record.name.clone(),
                snapshot: format!("{BACKUP_PREFIX}{id}"),
                base_backup_id: base.as_ref().map(|(b, _)| b.clone()),
                sequence,
                size_bytes: sum.byte_count,
                sha256: sum.sha256,
                volume_size_bytes: volume.record.size_bytes,
                created_at: store::now(),
                file: file.clone(),
            };
            let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StorageError::Io {
                context: "cannot encode the backup manifest".into(),
                source: std::io::Error::other(e),
            })?;
            let manifest_path = dir.join(format!("{id}.{MANIFEST_EXT}"));
            durable::write_atomic(&manifest_path, &json, 0o600)
                .map_err(io_err(format!("cannot write {}", manifest_path.display())))?;
            Ok::<_, StorageError>(manifest)
        }
        .await;
        let manifest = match written {
            Ok(m) => m,
            Err(err) => {
                let _ = tokio::fs::remove_file(&partial).await;
                let _ = tokio::fs::remove_file(&path).await;
                storage.undo_dataset(&snapshot).await;
                return Err(err);
            }
        };
        // Only the newest backup's snapshot is needed (the base of the next incremental).
        for older in existing {
            let name = storage.layout.backup_snapshot(volume_id, &older.id);
            if let Err(err) = storage.zfs.destroy_if_exists(&name).await {
                tracing::warn!(snapshot = %name, error = %mvirt_common::error::error_chain(&err), "cannot remove an older backup snapshot");
            }
        }
        storage.audit.audit(
            format!(
                "created {} backup {id} of volume {} ({} bytes)",
                if manifest.base_backup_id.is_some() {
                    "incremental"
                } else {
                    "full"
                },
                volume.record.name,
                manifest.size_bytes
            ),
            &[volume_id, id],
        );
        Ok(self.view(manifest))
    }

    /// `zfs send` into `partial`, synced; returns its checksum and size.
    async fn write_stream(
        &self,
        snapshot: &str,
        base: Option<&str>,
        partial: &Path,
    ) -> Result<zstream::StreamSum, StorageError> {
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true).mode(0o600);
            let file = options
                .open(partial)
                .map_err(io_err(format!("cannot create {}", partial.display())))?;
            tokio::fs::File::from_std(file)
        };
        let mut sender = Sender::start(snapshot, base)?;
        let werr = |e| StorageError::Io {
            context: format!("cannot write {}", partial.display()),
            source: e,
        };
        while let Some(chunk) = sender.next_chunk().await? {
            out.write_all(&chunk).await.map_err(&werr)?;
        }
        let sum = sender.finish().await?;
        out.flush()
            .await
            .map_err(io_err(format!("cannot write {}", partial.display())))?;
        out.sync_all()
            .await
            .map_err(io_err(format!("cannot sync {}", partial.display())))?;
        Ok(sum)
    }

    /// The ids that depend on `id` (its incrementals, theirs, …), in `manifests`.
    fn dependents(manifests: &[Manifest], id: &str) -> Vec<String> {
        let mut found: BTreeSet<String> = BTreeSet::from([id.to_string()]);
        // Sequence order: a base always comes before its increments.
        for m in manifests {
            if m.base_backup_id.as_ref().is_some_and(|b| found.contains(b)) {
                found.insert(m.id.clone());
            }
        }
        found.remove(id);
        manifests
            .iter()
            .filter(|m| found.contains(&m.id))
            .map(|m| m.id.clone())
            .collect()
    }

    /// Deletes a backup (and, with `with_dependents`, the incrementals based on it).
    pub async fn delete(
        &self,
        id: &str,
        with_dependents: bool,
    ) -> Result<Vec<String>, StorageError> {
        let manifest = self.get_manifest(id).await?;
        let volume_id = manifest.volume_id.clone();
        let _guard = self.storage.locks.lock(&volume_id).await;
        let manifests = self.manifests_of(&volume_id).await?;
        let dependents = Self::dependents(&manifests, id);
        if !dependents.is_empty() && !with_dependents {
            return Err(StorageError::FailedPrecondition(format!(
                "backup {id} has {} newer incremental backup(s) depending on it: {}; delete them first or delete with with_dependents",
                dependents.len(),
                dependents.join(", ")
            )));
        }
        let mut doomed: Vec<&Manifest> = manifests
            .iter()
            .filter(|m| m.id == id || dependents.contains(&m.id))
            .collect();
        doomed.sort_by_key(|m| std::cmp::Reverse(m.sequence));
        let mut deleted = Vec::new();
        for m in doomed {
            self.remove_backup(m).await?;
            deleted.push(m.id.clone());
        }
        self.storage.audit.audit(
            format!(
                "deleted backup(s) {} of volume {}",
                deleted.join(", "),
                manifest.volume_name
            ),
            &[&volume_id, id],
        );
        Ok(deleted)
    }

    /// Removes one backup: manifest first (it stops existing), then its stream and snapshot.
    async fn remove_backup(&self, m: &Manifest) -> Result<(), StorageError> {
        let dir = self.volume_dir(&m.volume_id);
        for name in [format!("{}.{MANIFEST_EXT}", m.id), m.file.clone()] {
            let path = dir.join(name);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("cannot remove {}", path.display()))(e)),
            }
            durable::sync_dir(&dir).map_err(io_err(format!("cannot sync {}", dir.display())))?;
        }
        let snapshot = self.storage.layout.backup_snapshot(&m.volume_id, &m.id);
        match self.storage.zfs.destroy(&snapshot, false).await {
            Ok(()) | Err(ZfsError::NotFound(_)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Keeps the newest `keep_last` backups of a volume and every backup they depend on;
    /// deletes the others (newest first). Returns the deleted ids.
    pub async fn prune(
        &self,
        volume_id: &str,
        keep_last: u32,
    ) -> Result<Vec<String>, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        if keep_last == 0 {
            return Err(StorageError::InvalidArgument(
                "keep_last must be at least 1 (DeleteBackup with with_dependents removes a whole chain)".into(),
            ));
        }
        let _guard = self.storage.locks.lock(volume_id).await;
        let manifests = self.manifests_of(volume_id).await?;
        let by_id: BTreeMap<&str, &Manifest> =
            manifests.iter().map(|m| (m.id.as_str(), m)).collect();
        let mut keep: BTreeSet<&str> = BTreeSet::new();
        for m in manifests.iter().rev().take(keep_last as usize) {
            let mut at = Some(m);
            while let Some(m) = at {
                if !keep.insert(m.id.as_str()) {
                    break;
                }
                at = m
                    .base_backup_id
                    .as_deref()
                    .and_then(|b| by_id.get(b).copied());
            }
        }
        let mut deleted = Vec::new();
        for m in manifests.iter().rev() {
            if !keep.contains(m.id.as_str()) {
                self.remove_backup(m).await?;
                deleted.push(m.id.clone());
            }
        }
        if !deleted.is_empty() {
            self.storage.audit.audit(
                format!(
                    "pruned {} backup(s) of volume {volume_id}, kept the newest {keep_last} and their bases",
                    deleted.len()
                ),
                &[volume_id],
            );
        }
        Ok(deleted)
    }

    /// Restores backup `backup_id` (its whole chain) into the new volume `volume_id`.
    pub async fn restore(
        &self,
        backup_id: &str,
        volume_id: &str,
        name: &str,
    ) -> Result<Volume, StorageError> {
        validate::resource_id("volume id", volume_id)?;
        validate::dns_label("volume name", name)?;
        let target = self.get_manifest(backup_id).await?;
        let manifests = self.manifests_of(&target.volume_id).await?;
        // The chain, full first.
        let mut chain = vec![target.clone()];
        while let Some(base) = chain.last().and_then(|m| m.base_backup_id.clone()) {
            let Some(m) = manifests.iter().find(|m| m.id == base) else {
                return Err(StorageError::FailedPrecondition(format!(
                    "backup {} needs backup {base}, which is missing",
                    chain.last().map(|m| m.id.as_str()).unwrap_or_default()
                )));
            };
            chain.push(m.clone());
        }
        chain.reverse();
        // Every file checked before anything is created.
        let dir = self.volume_dir(&target.volume_id);
        for m in &chain {
            let path = dir.join(&m.file);
            let sum = zstream::hash_file(&path).await.map_err(|e| {
                StorageError::DataLoss(format!(
                    "backup file {} of backup {} cannot be read: {e}",
                    path.display(),
                    m.id
                ))
            })?;
            if sum.byte_count != m.size_bytes || sum.sha256 != m.sha256 {
                return Err(StorageError::DataLoss(format!(
                    "backup file {} of backup {} is corrupt: the manifest says {} bytes with sha256 {}, the file has {} bytes with sha256 {}",
                    path.display(),
                    m.id,
                    m.size_bytes,
                    m.sha256,
                    sum.byte_count,
                    sum.sha256
                )));
            }
        }
        let storage = &self.storage;
        let _guard = storage.locks.lock(volume_id).await;
        let dataset = storage.layout.volume_dataset(volume_id);
        if storage.store.get_volume(volume_id)?.is_some() || storage.zfs.exists(&dataset).await? {
            return Err(StorageError::AlreadyExists(format!(
                "volume {volume_id} already exists; a backup is restored into a new volume"
            )));
        }
        storage.check_volume_name(name)?;
        let staged = storage.layout.receive_staging(volume_id);
        storage.zfs.destroy_if_exists(&staged).await?;
        let result = async {
            for (i, m) in chain.iter().enumerate() {
                self.replay(&dir.join(&m.file), m, &staged, i > 0).await?;
            }
            for snapshot in storage.zfs.snapshots(&staged).await? {
                storage.zfs.destroy(&snapshot, false).await?;
            }
            let image = storage
                .layout
                .receive_staging_dir(volume_id)
                .join(layout::IMAGE_FILE);
            let size = tokio::fs::metadata(&image)
                .await
                .map_err(io_err(format!("cannot stat {}", image.display())))?
                .len();
            storage.zfs.set(&staged, PROP_ID, volume_id).await?;
            storage.zfs.set(&staged, PROP_KIND, "volume").await?;
            Ok::<_, StorageError>(size)
        }
        .await;
        let size = match result {
            Ok(size) => size,
            Err(err) => {
                storage.undo_dataset(&staged).await;
                return Err(err);
            }
        };
        if let Err(err) = storage.zfs.rename(&staged, &dataset).await {
            storage.undo_dataset(&staged).await;
            return Err(err.into());
        }
        let record = VolumeRecord {
            id: volume_id.to_string(),
            name: name.to_string(),
            size_bytes: size,
            spec_size_bytes: size,
            template_id: None,
            created_at: store::now(),
        };
        if let Err(err) = storage.store.insert_volume(&record) {
            storage.undo_dataset(&dataset).await;
            return Err(err.into());
        }
        storage.audit.audit(
            format!(
                "restored backup {backup_id} of volume {} into new volume {name} ({} file(s))",
                target.volume_name,
                chain.len()
            ),
            &[volume_id, backup_id, &target.volume_id],
        );
        storage.get_volume(volume_id).await
    }

    /// Feeds one stream file into `zfs receive`, verified against its manifest as it goes.
    async fn replay(
        &self,
        path: &Path,
        m: &Manifest,
        staged: &str,
        incremental: bool,
    ) -> Result<(), StorageError> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        let mut receiver = Receiver::start(staged, incremental)?;
        loop {
            let mut buf = bytes::BytesMut::with_capacity(zstream::CHUNK);
            let n = match file.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    receiver.abort().await;
                    return Err(io_err(format!("cannot read {}", path.display()))(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(err) = receiver.push(buf.freeze()).await {
                receiver.abort().await;
                return Err(err);
            }
        }
        receiver
            .finish(&m.sha256, m.size_bytes)
            .await
            .map_err(|err| match err {
                StorageError::DataLoss(msg) => {
                    StorageError::DataLoss(format!("backup file {}: {msg}", path.display()))
                }
                other => other,
            })?;
        Ok(())
    }

    /// Removes what interrupted backups left: `.partial` and `.tmp` files, streams without a
    /// manifest, and `@backup-*` snapshots of volumes without a manifest for them.
    pub async fn recover(&self) -> Result<usize, StorageError> {
        let mut removed = 0;
        for volume_id in self.volume_ids().await? {
            let dir = self.volume_dir(&volume_id);
            let manifests = self.manifests_of(&volume_id).await?;
            let files: BTreeSet<&str> = manifests.iter().map(|m| m.file.as_str()).collect();
            let mut entries = tokio::fs::read_dir(&dir)
                .await
                .map_err(io_err(format!("cannot read {}", dir.display())))?;
            let mut doomed = Vec::new();
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(io_err(format!("cannot read {}", dir.display())))?
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let leftover = name.ends_with(".partial")
                    || name.ends_with(".tmp")
                    || (name.ends_with(&format!(".{STREAM_EXT}"))
                        && !files.contains(name.as_str()));
                if leftover {
                    doomed.push(entry.path());
                }
            }
            for path in doomed {
                tracing::warn!(file = %path.display(), "removing what an interrupted backup left");
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(io_err(format!("cannot remove {}", path.display())))?;
                removed += 1;
            }
            durable::sync_dir(&dir).map_err(io_err(format!("cannot sync {}", dir.display())))?;
        }
        let volumes = self.storage.layout.volumes_dataset();
        let all = self.storage.zfs.get(&volumes, &["type"], true).await?;
        let prefix = format!("{volumes}/");
        for name in all.keys() {
            let Some((volume_id, backup_id)) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('@'))
                .and_then(|(v, snap)| Some((v, snap.strip_prefix(BACKUP_PREFIX)?)))
            else {
                continue;
            };
            if validate::resource_id("volume id", volume_id).is_err()
                || validate::resource_id("backup id", backup_id).is_err()
            {
                continue;
            }
            let manifest = self
                .volume_dir(volume_id)
                .join(format!("{backup_id}.{MANIFEST_EXT}"));
            if !manifest.exists() {
                tracing::warn!(snapshot = %name, "removing the snapshot of an interrupted backup");
                self.storage.zfs.destroy_if_exists(name).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, base: Option<&str>, sequence: u64) -> Manifest {
        Manifest {
            id: id.into(),
            volume_id: "v".into(),
            volume_name: "n".into(),
            snapshot: format!("backup-{id}"),
            base_backup_id: base.map(str::to_string),
            sequence,
            size_bytes: 1,
            sha256: String::new(),
            volume_size_bytes: 1,
            created_at: 0,
            file: format!("{id}.zstream"),
        }
    }

    #[test]
    fn dependents_follow_the_chain_and_branches() {
        // f ← a ← b, f ← c (a branch after a deleted tip), g (another full) ← h.
        let all = vec![
            m("f", None, 1),
            m("a", Some("f"), 2),
            m("b", Some("a"), 3),
            m("c", Some("f"), 4),
            m("g", None, 5),
            m("h", Some("g"), 6),
        ];
        assert_eq!(Backups::dependents(&all, "f"), vec!["a", "b", "c"]);
        assert_eq!(Backups::dependents(&all, "a"), vec!["b"]);
        assert!(Backups::dependents(&all, "b").is_empty());
        assert_eq!(Backups::dependents(&all, "g"), vec!["h"]);
    }
}
