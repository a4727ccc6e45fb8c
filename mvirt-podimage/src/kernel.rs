//! Debian kernels: which package, downloading and unpacking it once, and its modules.
//!
//! A [`KernelPackage`] is what apt knows about a `linux-image-<release>` package (its version
//! and the `.deb`'s SHA-256, read from the local package lists without downloading anything),
//! so a build can tell whether its inputs changed before fetching. [`fetch`] downloads that
//! exact version with `apt-get download`, checks the digest, unpacks it with `dpkg-deb -x` and
//! keeps `vmlinuz` and `lib/modules/<release>` under `<cache>/kernel-<release>_<version>/`
//! (built in a temporary directory and renamed into place, so concurrent callers are safe).
//! [`ModuleIndex::resolve`] turns module names into files in load order, dependencies first
//! (read from each module's `.modinfo` `depends=`), skipping modules built into the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{self, CommandError};

/// The meta package whose dependency names the current Debian kernel.
pub const DEFAULT_META_PACKAGE: &str = "linux-image-amd64";

/// Failure to find, fetch or read a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("asking apt about kernel packages")]
    Apt(#[source] CommandError),
    #[error("apt-cache names no kernel package for {meta} (run apt-get update)")]
    NoKernelPackage { meta: String },
    #[error("apt knows no package {name} (run apt-get update, or check the name)")]
    UnknownPackage { name: String },
    #[error("{name} is not a kernel image package (linux-image-<release>)")]
    NotAKernelPackage { name: String },
    #[error("downloading {name}")]
    Download {
        name: String,
        #[source]
        source: CommandError,
    },
    #[error("the downloaded {name} has SHA-256 {actual}, apt expects {expected}")]
    DigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("unpacking {name}")]
    Unpack {
        name: String,
        #[source]
        source: CommandError,
    },
    #[error("{name} holds no {what}")]
    Incomplete { name: String, what: String },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {release} has no module {name}")]
    NoModule { release: String, name: String },
    #[error("module dependencies of {name} are nested too deeply (a cycle?)")]
    DependencyCycle { name: String },
    #[error("decompressing module {}", path.display())]
    Decompress {
        path: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error("{}: {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A kernel image package as apt knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPackage {
    /// e.g. `linux-image-6.1.0-57-amd64`.
    pub name: String,
    /// The Debian version, e.g. `6.1.192-3`.
    pub version: String,
    /// SHA-256 of the `.deb`, from the package lists.
    pub sha256: String,
}

impl KernelPackage {
    /// The kernel release the package installs, e.g. `6.1.0-57-amd64`.
    pub fn release(&self) -> &str {
        self.name.trim_start_matches("linux-image-")
    }

    /// The candidate version of `name` (`apt-cache show --no-all-versions`).
    pub fn lookup(name: &str) -> Result<Self, KernelError> {
        let release = name.strip_prefix("linux-image-").unwrap_or_default();
        if !release.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(KernelError::NotAKernelPackage {
                name: name.to_string(),
            });
        }
        let unknown = || KernelError::UnknownPackage {
            name: name.to_string(),
        };
        let out = match command::run("apt-cache", &["show", "--no-all-versions", name], None) {
            Ok(out) => out,
            // apt-cache exits non-zero for a name it does not know.
            Err(CommandError::Failed { .. }) => return Err(unknown()),
            Err(e) => return Err(KernelError::Apt(e)),
        };
        let text = String::from_utf8_lossy(&out);
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        Ok(Self {
            name: name.to_string(),
            version: field("Version").ok_or_else(unknown)?,
            sha256: field("SHA256").ok_or_else(unknown)?,
        })
    }

    /// The kernel package Debian's `linux-image-amd64` depends on, at its candidate version.
    pub fn host_default() -> Result<Self, KernelError> {
        let out = command::run("apt-cache", &["depends", DEFAULT_META_PACKAGE], None)
            .map_err(KernelError::Apt)?;
        let name = String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(|s| s.trim().to_string())
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
            .ok_or_else(|| KernelError::NoKernelPackage {
                meta: DEFAULT_META_PACKAGE.to_string(),
            })?;
        Self::lookup(&name)
    }
}

/// Fetches the package lists (`apt-get update`), for a machine whose lists are missing.
pub fn refresh_package_lists() -> Result<(), KernelError> {
    command::run("apt-get", &["update", "-qq"], None).map_err(KernelError::Apt)?;
    Ok(())
}

/// A Debian kernel unpacked in a cache directory.
#[derive(Debug, Clone)]
pub struct DebianKernel {
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// A directory containing `lib/modules/<release>`.
    pub modules_root: PathBuf,
    pub package: KernelPackage,
}

/// The record of where an unpacked kernel came from, next to it in the cache.
const PACKAGE_RECORD: &str = "package.json";

impl DebianKernel {
    /// e.g. `6.1.0-57-amd64`.
    pub fn release(&self) -> &str {
        self.package.release()
    }

    /// `<modules_root>/lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.modules_root.join("lib/modules").join(self.release())
    }

    fn in_dir(dir: &Path, package: KernelPackage) -> Self {
        Self {
            vmlinuz: dir.join("vmlinuz"),
            modules_root: dir.join("root"),
            package,
        }
    }

    /// Every module file and the built-in module names of this kernel.
    pub fn module_index(&self) -> Result<ModuleIndex, KernelError> {
        ModuleIndex::load(&self.modules_dir(), self.release())
    }
}

/// Kernels already unpacked in `cache`, newest release last (for when apt cannot answer).
pub fn cached_kernels(cache: &Path) -> Vec<DebianKernel> {
    let mut found: Vec<DebianKernel> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kernel-"))
        .filter_map(|e| {
            let record = std::fs::read(e.path().join(PACKAGE_RECORD)).ok()?;
            let package: KernelPackage = serde_json::from_slice(&record).ok()?;
            let kernel = DebianKernel::in_dir(&e.path(), package);
            kernel.vmlinuz.exists().then_some(kernel)
        })
        .collect();
    found.sort_by(|a, b| a.package.name.cmp(&b.package.name));
    found
}

/// The kernel of `package`, downloaded and unpacked into `cache` unless it is there already.
pub fn fetch(cache: &Path, package: &KernelPackage) -> Result<DebianKernel, KernelError> {
    let dir = cache.join(format!("kernel-{}_{}", package.release(), package.version));
    let kernel = DebianKernel::in_dir(&dir, package.clone());
    let record_path = dir.join(PACKAGE_RECORD);
    if let Ok(record) = std::fs::read(&record_path) {
        let recorded: KernelPackage =
            serde_json::from_slice(&record).map_err(|source| KernelError::Record {
                path: record_path.clone(),
                source,
            })?;
        if recorded == *package {
            return Ok(kernel);
        }
    }

    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let work = tempfile::Builder::new()
        .prefix(".kernel-build-")
        .tempdir_in(cache)
        .map_err(io(cache))?;
    let name = &package.name;
    command::run(
        "apt-get",
        &["download", "-q", &format!("{name}={}", package.version)],
        Some(work.path()),
    )
    .map_err(|source| KernelError::Download {
        name: name.clone(),
        source,
    })?;
    let deb = std::fs::read_dir(work.path())
        .map_err(io(work.path()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| KernelError::Incomplete {
            name: name.clone(),
            what: "file after apt-get download".into(),
        })?;
    let actual = sha256_file(&deb).map_err(io(&deb))?;
    if actual != package.sha256 {
        return Err(KernelError::DigestMismatch {
            name: name.clone(),
            expected: package.sha256.clone(),
            actual,
        });
    }
    let unpacked = work.path().join("x");
    command::run(
        "dpkg-deb",
        &[
            std::ffi::OsStr::new("-x"),
            deb.as_os_str(),
            unpacked.as_os_str(),
        ],
        None,
    )
    .map_err(|source| KernelError::Unpack {
        name: name.clone(),
        source,
    })?;
    let release = package.release();
    let out = work.path().join("out");
    let out_modules = out.join("root/lib/modules");
    std::fs::create_dir_all(&out_modules).map_err(io(&out_modules))?;
    let vmlinuz = unpacked.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        return Err(KernelError::Incomplete {
            name: name.clone(),
            what: format!("boot/vmlinuz-{release}"),
        });
    }
    std::fs::rename(&vmlinuz, out.join("vmlinuz")).map_err(io(&vmlinuz))?;
    // Debian ships modules under /lib (bookworm) or /usr/lib (later releases).
    let modules = [
        unpacked.join("lib/modules").join(release),
        unpacked.join("usr/lib/modules").join(release),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| KernelError::Incomplete {
        name: name.clone(),
        what: format!("lib/modules/{release}"),
    })?;
    std::fs::rename(&modules, out_modules.join(release)).map_err(io(&modules))?;
    let record = serde_json::to_vec_pretty(package).map_err(|source| KernelError::Record {
        path: record_path.clone(),
        source,
    })?;
    let out_record = out.join(PACKAGE_RECORD);
    std::fs::write(&out_record, record).map_err(io(&out_record))?;
    match std::fs::rename(&out, &dir) {
        Ok(()) => Ok(kernel),
        // Another process won the race: its copy is the same package.
        Err(_) if record_path.exists() => Ok(kernel),
        Err(e) => Err(io(&dir)(e)),
    }
}

/// A kernel built elsewhere, in a directory: its image (`bzImage`, `vmlinuz` or
/// `boot/vmlinuz-<release>`) and `lib/modules/<release>/` — the layout of nixpkgs' `linux`
/// output. It is entered into `cache` like a fetched package (the image copied, the modules
/// linked, not copied) under a [`KernelPackage`] named `linux-image-<release>` whose version
/// is `dir-` and the first 16 hex digits of the image's SHA-256 and whose `sha256` is the
/// image's: that record is what the artefacts' version hashes, so another kernel in the same
/// place is another version. Then [`fetch`] finds it there and asks apt nothing.
pub fn import_dir(cache: &Path, dir: &Path) -> Result<KernelPackage, KernelError> {
    let name = dir.display().to_string();
    let incomplete = |what: &str| KernelError::Incomplete {
        name: name.clone(),
        what: what.to_string(),
    };
    let modules_parent = dir.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&modules_parent)
        .map_err(|_| incomplete("lib/modules/<release>"))?
        .flatten()
        .filter(|e| e.path().join("kernel").is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    releases.sort();
    let release = match releases.as_slice() {
        [one] => one.clone(),
        [] => return Err(incomplete("lib/modules/<release>/kernel")),
        more => {
            return Err(incomplete(&format!(
                "single kernel release in lib/modules (found {})",
                more.join(", ")
            )))
        }
    };
    let image = [
        "bzImage".to_string(),
        "vmlinuz".into(),
        format!("boot/vmlinuz-{release}"),
    ]
    .into_iter()
    .map(|f| dir.join(f))
    .find(|p| p.is_file())
    .ok_or_else(|| incomplete("bzImage, vmlinuz or boot/vmlinuz-<release>"))?;
    let sha256 = sha256_file(&image).map_err(io(&image))?;
    let package = KernelPackage {
        name: format!("linux-image-{release}"),
        version: format!("dir-{}", &sha256[..16]),
        sha256,
    };
    let target = cache.join(format!("kernel-{}_{}", release, package.version));
    let record_path = target.join(PACKAGE_RECORD);
    if std::fs::read(&record_path)
        .ok()
        .and_then(|r| serde_json::from_slice::<KernelPackage>(&r).ok())
        .is_some_and(|r| r == package)
    {
        return Ok(package);
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let work = tempfile::Builder::new()
        .prefix(".kernel-import-")
        .tempdir_in(cache)
        .map_err(io(cache))?;
    let out = work.path().join("out");
    let out_modules = out.join("root/lib/modules");
    std::fs::create_dir_all(&out_modules).map_err(io(&out_modules))?;
    std::fs::copy(&image, out.join("vmlinuz")).map_err(io(&image))?;
    let modules = std::fs::canonicalize(modules_parent.join(&release)).map_err(io(dir))?;
    std::os::unix::fs::symlink(&modules, out_modules.join(&release)).map_err(io(&modules))?;
    let record = serde_json::to_vec_pretty(&package).map_err(|source| KernelError::Record {
        path: record_path.clone(),
        source,
    })?;
    std::fs::write(out.join(PACKAGE_RECORD), record).map_err(io(&out))?;
    match std::fs::rename(&out, &target) {
        Ok(()) => Ok(package),
        Err(_) if record_path.exists() => Ok(package),
        Err(e) => Err(io(&target)(e)),
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Module names compare with `-` and `_` equal, as the kernel does.
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// A kernel's module files by name, and its built-in modules.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    release: String,
    root: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// A loadable module, its contents decompressed.
#[derive(Debug, Clone)]
pub struct Module {
    /// Normalised name (`_`, not `-`).
    pub name: String,
    /// The module file in the unpacked kernel.
    pub path: PathBuf,
    /// Its path below `lib/modules/<release>/`, ending in `.ko` (compression suffix removed).
    pub relative_path: String,
    pub contents: Vec<u8>,
}

impl ModuleIndex {
    /// Indexes `root` (a `lib/modules/<release>` directory): the module files below `kernel/`
    /// and the names in `modules.builtin`.
    pub fn load(root: &Path, release: &str) -> Result<Self, KernelError> {
        let mut files = BTreeMap::new();
        let mut stack = vec![root.join("kernel")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let path = entry.path();
                if entry.file_type().map_err(io(&path))?.is_dir() {
                    stack.push(path);
                    continue;
                }
                let file = entry.file_name().to_string_lossy().to_string();
                let stem = file
                    .strip_suffix(".ko")
                    .or_else(|| file.strip_suffix(".ko.xz"))
                    .or_else(|| file.strip_suffix(".ko.zst"));
                if let Some(stem) = stem {
                    files.insert(normalise(stem), path);
                }
            }
        }
        let builtin_list = root.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_list) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.rsplit('/').next())
                .filter_map(|f| f.strip_suffix(".ko"))
                .map(normalise)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io(&builtin_list)(e)),
        };
        Ok(Self {
            release: release.to_string(),
            root: root.to_path_buf(),
            files,
            builtin,
        })
    }

    /// `names` and, first, what they depend on, in load order. Modules built into the kernel and
    /// those in `loaded` (already in the caller's list) are left out.
    pub fn resolve(
        &self,
        names: &[&str],
        loaded: &BTreeSet<String>,
    ) -> Result<Vec<Module>, KernelError> {
        let mut seen = loaded.clone();
        let mut out = Vec::new();
        for name in names {
            self.visit(name, &mut seen, &mut out, 0)?;
        }
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<Module>,
        depth: usize,
    ) -> Result<(), KernelError> {
        let name = normalise(name);
        if seen.contains(&name) || self.builtin.contains(&name) {
            return Ok(());
        }
        if depth >= 32 {
            return Err(KernelError::DependencyCycle { name });
        }
        let path = self
            .files
            .get(&name)
            .ok_or_else(|| KernelError::NoModule {
                release: self.release.clone(),
                name: name.clone(),
            })?
            .clone();
        let contents = read_module(&path)?;
        for dep in module_depends(&contents) {
            self.visit(&dep, seen, out, depth + 1)?;
        }
        let relative = path
            .strip_prefix(&self.root)
            .unwrap_or(&path)
            .to_string_lossy()
            .to_string();
        let relative_path = relative
            .strip_suffix(".xz")
            .or_else(|| relative.strip_suffix(".zst"))
            .unwrap_or(&relative)
            .to_string();
        seen.insert(name.clone());
        out.push(Module {
            name,
            path,
            relative_path,
            contents,
        });
        Ok(())
    }
}

/// A module file's bytes, decompressed when it is `.ko.xz` or `.ko.zst`.
pub fn read_module(path: &Path) -> Result<Vec<u8>, KernelError> {
    let name = path.to_string_lossy();
    let decompress = |program: &str, flags: &str| {
        command::run(
            program,
            &[std::ffi::OsStr::new(flags), path.as_os_str()],
            None,
        )
        .map_err(|source| KernelError::Decompress {
            path: path.to_path_buf(),
            source,
        })
    };
    if name.ends_with(".xz") {
        decompress("xz", "-dc")
    } else if name.ends_with(".zst") {
        decompress("zstd", "-dcq")
    } else {
        std::fs::read(path).map_err(io(path))
    }
}

/// The `depends=` entry of a module's `.modinfo` section.
pub fn module_depends(module: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    let mut from = 0;
    while let Some(pos) = find(&module[from..], needle) {
        let start = from + pos;
        // `.modinfo` entries are NUL-separated: the key starts right after a NUL.
        if start == 0 || module[start - 1] == 0 {
            let value_start = start + needle.len();
            let end = module[value_start..]
                .iter()
                .position(|b| *b == 0)
                .map(|p| value_start + p)
                .unwrap_or(module.len());
            return String::from_utf8_lossy(&module[value_start..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        from = start + 1;
    }
    Vec::new()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dependencies_are_read_from_modinfo() {
        assert_eq!(
            module_depends(
                b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net_failover\0vermagic=6.1\0"
            ),
            vec!["virtio_ring", "virtio", "net_failover"]
        );
        assert!(module_depends(b"\0depends=\0").is_empty());
        // `xdepends=` is another key, not `depends=`.
        assert!(module_depends(b"\0xdepends=a\0").is_empty());
    }

    fn fake_kernel(dir: &Path) -> DebianKernel {
        let kernel = DebianKernel::in_dir(
            dir,
            KernelPackage {
                name: "linux-image-6.1.0-1-amd64".into(),
                version: "6.1.1-1".into(),
                sha256: "00".into(),
            },
        );
        let modules = kernel.modules_dir();
        let drivers = modules.join("kernel/drivers");
        std::fs::create_dir_all(&drivers).unwrap();
        let module = |name: &str, deps: &str| {
            std::fs::write(
                drivers.join(format!("{name}.ko")),
                format!("\0name={name}\0depends={deps}\0"),
            )
            .unwrap()
        };
        module("virtio_net", "virtio_ring,net_failover");
        module("net_failover", "failover");
        module("failover", "");
        module("virtio_ring", "virtio");
        module("vmw_vsock_virtio_transport", "vsock");
        module("vsock", "");
        std::fs::write(
            modules.join("modules.builtin"),
            "kernel/drivers/virtio.ko\n",
        )
        .unwrap();
        kernel
    }

    #[test]
    fn a_kernel_directory_is_entered_into_the_cache_and_fetched_from_there() {
        let src = tempfile::tempdir().unwrap();
        let modules = src.path().join("lib/modules/6.12.1/kernel/drivers");
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::write(modules.join("vsock.ko"), "\0name=vsock\0depends=\0").unwrap();
        let cache = tempfile::tempdir().unwrap();
        // No image yet: the error says what is missing.
        match import_dir(cache.path(), src.path()) {
            Err(KernelError::Incomplete { what, .. }) => {
                assert!(what.contains("bzImage"), "{what}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(src.path().join("bzImage"), b"kernel image one").unwrap();
        let package = import_dir(cache.path(), src.path()).unwrap();
        assert_eq!(package.name, "linux-image-6.12.1");
        assert_eq!(package.release(), "6.12.1");
        assert_eq!(
            package.sha256,
            sha256_file(&src.path().join("bzImage")).unwrap()
        );
        assert_eq!(package.version, format!("dir-{}", &package.sha256[..16]));
        // `fetch` finds it in the cache: no apt, the image and the modules are the directory's.
        let kernel = fetch(cache.path(), &package).unwrap();
        assert_eq!(std::fs::read(&kernel.vmlinuz).unwrap(), b"kernel image one");
        let index = kernel.module_index().unwrap();
        let names: Vec<String> = index
            .resolve(&["vsock"], &BTreeSet::new())
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["vsock"]);
        // Again: the same package, nothing rewritten; another image is another version.
        assert_eq!(import_dir(cache.path(), src.path()).unwrap(), package);
        std::fs::write(src.path().join("bzImage"), b"kernel image two").unwrap();
        let other = import_dir(cache.path(), src.path()).unwrap();
        assert_ne!(other.version, package.version);
        // Two releases side by side are refused rather than guessed between.
        std::fs::create_dir_all(src.path().join("lib/modules/6.13.0/kernel")).unwrap();
        match import_dir(cache.path(), src.path()) {
            Err(KernelError::Incomplete { what, .. }) => {
                assert!(what.contains("6.12.1, 6.13.0"), "{what}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modules_resolve_dependencies_first_and_skip_builtin_and_loaded_ones() {
        let dir = tempfile::tempdir().unwrap();
        let index = fake_kernel(dir.path()).module_index().unwrap();
        let names = |modules: Vec<Module>| modules.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(
            names(index.resolve(&["virtio-net"], &BTreeSet::new()).unwrap()),
            ["virtio_ring", "failover", "net_failover", "virtio_net"]
        );
        let loaded = BTreeSet::from(["vsock".to_string()]);
        let modules = index
            .resolve(&["vmw_vsock_virtio_transport"], &loaded)
            .unwrap();
        assert_eq!(
            modules[0].relative_path,
            "kernel/drivers/vmw_vsock_virtio_transport.ko"
        );
        assert_eq!(names(modules), ["vmw_vsock_virtio_transport"]);
        match index.resolve(&["nosuch"], &BTreeSet::new()) {
            Err(KernelError::NoModule { name, .. }) => assert_eq!(name, "nosuch"),
            other => panic!("{other:?}"),
        }
    }
}
