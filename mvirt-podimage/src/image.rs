//! The pod boot artefacts: `vmlinuz`, `initramfs.img` and `manifest.json` in one directory.
//!
//! A build flows: [`Inputs::collect`] hashes everything the output is made from — the kernel
//! package (name, version and `.deb` digest from apt's lists), the module list, the mvirt-one
//! binary, the shared libraries `ldd` names for it, the CA bundle and [`FORMAT`] — into the
//! artefacts' `version`. If `manifest.json` in the output directory has that version and every
//! file it lists still has its digest, [`build`] stops there ([`Outcome::Cached`]). Otherwise it
//! fetches the kernel ([`crate::kernel::fetch`], cached), resolves the modules in load order,
//! writes the initramfs ([`crate::cpio::Archive`]: deterministic, uncompressed) and replaces
//! the three files (manifest last, so a manifest never describes files that are not there yet).
//!
//! The initramfs holds only: `/init` (mvirt-one, stripped), its libraries, the modules under
//! `/lib/modules/<release>/` with their paths in load order in `/etc/mvirt-one/modules` (the
//! file mvirt-one's init reads), `/etc/ssl/certs/ca-certificates.crt`,
//! `/etc/mvirt-one/version`, `/dev/console` and empty mount points. No shell, no busybox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{self, CommandError};
use crate::cpio::{Archive, CpioError};
use crate::kernel::{self, sha256_file, KernelError, KernelPackage};
use crate::libs::{shared_libraries, LibraryError};

/// Bumped whenever the same inputs would give a different image (layout, file list, format).
pub const FORMAT: u32 = 1;

/// The modules mvirt-one needs, in the order it loads them (dependencies are added first
/// anyway): virtio PCI/MMIO transport, net and block devices, vsock for OneService, overlayfs
/// for containers, and the ACPI power button with evdev for a graceful stop.
pub const POD_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_mmio",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "overlay",
    "button",
    "evdev",
];

/// Where Debian's ca-certificates puts the bundle, and where rustls in the pod looks for it.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The file mvirt-one's init reads its module paths from (`mvirt_one::init::MODULES_FILE`).
pub const MODULES_FILE: &str = "/etc/mvirt-one/modules";
/// The artefacts' version, inside the image.
pub const VERSION_FILE: &str = "/etc/mvirt-one/version";

pub const VMLINUZ: &str = "vmlinuz";
pub const INITRAMFS: &str = "initramfs.img";
pub const MANIFEST: &str = "manifest.json";

/// Failure to build or check the artefacts.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the kernel")]
    Kernel(#[from] KernelError),
    #[error("mvirt-one's shared libraries")]
    Libraries(#[from] LibraryError),
    #[error("writing the initramfs")]
    Cpio(#[from] CpioError),
    #[error("stripping {}", binary.display())]
    Strip {
        binary: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file} in {} does not match the manifest (SHA-256 {actual}, manifest says {expected})", dir.display())]
    Mismatch {
        dir: PathBuf,
        file: String,
        expected: String,
        actual: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to build from and where to put it.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// Receives `vmlinuz`, `initramfs.img`, `manifest.json`.
    pub out_dir: PathBuf,
    /// The mvirt-one binary (unstripped is fine; the image gets a stripped copy).
    pub mvirt_one: PathBuf,
    pub kernel: KernelPackage,
    /// Holds downloaded, unpacked kernels.
    pub cache_dir: PathBuf,
    /// The CA bundle to include (normally [`CA_BUNDLE`] from the host's ca-certificates).
    pub ca_bundle: PathBuf,
}

/// A file's digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub sha256: String,
    pub size: u64,
}

/// Everything the artefacts are made from; its hash is their version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub format: u32,
    pub kernel: KernelPackage,
    pub modules: Vec<String>,
    /// SHA-256 of the mvirt-one binary given to the build.
    pub mvirt_one_sha256: String,
    /// Guest path → SHA-256 of each shared library.
    pub libraries: BTreeMap<String, String>,
    pub ca_bundle_sha256: String,
}

impl Inputs {
    /// Hashes the inputs of `config` (reads the binary, its libraries and the CA bundle; runs
    /// `ldd`; downloads nothing).
    pub fn collect(config: &BuildConfig) -> Result<Self, BuildError> {
        let mut libraries = BTreeMap::new();
        for library in shared_libraries(&config.mvirt_one)? {
            let digest = sha256_file(&library.host_path).map_err(io(&library.host_path))?;
            libraries.insert(library.guest_path, digest);
        }
        Ok(Self {
            format: FORMAT,
            kernel: config.kernel.clone(),
            modules: POD_MODULES.iter().map(|m| m.to_string()).collect(),
            mvirt_one_sha256: sha256_file(&config.mvirt_one).map_err(io(&config.mvirt_one))?,
            libraries,
            ca_bundle_sha256: sha256_file(&config.ca_bundle).map_err(io(&config.ca_bundle))?,
        })
    }

    /// The content hash of the inputs (SHA-256 of their canonical JSON), hex.
    pub fn version(&self) -> String {
        // Plain data with string keys: serialising it cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }
}

/// `manifest.json`: what the artefacts are, and the digest of each file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Content hash of the inputs ([`Inputs::version`]); what a node reports.
    pub version: String,
    /// e.g. `6.1.0-57-amd64`.
    pub kernel_release: String,
    /// SHA-256 of the mvirt-one binary the image was built from.
    pub mvirt_one_sha256: String,
    /// Module names in load order (dependencies included).
    pub modules: Vec<String>,
    pub inputs: Inputs,
    /// `vmlinuz`, `initramfs.img` → digest.
    pub files: BTreeMap<String, FileDigest>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, BuildError> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| BuildError::Manifest { path, source })
    }

    /// Checks that every file the manifest lists is in `dir` with its digest.
    pub fn verify(&self, dir: &Path) -> Result<(), BuildError> {
        for (file, expected) in &self.files {
            let path = dir.join(file);
            let actual = sha256_file(&path).map_err(io(&path))?;
            if actual != expected.sha256 {
                return Err(BuildError::Mismatch {
                    dir: dir.to_path_buf(),
                    file: file.clone(),
                    expected: expected.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Whether [`build`] wrote the artefacts or found them up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Built,
    Cached,
}

/// Builds the artefacts into `config.out_dir` unless they are there already, see the module
/// documentation.
pub fn build(config: &BuildConfig) -> Result<(Manifest, Outcome), BuildError> {
    let inputs = Inputs::collect(config)?;
    let version = inputs.version();
    if let Ok(existing) = Manifest::read(&config.out_dir) {
        if existing.version == version && existing.verify(&config.out_dir).is_ok() {
            return Ok((existing, Outcome::Cached));
        }
    }

    let kernel = kernel::fetch(&config.cache_dir, &config.kernel)?;
    let release = kernel.release().to_string();
    let modules = kernel
        .module_index()?
        .resolve(POD_MODULES, &Default::default())?;

    std::fs::create_dir_all(&config.out_dir).map_err(io(&config.out_dir))?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&config.out_dir)
        .map_err(io(&config.out_dir))?;

    let init = work.path().join("init");
    command::run(
        "strip",
        &[
            std::ffi::OsStr::new("--strip-all"),
            std::ffi::OsStr::new("-o"),
            init.as_os_str(),
            config.mvirt_one.as_os_str(),
        ],
        None,
    )
    .map_err(|source| BuildError::Strip {
        binary: config.mvirt_one.clone(),
        source,
    })?;

    let mut archive = Archive::new();
    for dir in ["dev", "proc", "sys", "run", "tmp", "root", "etc"] {
        archive.dir(dir);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    archive.char_dev("/dev/console", 5, 1, 0o600);
    archive.host_file("/init", &init, 0o755);
    for library in shared_libraries(&config.mvirt_one)? {
        archive.host_file(&library.guest_path, &library.host_path, 0o755);
    }
    archive.host_file(CA_BUNDLE, &config.ca_bundle, 0o644);
    let mut module_list = format!("# kernel {release}, in load order\n");
    for module in &modules {
        let guest_path = format!("/lib/modules/{release}/{}", module.relative_path);
        archive.file(&guest_path, module.contents.clone(), 0o644);
        module_list.push_str(&guest_path);
        module_list.push('\n');
    }
    archive.file(MODULES_FILE, module_list.into_bytes(), 0o644);
    archive.file(VERSION_FILE, format!("{version}\n").into_bytes(), 0o644);
    let initramfs = archive.to_bytes()?;

    let staged_initramfs = work.path().join(INITRAMFS);
    std::fs::write(&staged_initramfs, &initramfs).map_err(io(&staged_initramfs))?;
    let staged_vmlinuz = work.path().join(VMLINUZ);
    std::fs::copy(&kernel.vmlinuz, &staged_vmlinuz).map_err(io(&kernel.vmlinuz))?;

    let mut files = BTreeMap::new();
    for name in [VMLINUZ, INITRAMFS] {
        let path = work.path().join(name);
        let size = std::fs::metadata(&path).map_err(io(&path))?.len();
        let sha256 = sha256_file(&path).map_err(io(&path))?;
        files.insert(name.to_string(), FileDigest { sha256, size });
    }
    let manifest = Manifest {
        version,
        kernel_release: release,
        mvirt_one_sha256: inputs.mvirt_one_sha256.clone(),
        modules: modules.iter().map(|m| m.name.clone()).collect(),
        inputs,
        files,
    };
    let manifest_path = config.out_dir.join(MANIFEST);
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|source| BuildError::Manifest {
        path: manifest_path.clone(),
        source,
    })?;
    json.push(b'\n');
    let staged_manifest = work.path().join(MANIFEST);
    std::fs::write(&staged_manifest, json).map_err(io(&staged_manifest))?;

    // The old manifest goes first and the new one comes last: a manifest never describes files
    // that are not (yet) the ones next to it.
    match std::fs::remove_file(&manifest_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&manifest_path)(e)),
    }
    for name in [VMLINUZ, INITRAMFS, MANIFEST] {
        let staged = work.path().join(name);
        set_mode(&staged, 0o644)?;
        let target = config.out_dir.join(name);
        std::fs::rename(&staged, &target).map_err(io(&target))?;
    }
    Ok((manifest, Outcome::Built))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// The kernel package to build with: `name` at apt's candidate version, or the one
/// `linux-image-amd64` names. A host whose package lists do not know it gets them refreshed
/// (`apt-get update`) once.
pub fn kernel_package(name: Option<&str>) -> Result<KernelPackage, KernelError> {
    let lookup = || match name {
        Some(name) => KernelPackage::lookup(name),
        None => KernelPackage::host_default(),
    };
    match lookup() {
        Err(KernelError::UnknownPackage { .. } | KernelError::NoKernelPackage { .. }) => {
            kernel::refresh_package_lists()?;
            lookup()
        }
        other => other,
    }
}
