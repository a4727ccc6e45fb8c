//! Making file-system changes survive a power cut, not only a crash of the process.
//!
//! An `fsync` of a file makes its content durable, not its name: a file that was created or
//! renamed into place is durable under that name only once its directory is synced too
//! (POSIX; ext4 and XFS may lose such a name after a power cut). mvirt-api's power-cut test
//! (`mvirt-api/tests/powercut.rs`, on `mvirt_testsupport::powercut`) drops every name whose
//! directory was not synced; it found the cluster CA, member certificates and `member.json`
//! lost that way.

use std::io::Write;
use std::path::Path;

/// `fsync`s the directory `dir` (its entries: creates, renames, unlinks in it).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `fsync`s the directory holding `path` (after `path` was created, renamed or removed).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Creates `dir` and any missing parents, syncing each parent a directory was created in, so
/// that the whole path survives a power cut.
pub fn create_dir_all(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent, 0o755)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => sync_parent(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `contents` atomically and durably: a temporary file (`mode`), written
/// and synced, renamed over `path`, then the directory synced.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_atomically_with_the_mode_and_creates_nested_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("x/y/z");
        create_dir_all(&nested, 0o700).unwrap();
        create_dir_all(&nested, 0o700).unwrap();
        let mode = std::fs::metadata(&nested).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let f = nested.join("secret");
        write_atomic(&f, b"one", 0o600).unwrap();
        write_atomic(&f, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!f.with_extension("tmp").exists());
        sync_parent(&f).unwrap();
        assert!(sync_dir(&dir.path().join("missing")).is_err());
    }
}
