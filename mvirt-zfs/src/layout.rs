//! Where things live: dataset names and file paths under the configured parent dataset.
//!
//! ```text
//! <pool>/<parent>/volumes/<volume id>/disk.raw      one dataset per volume
//! <pool>/<parent>/templates/<template id>/disk.raw  one dataset per template (+ @base snapshot)
//!                                        /vmlinuz, /initramfs, /cmdline   optional direct boot
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

/// ZFS user properties that label datasets with mvirt ids.
pub const PROP_ID: &str = "mvirt:id";
pub const PROP_KIND: &str = "mvirt:kind";

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
