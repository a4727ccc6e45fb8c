//! zfs-fuse daemon and per-test pools.
//!
//! zfs-fuse is one daemon per machine (its socket is the fixed `/var/run/zfs/zfs_socket`), so
//! tests share it: [`ensure_zfs_fuse`] starts it only when `zpool list` does not answer (under a
//! file lock, so parallel test binaries do not race), and nothing ever stops it. Each test gets
//! its own pool on its own sparse file with [`TestPool::create`]; the pool is destroyed and the
//! file removed when the `TestPool` drops, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::wait_until;

/// Default size of a test pool's sparse backing file.
pub const DEFAULT_POOL_SIZE: u64 = 4 << 30;

const LOCK_FILE: &str = "/tmp/mvirt-test-zfs-fuse.lock";
const PID_FILE: &str = "/run/mvirt-test-zfs-fuse.pid";

fn zpool_answers() -> bool {
    Command::new("zpool")
        .arg("list")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn remove_if_stale_pid_file(path: &str) {
    let alive = std::fs::read_to_string(path)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "zfs-fuse")
        });
    if !alive {
        let _ = std::fs::remove_file(path);
    }
}

/// Makes sure a zfs-fuse daemon is running and answering; starts one if not.
pub fn ensure_zfs_fuse() {
    crate::require_root();
    if zpool_answers() {
        return;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("cannot open {LOCK_FILE}: {e}"));
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {LOCK_FILE}: {e}"));
    if zpool_answers() {
        return;
    }
    // A zfs-fuse that died (or a machine that rebooted) leaves its pid file and socket behind;
    // with a stale pid file zfs-fuse exits at once without a word.
    remove_if_stale_pid_file(PID_FILE);
    let _ = std::fs::remove_file("/var/run/zfs/zfs_socket");
    // zfs-fuse daemonises itself; the status is that of the parent.
    let status = Command::new("zfs-fuse")
        .args(["-p", PID_FILE, "--no-kstat-mount"])
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot start zfs-fuse ({e}); run scripts/setup.sh to install zfs-fuse")
        });
    assert!(status.success(), "zfs-fuse exited with {status}");
    wait_until(
        "zfs-fuse to answer `zpool list`",
        Duration::from_secs(30),
        || zpool_answers().then_some(()),
    );
}

/// Runs a zfs/zpool command, killing it after 120 s: a wedged zfs-fuse must fail the test
/// loudly instead of hanging the suite.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} {} timed out (zfs-fuse wedged?)",
                    args.join(" ")
                ));
            }
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A ZFS pool of its own on a sparse file, destroyed on drop.
pub struct TestPool {
    /// The pool name (unique per test and run).
    pub name: String,
    /// Where the pool's root dataset is mounted.
    pub mountpoint: PathBuf,
    /// The sparse file backing the pool.
    pub image: PathBuf,
    /// `None` only while dropping.
    dir: Option<tempfile::TempDir>,
}

impl TestPool {
    /// A 4 GiB (sparse) pool.
    pub fn create() -> Self {
        Self::create_with_size(DEFAULT_POOL_SIZE)
    }

    /// A pool on a sparse file of `bytes`.
    pub fn create_with_size(bytes: u64) -> Self {
        ensure_zfs_fuse();
        let dir = tempfile::Builder::new()
            .prefix("mvirt-test-pool-")
            .tempdir()
            .expect("create a temporary directory for the pool");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("mvt{}{:x}", crate::unique_suffix(), nanos & 0xfff);
        let image = dir.path().join("pool.img");
        let file = std::fs::File::create(&image).expect("create the pool's backing file");
        file.set_len(bytes).expect("size the pool's backing file");
        drop(file);
        let mountpoint = dir.path().join("mnt");
        let image_str = image.to_str().expect("UTF-8 temp path");
        let mnt_str = mountpoint.to_str().expect("UTF-8 temp path");
        if let Err(err) = run("zpool", &["create", "-m", mnt_str, &name, image_str]) {
            panic!("cannot create test pool {name}: {err}");
        }
        Self {
            name,
            mountpoint,
            image,
            dir: Some(dir),
        }
    }

    /// `<pool>/<relative>`.
    pub fn dataset(&self, relative: &str) -> String {
        format!("{}/{relative}", self.name)
    }

    /// The temporary directory holding the backing file (tests may put other files here).
    pub fn dir(&self) -> &Path {
        self.image.parent().unwrap_or(Path::new("/tmp"))
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // zfs-fuse can say "busy" right after datasets were used: retry for a while.
        let mut last = String::new();
        for _ in 0..40 {
            match run("zpool", &["destroy", "-f", &self.name]) {
                Ok(_) => return,
                Err(err) if err.contains("no such pool") => return,
                Err(err) => last = err,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // Keep the backing file: a pool whose file vanished can no longer be cleaned up.
        let kept = self.dir.take().map(|d| d.keep());
        eprintln!(
            "warning: could not destroy test pool {} (backing file kept in {kept:?}): {last}",
            self.name
        );
    }
}
