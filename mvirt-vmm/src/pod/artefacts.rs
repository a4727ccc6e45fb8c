//! The pod artefacts: the kernel and initramfs every pod microVM boots, built by mvirt-podimage
//! into one directory with a `manifest.json` that names their version and digests. They are
//! verified (every file against its digest) when first used and whenever the manifest changes;
//! the version is what a pod records as booted and what `GetSystemInfo` reports.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use mvirt_podimage::image::{Manifest, INITRAMFS, MANIFEST, VMLINUZ};

#[derive(Debug, thiserror::Error)]
pub enum ArtefactsError {
    #[error("cannot read the pod artefacts in {dir} (build them with mvirt-pod-image)")]
    Unreadable {
        dir: String,
        #[source]
        source: Box<mvirt_podimage::image::BuildError>,
    },
    #[error("the pod artefacts in {dir} fail verification")]
    Damaged {
        dir: String,
        #[source]
        source: Box<mvirt_podimage::image::BuildError>,
    },
    #[error("the manifest in {dir} does not list {file}")]
    Incomplete { dir: String, file: &'static str },
    #[error("verification task failed: {0}")]
    Task(String),
}

/// Verified pod artefacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artefacts {
    pub version: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The manifest's modification time when it was verified.
    manifest_mtime: Option<SystemTime>,
}

fn manifest_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(MANIFEST))
        .and_then(|m| m.modified())
        .ok()
}

impl Artefacts {
    /// Reads and verifies the artefacts in `dir`, unless `cached` was verified from the same
    /// manifest (same modification time: mvirt-podimage writes a new manifest last, by rename).
    pub fn load(dir: &Path, cached: Option<Artefacts>) -> Result<Artefacts, ArtefactsError> {
        let mtime = manifest_mtime(dir);
        if let Some(cached) = cached {
            if mtime.is_some() && cached.manifest_mtime == mtime {
                return Ok(cached);
            }
        }
        let name = || dir.display().to_string();
        let manifest = Manifest::read(dir).map_err(|source| ArtefactsError::Unreadable {
            dir: name(),
            source: Box::new(source),
        })?;
        for file in [VMLINUZ, INITRAMFS] {
            if !manifest.files.contains_key(file) {
                return Err(ArtefactsError::Incomplete { dir: name(), file });
            }
        }
        manifest
            .verify(dir)
            .map_err(|source| ArtefactsError::Damaged {
                dir: name(),
                source: Box::new(source),
            })?;
        Ok(Artefacts {
            version: manifest.version,
            kernel: dir.join(VMLINUZ),
            initramfs: dir.join(INITRAMFS),
            manifest_mtime: mtime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_artefacts_say_where_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = Artefacts::load(dir.path(), None).unwrap_err();
        let text = mvirt_common::error::error_chain(&err);
        assert!(text.contains("mvirt-pod-image"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
    }
}
