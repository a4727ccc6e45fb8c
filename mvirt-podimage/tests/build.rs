//! Builds real pod artefacts (the Debian kernel apt names, fetched once into the workspace's
//! test cache) and checks that they are reproducible, cached, described by their manifest, and
//! hold what mvirt-one's init expects. The "mvirt-one" given to these builds is this crate's
//! own binary (any dynamically linked program does; `mvirt-one/tests/guest.rs` boots the
//! artefacts built from the real mvirt-one).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mvirt_podimage::image::{
    self, BuildConfig, Inputs, Outcome, CA_BUNDLE, INITRAMFS, MANIFEST, VMLINUZ,
};
use mvirt_podimage::Manifest;
use sha2::{Digest, Sha256};

const BUILDER: &str = env!("CARGO_BIN_EXE_mvirt-pod-image");

/// The kernel cache `mvirt-testsupport` uses too (`target/mvirt-test-cache`).
fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("mvirt-podimage lives in the workspace")
        .join("target/mvirt-test-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(out: &Path, mvirt_one: &Path) -> BuildConfig {
    BuildConfig {
        out_dir: out.to_path_buf(),
        mvirt_one: mvirt_one.to_path_buf(),
        kernel: image::kernel_package(None).expect("the kernel package apt names"),
        cache_dir: cache_dir(),
        ca_bundle: PathBuf::from(CA_BUNDLE),
    }
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn extract(initramfs: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("cpio")
        .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .spawn()
        .expect("cpio (scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(initramfs).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
    dir
}

#[test]
fn building_twice_gives_identical_files_and_the_second_build_is_a_cache_hit() {
    let work = tempfile::tempdir().unwrap();
    let first = work.path().join("first");
    let (manifest, outcome) = image::build(&config(&first, Path::new(BUILDER))).unwrap();
    assert_eq!(outcome, Outcome::Built);
    let mtimes = |dir: &Path| {
        [VMLINUZ, INITRAMFS, MANIFEST].map(|f| {
            let m = std::fs::metadata(dir.join(f)).unwrap();
            (m.mtime(), m.mtime_nsec(), m.ino())
        })
    };
    let before = mtimes(&first);

    // Same inputs, same directory: nothing is rewritten.
    let (again, outcome) = image::build(&config(&first, Path::new(BUILDER))).unwrap();
    assert_eq!(outcome, Outcome::Cached);
    assert_eq!(again, manifest);
    assert_eq!(mtimes(&first), before);

    // Same inputs, another directory, through the command line: byte-identical files.
    let second = work.path().join("second");
    let output = Command::new(BUILDER)
        .args(["build", "--mvirt-one", BUILDER])
        .arg("--out")
        .arg(&second)
        .arg("--cache-dir")
        .arg(cache_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(" built: kernel "), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        manifest.version
    );
    for file in [VMLINUZ, INITRAMFS, MANIFEST] {
        assert!(
            std::fs::read(first.join(file)).unwrap() == std::fs::read(second.join(file)).unwrap(),
            "{file} differs between two builds of the same inputs"
        );
    }
    let rerun = Command::new(BUILDER)
        .args(["build", "--mvirt-one", BUILDER])
        .arg("--out")
        .arg(&second)
        .arg("--cache-dir")
        .arg(cache_dir())
        .output()
        .unwrap();
    assert!(rerun.status.success());
    assert!(String::from_utf8_lossy(&rerun.stderr).contains(" up to date: "));
}

#[test]
fn the_manifest_hashes_match_the_files_and_a_changed_input_or_file_means_a_rebuild() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let (manifest, _) = image::build(&config(&out, Path::new(BUILDER))).unwrap();
    assert_eq!(Manifest::read(&out).unwrap(), manifest);
    assert_eq!(
        manifest.files.keys().collect::<Vec<_>>(),
        [INITRAMFS, VMLINUZ]
    );
    for (file, digest) in &manifest.files {
        assert_eq!(digest.sha256, sha256(&out.join(file)), "{file}");
        assert_eq!(
            digest.size,
            std::fs::metadata(out.join(file)).unwrap().len()
        );
    }
    assert_eq!(manifest.mvirt_one_sha256, sha256(Path::new(BUILDER)));
    let inputs = Inputs::collect(&config(&out, Path::new(BUILDER))).unwrap();
    assert_eq!(manifest.version, inputs.version());
    assert_eq!(manifest.version.len(), 64);
    assert_eq!(manifest.kernel_release, inputs.kernel.release());
    let cli_verify = |dir: &Path| {
        Command::new(BUILDER)
            .arg("verify")
            .arg("--out")
            .arg(dir)
            .output()
            .unwrap()
    };
    assert!(cli_verify(&out).status.success());

    // A damaged file is noticed and rebuilt.
    std::fs::write(out.join(INITRAMFS), b"damaged").unwrap();
    assert!(!cli_verify(&out).status.success());
    let (rebuilt, outcome) = image::build(&config(&out, Path::new(BUILDER))).unwrap();
    assert_eq!(outcome, Outcome::Built);
    assert_eq!(rebuilt, manifest);

    // Another mvirt-one binary is another version.
    let other = work.path().join("other-mvirt-one");
    std::fs::copy(BUILDER, &other).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&other)
        .unwrap();
    f.write_all(b"trailing bytes change the digest").unwrap();
    drop(f);
    let (changed, outcome) = image::build(&config(&out, &other)).unwrap();
    assert_eq!(outcome, Outcome::Built);
    assert_ne!(changed.version, manifest.version);
    assert_eq!(changed.files[VMLINUZ], manifest.files[VMLINUZ]);
}

#[test]
fn the_initramfs_holds_init_its_libraries_the_modules_in_load_order_and_the_ca_bundle_only() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let (manifest, _) = image::build(&config(&out, Path::new(BUILDER))).unwrap();
    let root = extract(&out.join(INITRAMFS));
    let root = root.path();

    let init = std::fs::metadata(root.join("init")).unwrap();
    assert_eq!(init.permissions().mode() & 0o777, 0o755);
    assert_eq!(&std::fs::read(root.join("init")).unwrap()[..4], b"\x7fELF");
    for library in mvirt_podimage::libs::shared_libraries(Path::new(BUILDER)).unwrap() {
        let inside = root.join(library.guest_path.trim_start_matches('/'));
        assert_eq!(
            std::fs::read(&inside).unwrap(),
            std::fs::read(&library.host_path).unwrap(),
            "{}",
            library.guest_path
        );
    }
    assert_eq!(
        std::fs::read(root.join(CA_BUNDLE.trim_start_matches('/'))).unwrap(),
        std::fs::read(CA_BUNDLE).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/mvirt-one/version")).unwrap(),
        format!("{}\n", manifest.version)
    );

    // The format mvirt-one's init reads: one module path per line, in load order; `#` comments.
    let list = std::fs::read_to_string(root.join("etc/mvirt-one/modules")).unwrap();
    let paths: Vec<&str> = list
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            assert!(
                p.starts_with(&format!("/lib/modules/{}/", manifest.kernel_release)),
                "{p}"
            );
            assert!(
                root.join(p.trim_start_matches('/')).is_file(),
                "{p} missing"
            );
            Path::new(p)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .replace('-', "_")
        })
        .collect();
    assert_eq!(names, manifest.modules);
    let position = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} not in {names:?}"))
    };
    for (before, after) in [
        ("virtio_ring", "virtio_net"),
        ("virtio_pci", "virtio_net"),
        ("vsock", "vmw_vsock_virtio_transport_common"),
        (
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ),
    ] {
        assert!(
            position(before) < position(after),
            "{before} after {after}: {names:?}"
        );
    }
    for needed in ["overlay", "button", "evdev", "virtio_blk"] {
        position(needed);
    }

    // No shell, no busybox: nothing but init, its libraries, modules and data.
    let mut executables = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            assert!(!meta.file_type().is_symlink(), "{:?}", entry.path());
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.permissions().mode() & 0o111 != 0 {
                executables.push(entry.path());
            }
        }
    }
    assert!(!root.join("bin").exists() && !root.join("sbin").exists());
    for exe in executables {
        let rel = exe
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(
            rel == "init" || rel.starts_with("lib/") || rel.starts_with("lib64/"),
            "unexpected executable {rel}"
        );
    }
}
