//! The shared libraries a dynamically linked binary needs at run time, as `ldd` names them.
//!
//! Each library goes into the image at the path `ldd` prints (the loader at
//! `/lib64/ld-linux-x86-64.so.2`, glibc under `/lib/x86_64-linux-gnu/`), with the contents of
//! the file that path resolves to on the host. A static binary needs none: it has no
//! `PT_INTERP` program header, and `ldd` is not asked.

use std::path::{Path, PathBuf};

use crate::command::{self, CommandError};

/// Failure to collect a binary's libraries.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listing the shared libraries with ldd")]
    Ldd(#[source] CommandError),
    #[error("{binary} needs {library}, which the host does not have")]
    NotFound { binary: String, library: String },
}

/// A library to copy into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLibrary {
    /// Where the loader looks for it (absolute).
    pub guest_path: String,
    /// The host file with its contents (symlinks resolved).
    pub host_path: PathBuf,
}

/// The libraries `binary` loads, sorted by guest path; none for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<SharedLibrary>, LibraryError> {
    let io = |source| LibraryError::Io {
        path: binary.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(binary).map_err(io)?;
    if !has_interpreter(&bytes) {
        return Ok(Vec::new());
    }
    let out = command::run("ldd", &[binary], None).map_err(LibraryError::Ldd)?;
    let mut libraries = Vec::new();
    for line in String::from_utf8_lossy(&out).lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once("=>") {
            if rest.trim().starts_with("not found") {
                return Err(LibraryError::NotFound {
                    binary: binary.display().to_string(),
                    library: name.trim().to_string(),
                });
            }
        }
        // `libc.so.6 => /lib/…/libc.so.6 (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)`;
        // `linux-vdso.so.1 (0x…)` is the kernel's and has no path.
        let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else {
            continue;
        };
        let host_path = std::fs::canonicalize(path).map_err(|source| LibraryError::Io {
            path: PathBuf::from(path),
            source,
        })?;
        libraries.push(SharedLibrary {
            guest_path: path.to_string(),
            host_path,
        });
    }
    libraries.sort_by(|a, b| a.guest_path.cmp(&b.guest_path));
    libraries.dedup_by(|a, b| a.guest_path == b.guest_path);
    Ok(libraries)
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (is dynamically
/// linked). Anything else is treated as static.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff.saturating_add(i * phentsize);
        elf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            == Some(PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_needs_the_loader_and_libc() {
        let libs = shared_libraries(Path::new("/bin/ls")).unwrap();
        let paths: Vec<&str> = libs.iter().map(|l| l.guest_path.as_str()).collect();
        assert!(paths.contains(&"/lib64/ld-linux-x86-64.so.2"), "{paths:?}");
        assert!(paths.iter().any(|p| p.ends_with("/libc.so.6")), "{paths:?}");
        assert!(libs.iter().all(|l| l.host_path.is_file()));
    }

    #[test]
    fn a_static_binary_needs_no_libraries() {
        // busybox-static (scripts/setup.sh installs it).
        assert_eq!(shared_libraries(Path::new("/bin/busybox")).unwrap(), []);
        assert!(!has_interpreter(b"not an elf file at all"));
    }
}
