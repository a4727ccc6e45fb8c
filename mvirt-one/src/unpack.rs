//! Unpacking OCI layers onto a root filesystem, whiteouts included.
//!
//! Layers are applied in manifest order. In each layer, a `.wh.<name>` entry deletes `<name>`
//! from the layers below, and a `.wh..wh..opq` entry makes its directory opaque: whatever lower
//! layers put there is removed, while what this same layer puts there stays (the tar order of
//! the marker and its siblings is not specified, so entries of the current layer are tracked).
//! Paths are confined to the target directory by the `tar` crate's `unpack_in`; whiteouts and
//! the replacement of an existing path (file by directory and back) are checked here, since
//! they delete before `tar` looks: nothing outside the root is ever removed, also not through
//! a symlink the layer itself planted. A layer is read twice: first its raw headers, so that
//! GNU long names/links and pax extension records (which `tar` buffers whole in memory) larger
//! than [`MAX_METADATA_ENTRY`] are refused before anything is buffered; then it is applied.
//! The layers come from a registry, so they are fuzzed (`tests/fuzz_oci.rs`).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The largest GNU long name/link or pax extension record a layer may carry. Linux paths are
/// at most 4 KiB; pax records also carry xattrs, which are not unpacked.
pub const MAX_METADATA_ENTRY: u64 = 1 << 20;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
}

impl LayerCompression {
    /// The compression of a layer media type, or `None` when it is not supported (zstd,
    /// foreign layers).
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Self::Gzip),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot read layer {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("layer entry {entry:?} escapes the root filesystem")]
    UnsafePath { entry: PathBuf },
    #[error("whiteout {entry:?} does not name a file")]
    BadWhiteout { entry: PathBuf },
    #[error("layer has a {size}-byte long name or pax record (at most {MAX_METADATA_ENTRY})")]
    OversizedMetadata { size: u64 },
    #[error("cannot apply layer entry {entry:?}")]
    Apply {
        entry: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Normalises an entry path to a relative path without `.`/`..`, refusing escapes.
fn relative_entry_path(path: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::UnsafePath {
                    entry: path.to_path_buf(),
                })
            }
        }
    }
    Ok(out)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `path` (relative to the root) stays inside the root once symlinks of its parent
/// directories are followed; whiteouts must never delete outside the image.
fn parent_is_inside(root: &Path, relative: &Path) -> bool {
    let Some(parent) = relative.parent() else {
        return true;
    };
    let Ok(root_real) = root.canonicalize() else {
        return false;
    };
    match root.join(parent).canonicalize() {
        Ok(real) => real.starts_with(&root_real),
        // A parent that does not exist has nothing to delete below it.
        Err(_) => true,
    }
}

fn open_layer(blob: &Path, compression: LayerCompression) -> Result<Box<dyn Read>, UnpackError> {
    let file = File::open(blob).map_err(|source| UnpackError::Read {
        path: blob.to_path_buf(),
        source,
    })?;
    Ok(match compression {
        LayerCompression::None => Box::new(BufReader::new(file)),
        LayerCompression::Gzip => Box::new(flate2::read::GzDecoder::new(BufReader::new(file))),
    })
}

/// Refuses a layer whose long-name or pax records would make `tar` buffer more than
/// [`MAX_METADATA_ENTRY`] bytes (raw entries: nothing is buffered here).
fn check_metadata_sizes(blob: &Path, compression: LayerCompression) -> Result<(), UnpackError> {
    let read_err = |source| UnpackError::Read {
        path: blob.to_path_buf(),
        source,
    };
    let mut archive = tar::Archive::new(open_layer(blob, compression)?);
    for entry in archive.entries().map_err(read_err)?.raw(true) {
        let entry = entry.map_err(read_err)?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions() {
            let size = entry.header().entry_size().map_err(read_err)?;
            if size > MAX_METADATA_ENTRY {
                return Err(UnpackError::OversizedMetadata { size });
            }
        }
    }
    Ok(())
}

/// The path a whiteout file name hides: `.wh.<name>` in the same directory, where `<name>`
/// must be one plain file name (not empty, `.` or `..`, which would hide the directory itself
/// or its parent).
fn whiteout_target(relative: &Path, hidden: &str) -> Option<PathBuf> {
    let mut components = Path::new(hidden).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(name)), None) => Some(relative.with_file_name(name)),
        _ => None,
    }
}

/// Applies one layer blob on top of `root`.
pub fn unpack_layer(
    blob: &Path,
    compression: LayerCompression,
    root: &Path,
) -> Result<(), UnpackError> {
    check_metadata_sizes(blob, compression)?;
    let mut archive = tar::Archive::new(open_layer(blob, compression)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);

    let read_err = |source| UnpackError::Read {
        path: blob.to_path_buf(),
        source,
    };
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut opaque_dirs: Vec<PathBuf> = Vec::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw_path = entry.path().map_err(read_err)?.into_owned();
        let relative = relative_entry_path(&raw_path)?;
        let Some(file_name) = relative.file_name().and_then(|n| n.to_str()) else {
            continue; // the root directory itself
        };
        if file_name == OPAQUE_MARKER {
            opaque_dirs.push(relative.parent().map(Path::to_path_buf).unwrap_or_default());
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let target =
                whiteout_target(&relative, hidden).ok_or_else(|| UnpackError::BadWhiteout {
                    entry: raw_path.clone(),
                })?;
            if !parent_is_inside(root, &target) {
                return Err(UnpackError::UnsafePath { entry: raw_path });
            }
            remove_any(&root.join(&target)).map_err(|source| UnpackError::Apply {
                entry: raw_path.clone(),
                source,
            })?;
            continue;
        }
        // A directory replacing a file or a file replacing a directory. The parent may be a
        // symlink out of the root (planted by this or a lower layer): `tar` refuses to write
        // through it, but the removal here would happen first.
        if !parent_is_inside(root, &relative) {
            return Err(UnpackError::UnsafePath { entry: raw_path });
        }
        let dest = root.join(&relative);
        if let Ok(meta) = std::fs::symlink_metadata(&dest) {
            let entry_is_dir = entry.header().entry_type().is_dir();
            if meta.is_dir() != entry_is_dir || (!entry_is_dir && meta.file_type().is_symlink()) {
                remove_any(&dest).map_err(|source| UnpackError::Apply {
                    entry: raw_path.clone(),
                    source,
                })?;
            }
        }
        let unpacked = entry.unpack_in(root).map_err(|source| UnpackError::Apply {
            entry: raw_path.clone(),
            source,
        })?;
        if !unpacked {
            return Err(UnpackError::UnsafePath { entry: raw_path });
        }
        let mut ancestor = relative.clone();
        created.insert(ancestor.clone());
        while ancestor.pop() {
            created.insert(ancestor.clone());
        }
    }
    for dir in opaque_dirs {
        if !parent_is_inside(root, &dir.join("x")) {
            return Err(UnpackError::UnsafePath { entry: dir });
        }
        let full = root.join(&dir);
        let Ok(children) = std::fs::read_dir(&full) else {
            continue;
        };
        for child in children.flatten() {
            let relative_child = dir.join(child.file_name());
            if !created.contains(&relative_child) {
                remove_any(&child.path()).map_err(|source| UnpackError::Apply {
                    entry: relative_child.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match content {
                Some(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder.append_data(&mut header, path, *data).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    header.set_cksum();
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn apply(root: &Path, tar: Vec<u8>) -> Result<(), UnpackError> {
        let blob = root.parent().unwrap().join(format!(
            "layer-{}.tar",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::write(&blob, tar).unwrap();
        unpack_layer(&blob, LayerCompression::None, root)
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        apply(
            &root,
            layer(&[
                ("etc/", None),
                ("etc/keep", Some(b"k")),
                ("etc/gone", Some(b"g")),
                ("data/", None),
                ("data/old", Some(b"o")),
            ]),
        )
        .unwrap();
        // The opaque marker comes after this layer's own file on purpose.
        apply(
            &root,
            layer(&[
                ("etc/.wh.gone", Some(b"")),
                ("data/new", Some(b"n")),
                ("data/.wh..wh..opq", Some(b"")),
            ]),
        )
        .unwrap();
        assert!(root.join("etc/keep").exists());
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("data/old").exists());
        assert_eq!(std::fs::read(root.join("data/new")).unwrap(), b"n");
        assert!(!root.join("data/.wh..wh..opq").exists());
        assert!(!root.join("etc/.wh.gone").exists());
    }

    #[test]
    fn entries_escaping_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(1);
        header.set_mode(0o644);
        // Header::set_path refuses "..", so write the raw name bytes.
        let name = b"../evil";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        let err = apply(&root, builder.into_inner().unwrap()).unwrap_err();
        assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err:?}");
        assert!(!dir.path().join("evil").exists());
    }
}
