//! Fixtures shared by mvirt's integration tests, written once instead of per crate.
//!
//! - [`net`]: free loopback ports.
//! - [`process`]: child processes killed on drop, waiting on conditions with a deadline, and
//!   the end-of-test check that no hypervisor process outlives a test.
//! - [`guest`]: a cached Debian kernel and busybox initramfs for QEMU TCG test guests.
//! - [`zfs`]: a zfs-fuse daemon and a pool on a sparse file, unique per test.
//! - [`registry`]: a local OCI registry (distribution) on 127.0.0.1.
//! - [`token_server`]: a Docker token server for registries with bearer-token auth.
//! - [`netns`]: network namespaces, veth pairs and TAP devices removed on drop; a tokio runtime
//!   inside a namespace ([`netns::NetnsRuntime`]) for in-process daemons of a test node.
//! - [`pod`]: the pod artefacts built from this checkout's mvirt-one, and a host network
//!   (TAP + DHCP) for pod microVMs.
//! - [`powercut`]: a FUSE file system that drops everything not fsynced on a simulated power
//!   cut (crash tests that notice a missing fsync).
//! - [`tls`]: HTTP clients and a browser profile that trust a cluster's CA.
//! - [`local_daemon`]: a local daemon binary's listen flags (unix socket by default, TCP only
//!   with `--allow-tcp` and then with a warning).
//!
//! A missing prerequisite (QEMU, zfs-fuse, root, …) is a loud failure, never a skipped test:
//! `scripts/setup.sh` installs everything the tests need.

pub mod cli;
pub mod fuzz;
pub mod guest;
pub mod http;
pub mod local_daemon;
pub mod net;
pub mod netns;
pub mod pod;
pub mod powercut;
pub mod process;
pub mod registry;
pub mod tls;
pub mod token_server;
pub mod zfs;

use std::path::PathBuf;

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("mvirt-testsupport lives inside the workspace")
        .to_path_buf()
}

/// A cache directory shared by every test run of this checkout (`target/mvirt-test-cache`),
/// for artefacts that are slow to build (guest kernel, initramfs, images).
pub fn cache_dir() -> PathBuf {
    let dir = workspace_root().join("target").join("mvirt-test-cache");
    std::fs::create_dir_all(&dir).expect("create target/mvirt-test-cache");
    dir
}

/// A short unique suffix for names of global resources (interfaces, pools, namespaces).
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}", std::process::id() & 0xffff, n)
}

/// Fails the test loudly if not running as root.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (CI runs as root); run the suite with scripts/test.sh as root"
    );
}
