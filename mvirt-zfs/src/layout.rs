//! Where things live: dataset names and file paths under the configured parent dataset.
//!
//! ```text
//! <pool>/<parent>/volumes/<volume id>/disk.raw      one dataset per volume
//! <pool>/<parent>/templates/<template id>/disk.raw  one dataset per template (+ @base snapshot)
//!                                        /vmlinuz, /initramfs, /cmdline   optional direct boot
//! <pool>/<parent>/staging/<volume id>.new           copy of a clone being made independent
//! <pool>/<parent>/staging/<volume id>.old           the clone it replaces, until destroyed
//! <pool>/<parent>/staging/<volume id>.recv          a stream being received (replica, restore)
//! ```
//! Ids are validated UUIDs before they get here, so they are safe in dataset names and paths.

use std::path::{Path, PathBuf};

/// The image file in every volume and template dataset.
pub const IMAGE_FILE: &str = "disk.raw";
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRAMFS_FILE: &str = "initramfs";
pub const CMDLINE_FILE: &str = "cmdline";
/// A qcow2 download waiting to be converted (removed before the @base snapshot).
pub const STAGING_FILE: &str = ".import.qcow2";
/// The snapshot every template is cloned from.
pub const BASE_SNAPSHOT: &str = "base";

/// The snapshot a clone is copied from when it is made independent of its template.
pub const DETACH_SNAPSHOT: &str = "mvirt-detach";

/// Replication snapshots are `volumes/<id>@repl-<snapshot id>`.
pub const REPLICATION_PREFIX: &str = "repl-";
/// Backup snapshots are `volumes/<id>@backup-<backup id>` (the newest backup's stays).
pub const BACKUP_PREFIX: &str = "backup-";
/// Set (to the sender's description) on a volume received from another node until promoted.
pub const PROP_REPLICA: &str = "mvirt:replica";

/// ZFS user properties that label datasets with mvirt ids.
pub const PROP_ID: &str = "mvirt:id";
pub const PROP_KIND: &str = "mvirt:kind";
/// Set to `ready` on a staged copy once it is complete (see `storage::Storage::detach_clone`).
pub const PROP_DETACH: &str = "mvirt:detach";
pub const DETACH_READY: &str = "ready";

/// Dataset and path naming for one parent dataset.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<pool>/<parent>`.
    pub root: String,
    /// Where `root` is mounted.
    pub mountpoint: PathBuf,
}

impl Layout {
    pub fn volumes_dataset(&self) -> String {
        format!("{}/volumes", self.root)
    }
    pub fn templates_dataset(&self) -> String {
        format!("{}/templates", self.root)
    }
    pub fn staging_dataset(&self) -> String {
        format!("{}/staging", self.root)
    }
    /// Where the independent copy of volume `id` is received.
    pub fn detach_new(&self, id: &str) -> String {
        format!("{}/staging/{id}.new", self.root)
    }
    /// Where the clone of volume `id` waits to be destroyed once its copy is in place.
    pub fn detach_old(&self, id: &str) -> String {
        format!("{}/staging/{id}.old", self.root)
    }
    /// Where a stream is received (a new replica, a restored backup) before it takes its name.
    pub fn receive_staging(&self, id: &str) -> String {
        format!("{}/staging/{id}.recv", self.root)
    }
    /// Where [`Layout::receive_staging`] is mounted.
    pub fn receive_staging_dir(&self, id: &str) -> PathBuf {
        self.mountpoint.join("staging").join(format!("{id}.recv"))
    }
    pub fn replication_snapshot(&self, volume_id: &str, snapshot_id: &str) -> String {
        format!(
            "{}/volumes/{volume_id}@{REPLICATION_PREFIX}{snapshot_id}",
            self.root
        )
    }
    pub fn backup_snapshot(&self, volume_id: &str, backup_id: &str) -> String {
        format!(
            "{}/volumes/{volume_id}@{BACKUP_PREFIX}{backup_id}",
            self.root
        )
    }
    pub fn volume_dataset(&self, id: &str) -> String {
        format!("{}/volumes/{id}", self.root)
    }
    pub fn template_dataset(&self, id: &str) -> String {
        format!("{}/templates/{id}", self.root)
    }
    pub fn volume_snapshot(&self, volume_id: &str, snapshot_id: &str) -> String {
        format!("{}/volumes/{volume_id}@{snapshot_id}", self.root)
    }
    pub fn template_base(&self, id: &str) -> String {
        format!("{}/templates/{id}@{BASE_SNAPSHOT}", self.root)
    }
    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.mountpoint.join("volumes").join(id)
    }
    pub fn template_dir(&self, id: &str) -> PathBuf {
        self.mountpoint.join("templates").join(id)
    }
}

/// A file path if the file exists, else an empty string (proto convention for "absent").
pub fn existing(path: &Path) -> String {
    if path.exists() {
        path.display().to_string()
    } else {
        String::new()
    }
}
