//! Pod microVM fixtures: the pod artefacts (mvirt-podimage's kernel + initramfs with mvirt-one
//! as `/init`) built from this checkout's mvirt-one, and a host network for a pod (a TAP with an
//! address and dnsmasq handing out DHCPv4 leases), so that a registry on the host address is
//! reachable from the guest.
//!
//! The mvirt-one binary: `MVIRT_ONE_BINARY` when set; else `target/debug/mvirt-one` when it is
//! newer than every source of mvirt-one (a `cargo test --workspace` builds it); else it is built
//! once with `cargo build -p mvirt-one` into a target directory of its own under the test cache
//! (so it never waits on the lock of the running `cargo test`), which makes a fresh clone work.
//! Tests use that debug build ([`artefacts`]); benchmarks use a release one as production
//! artefacts do ([`artefacts_for`] with [`OneProfile::Release`]: `target/release/mvirt-one` when
//! fresh, else `cargo build --release -p mvirt-one` under the test cache).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::SystemTime;

use mvirt_podimage::image::{self, BuildConfig, Inputs};

use crate::netns::ip;
use crate::process::ChildGuard;

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let mtime = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(mtime);
    }
    newest
}

/// How the mvirt-one in the pod artefacts is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneProfile {
    /// `cargo build -p mvirt-one`: what a `cargo test` builds anyway (the tests).
    Debug,
    /// `cargo build --release -p mvirt-one`: what production artefacts carry
    /// (`scripts/build-pod-artefacts.sh`); minutes to build on 2 cores (the benchmarks).
    Release,
}

impl OneProfile {
    fn dir(self) -> &'static str {
        match self {
            OneProfile::Debug => "debug",
            OneProfile::Release => "release",
        }
    }
}

/// The mvirt-one binary of this checkout, debug build (see the module documentation).
pub fn mvirt_one_binary() -> PathBuf {
    mvirt_one_binary_for(OneProfile::Debug)
}

/// The mvirt-one binary of this checkout in `profile`: `MVIRT_ONE_BINARY` when set; else
/// `target/<profile>/mvirt-one` when it is newer than every source of mvirt-one; else built once
/// into a target directory of its own under the test cache (never waiting on the lock of the
/// running `cargo test`/`cargo bench`), `mvirt-one-target` or `mvirt-one-release-target`.
pub fn mvirt_one_binary_for(profile: OneProfile) -> PathBuf {
    static BINARIES: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    BINARIES[profile as usize]
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("MVIRT_ONE_BINARY") {
                return PathBuf::from(path);
            }
            let root = crate::workspace_root();
            let sources = newest_mtime(&root.join("mvirt-one"))
                .max(newest_mtime(&root.join("mvirt-common/src")))
                .max(
                    std::fs::metadata(root.join("Cargo.lock"))
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                );
            let fresh = |path: &Path| {
                std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m >= sources)
            };
            let built = root.join("target").join(profile.dir()).join("mvirt-one");
            if fresh(&built) {
                return built;
            }
            let target = crate::cache_dir().join(match profile {
                OneProfile::Debug => "mvirt-one-target",
                OneProfile::Release => "mvirt-one-release-target",
            });
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            eprintln!(
                "building mvirt-one ({}) for the pod artefacts into {}",
                profile.dir(),
                target.display()
            );
            let mut command = Command::new(cargo);
            command
                .current_dir(&root)
                .args(["build", "-p", "mvirt-one", "--bin", "mvirt-one"]);
            if profile == OneProfile::Release {
                command.arg("--release");
            }
            let status = command
                .arg("--target-dir")
                .arg(&target)
                .status()
                .expect("run cargo build -p mvirt-one");
            assert!(status.success(), "cargo build -p mvirt-one failed");
            target.join(profile.dir()).join("mvirt-one")
        })
        .clone()
}

/// The directory of pod artefacts built from the debug [`mvirt_one_binary`] (cached by version
/// under the test cache; a rebuild only when an input changed).
pub fn artefacts() -> PathBuf {
    artefacts_for(OneProfile::Debug)
}

/// The directory of pod artefacts built from [`mvirt_one_binary_for`] `profile`.
pub fn artefacts_for(profile: OneProfile) -> PathBuf {
    static DIRS: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    DIRS[profile as usize]
        .get_or_init(|| {
            let cache = crate::cache_dir();
            let mut config = BuildConfig {
                out_dir: PathBuf::new(),
                mvirt_one: mvirt_one_binary_for(profile),
                kernel: image::kernel_package(None).expect("the kernel package apt names"),
                cache_dir: cache.clone(),
                ca_bundle: PathBuf::from(image::CA_BUNDLE),
            };
            let version = Inputs::collect(&config)
                .expect("hash the pod artefacts' inputs")
                .version();
            config.out_dir = cache.join(format!("pod-artefacts-{}", &version[..16]));
            let (manifest, outcome) = image::build(&config).expect("build the pod artefacts");
            eprintln!(
                "pod artefacts {} ({outcome:?}, mvirt-one {}) in {}",
                manifest.version,
                config.mvirt_one.display(),
                config.out_dir.display()
            );
            config.out_dir
        })
        .clone()
}

/// `vhost-device-vsock` from PATH or `~/.cargo/bin` (installed by `scripts/setup.sh`).
pub fn vhost_device_vsock() -> PathBuf {
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("vhost-device-vsock"))
        .chain([PathBuf::from("/root/.cargo/bin/vhost-device-vsock")])
        .collect::<Vec<_>>();
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("vhost-device-vsock not found: run scripts/setup.sh")
}

/// A TAP on the host with `10.214.<n>.1/24` and dnsmasq serving DHCPv4 on it; removed on drop.
pub struct PodNet {
    pub tap: String,
    pub host_ip: Ipv4Addr,
    /// The first three octets of the guest's address, e.g. `10.214.7.`.
    pub guest_prefix: String,
    _dhcp: ChildGuard,
    _work: tempfile::TempDir,
}

impl PodNet {
    pub fn create() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = (std::process::id() * 7 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            % 250
            + 1;
        let host_ip = Ipv4Addr::new(10, 214, n as u8, 1);
        let tap = crate::netns::unique_name("mpod");
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &tap]);
        ip(&["link", "set", &tap, "up"]);
        let work = tempfile::Builder::new()
            .prefix("mvirt-podnet-")
            .tempdir()
            .expect("temp dir");
        let dhcp = ChildGuard::spawn(
            "dnsmasq",
            Command::new("dnsmasq")
                .args(["--no-daemon", "--conf-file=/dev/null", "--port=0"])
                .args(["--bind-interfaces", "--user=root", "--group=root"])
                .args(["--no-resolv", "--no-hosts"])
                .arg(format!("--interface={tap}"))
                .arg(format!(
                    "--dhcp-range=10.214.{n}.10,10.214.{n}.20,255.255.255.0,1h"
                ))
                .arg(format!("--dhcp-option=option:router,{host_ip}"))
                .arg(format!(
                    "--dhcp-leasefile={}",
                    work.path().join("leases").display()
                ))
                .arg(format!(
                    "--pid-file={}",
                    work.path().join("dnsmasq.pid").display()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        Self {
            tap,
            host_ip,
            guest_prefix: format!("10.214.{n}."),
            _dhcp: dhcp,
            _work: work,
        }
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.tap]).status();
    }
}

/// Live `vhost-device-vsock` processes whose arguments name a path under `dir`: `(pid, command
/// line)`. A pod's vsock backend must not outlive its microVM.
pub fn vsock_backends_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = format!("{}/", dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args
            .first()
            .is_some_and(|p| p.ends_with("vhost-device-vsock"))
            && args.iter().any(|a| a.contains(&needle))
        {
            found.push((pid, args.join(" ")));
        }
    }
    found
}
