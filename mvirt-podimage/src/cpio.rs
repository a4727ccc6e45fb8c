//! A deterministic `cpio -H newc` writer and the file tree an initramfs is made of.
//!
//! An [`Archive`] maps guest paths to entries (directories, files, copies of host files,
//! symlinks, character devices). [`Archive::to_bytes`] adds every missing parent directory,
//! then writes the entries in sorted path order (so a directory precedes its contents) with
//! inode numbers counted from 1, mtime 0 and owner root: the same tree always gives the same
//! bytes, whatever the host's clock, umask or file owners. Host files are read at that moment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Failure to assemble an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is too large for a newc archive ({size} bytes; the format stores 32 bits)")]
    TooLarge { path: String, size: usize },
}

/// One entry of an [`Archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        mode: u32,
    },
    File {
        contents: Vec<u8>,
        mode: u32,
    },
    /// A host file copied in when the archive is written.
    HostFile {
        path: PathBuf,
        mode: u32,
    },
    Symlink {
        target: String,
    },
    CharDev {
        major: u32,
        minor: u32,
        mode: u32,
    },
}

/// A file tree written as a newc archive, see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// `a/b/c` for `/a/b/c`, `a/b/c/` or `a/b/c`.
fn normalise(guest_path: &str) -> String {
    guest_path.trim_matches('/').to_string()
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an entry at `guest_path`.
    pub fn insert(&mut self, guest_path: &str, entry: Entry) {
        self.entries.insert(normalise(guest_path), entry);
    }

    /// A directory with mode 0755.
    pub fn dir(&mut self, guest_path: &str) {
        self.insert(guest_path, Entry::Dir { mode: 0o755 });
    }

    /// A file with the given contents and permission bits.
    pub fn file(&mut self, guest_path: &str, contents: Vec<u8>, mode: u32) {
        self.insert(guest_path, Entry::File { contents, mode });
    }

    /// A copy of a host file (its contents; mode and owner are the given ones, not the host's).
    pub fn host_file(&mut self, guest_path: &str, host_path: &Path, mode: u32) {
        self.insert(
            guest_path,
            Entry::HostFile {
                path: host_path.to_path_buf(),
                mode,
            },
        );
    }

    pub fn symlink(&mut self, guest_path: &str, target: &str) {
        self.insert(
            guest_path,
            Entry::Symlink {
                target: target.to_string(),
            },
        );
    }

    pub fn char_dev(&mut self, guest_path: &str, major: u32, minor: u32, mode: u32) {
        self.insert(guest_path, Entry::CharDev { major, minor, mode });
    }

    pub fn contains(&self, guest_path: &str) -> bool {
        self.entries.contains_key(&normalise(guest_path))
    }

    /// Every path in the archive (without the leading `/`), sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The archive's bytes (uncompressed newc; parents of every entry included).
    pub fn to_bytes(&self) -> Result<Vec<u8>, CpioError> {
        let mut entries = self.entries.clone();
        let parents: Vec<String> = entries
            .keys()
            .flat_map(|p| {
                Path::new(p)
                    .ancestors()
                    .skip(1)
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(|d| d.to_string_lossy().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for dir in parents {
            entries.entry(dir).or_insert(Entry::Dir { mode: 0o755 });
        }

        let mut writer = CpioWriter::default();
        // BTreeMap order puts "a" before "a/b", so directories precede their contents.
        for (path, entry) in &entries {
            match entry {
                Entry::Dir { mode } => writer.entry(path, S_IFDIR | mode, (0, 0), &[])?,
                Entry::File { contents, mode } => {
                    writer.entry(path, S_IFREG | mode, (0, 0), contents)?
                }
                Entry::HostFile { path: host, mode } => {
                    let contents = std::fs::read(host).map_err(|source| CpioError::Read {
                        path: host.clone(),
                        source,
                    })?;
                    writer.entry(path, S_IFREG | mode, (0, 0), &contents)?
                }
                Entry::Symlink { target } => {
                    writer.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())?
                }
                Entry::CharDev { major, minor, mode } => {
                    writer.entry(path, S_IFCHR | mode, (*major, *minor), &[])?
                }
            }
        }
        Ok(writer.finish())
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

/// Writes the `newc` (SVR4, no CRC) format: fixed owner (root), mtime 0, inodes counted from 1.
#[derive(Debug, Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    /// Appends one entry; `rdev` is the (major, minor) of a device node.
    pub fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            path: name.to_string(),
            size: data.len(),
        })?;
        self.ino += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        // The trailer has no data: it cannot be too large.
        let _ = self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn extract(bytes: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .expect("cpio (scripts/setup.sh installs it)");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        assert!(child.wait().unwrap().success());
        dir
    }

    #[test]
    fn the_cpio_writer_produces_an_archive_cpio_extracts() {
        let mut writer = CpioWriter::default();
        writer.entry("etc", S_IFDIR | 0o755, (0, 0), &[]).unwrap();
        writer
            .entry("etc/hello", S_IFREG | 0o644, (0, 0), b"hi there\n")
            .unwrap();
        writer
            .entry("etc/link", S_IFLNK | 0o777, (0, 0), b"hello")
            .unwrap();
        let bytes = writer.finish();
        assert_eq!(bytes.len() % 4, 0);
        let dir = extract(&bytes);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/hello")).unwrap(),
            "hi there\n"
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("etc/link")).unwrap(),
            PathBuf::from("hello")
        );
    }

    #[test]
    fn an_archive_adds_parents_and_is_the_same_whatever_the_insertion_order() {
        let host = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(host.path(), b"from the host").unwrap();
        let mut a = Archive::new();
        a.file("/a/b/c.txt", b"c".to_vec(), 0o600);
        a.host_file("/x/host", host.path(), 0o755);
        a.symlink("/a/l", "b/c.txt");
        let mut b = Archive::new();
        b.symlink("a/l", "b/c.txt");
        b.host_file("x/host/", host.path(), 0o755);
        b.file("a/b/c.txt", b"c".to_vec(), 0o600);
        let bytes = a.to_bytes().unwrap();
        assert_eq!(bytes, b.to_bytes().unwrap());

        let dir = extract(&bytes);
        assert_eq!(
            std::fs::read(dir.path().join("x/host")).unwrap(),
            b"from the host"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("a/b/c.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.path().join("a/b").is_dir());
    }

    #[test]
    fn a_missing_host_file_is_an_error_naming_it() {
        let mut a = Archive::new();
        a.host_file("/f", Path::new("/nonexistent/mvirt-podimage"), 0o644);
        match a.to_bytes() {
            Err(CpioError::Read { path, .. }) => {
                assert_eq!(path, PathBuf::from("/nonexistent/mvirt-podimage"))
            }
            other => panic!("{other:?}"),
        }
    }
}
