//! Templates: read, list and delete (detaching the volumes cloned from them), clone a
//! volume from one, promote a volume's snapshot to one.

use std::collections::BTreeMap;

use mvirt_common::validate;

use super::{
    io_err, processes_holding, set_image_len, validate_size, DeletedTemplate, Storage,
    StorageError, Template, Volume,
};
use crate::layout::{self, PROP_ID, PROP_KIND};
use crate::store::{self, TemplateRecord, TemplateState, VolumeRecord};
use crate::zfs::ZfsError;

impl Storage {
    pub(super) fn template_record(&self, id: &str) -> Result<TemplateRecord, StorageError> {
        validate::resource_id("template id", id)?;
        self.store
            .get_template(id)?
            .ok_or_else(|| StorageError::NotFound {
                what: "template",
                id: id.to_string(),
            })
    }

    /// Number of datasets cloned from each template's @base, by template id.
    pub(super) async fn clone_counts(&self) -> Result<BTreeMap<String, u32>, StorageError> {
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

    pub(super) fn template_view(&self, record: TemplateRecord, clone_count: u32) -> Template {
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
    pub(super) async fn detach_clone(
        &self,
        volume_id: &str,
        template_id: &str,
    ) -> Result<(), StorageError> {
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
    pub(super) async fn finish_detach(&self, volume_id: &str) {
        let dataset = self.layout.volume_dataset(volume_id);
        self.undo_dataset(&self.layout.detach_old(volume_id)).await;
        self.undo_dataset(&format!("{dataset}@{}", layout::DETACH_SNAPSHOT))
            .await;
        if let Err(err) = self.zfs.inherit(&dataset, layout::PROP_DETACH).await {
            tracing::warn!(volume_id, error = %mvirt_common::error::error_chain(&err), "cannot clear the detach marker");
        }
    }

    pub(super) async fn check_not_in_use(
        &self,
        volume_id: &str,
        doing: &str,
    ) -> Result<(), StorageError> {
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
}
