//! Network namespaces, veth pairs and TAP devices for tests, each with a unique name and
//! removed on drop (also when the test panics).
//!
//! - [`Netns`]: `ip netns add`; [`Netns::exec`] runs a command inside it.
//! - [`VethPair`]: a veth pair in the host namespace; one end can be moved into a [`Netns`].
//! - [`TestTap`]: a TAP device the test holds the fd of, reading and writing Ethernet frames:
//!   the "VM" is the test. [`TestTap::create`] makes a fresh (non-persistent) TAP that vanishes
//!   with the fd; [`TestTap::open`] attaches to an existing persistent TAP (e.g. one created by
//!   mvirt-ebpf for a NIC), which stays when the fd is closed.
//! - [`NetnsRuntime`]: a tokio runtime whose threads (and the processes they start) live in a
//!   [`Netns`], with a mount namespace whose `/sys` shows it; [`share_mounts_below`] lets mounts
//!   made later in the host (a test pool's volumes) reach it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::unique_suffix;

/// Runs `ip <args>`, panicking with stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique interface/namespace name `<prefix><suffix>` of at most 15 characters.
pub fn unique_name(prefix: &str) -> String {
    let name = format!("{prefix}{}", unique_suffix());
    assert!(name.len() <= 15, "interface name {name} is too long");
    name
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `<prefix><unique suffix>` (with loopback up).
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `argv` inside the namespace (`ip netns exec`).
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?} in netns {}: {e}", self.name))
    }

    /// Runs `argv` inside the namespace and panics unless it succeeds; returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in netns {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `Command` that runs `program` inside the namespace (for long-running children).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair; deleting one end deletes both (on drop, wherever the ends are).
pub struct VethPair {
    pub host: String,
    pub peer: String,
    peer_netns: Option<String>,
}

impl VethPair {
    /// Creates `<prefix>h<suffix>` / `<prefix>p<suffix>` in the host namespace, both up.
    pub fn new(prefix: &str) -> Self {
        let suffix = unique_suffix();
        let host = format!("{prefix}h{suffix}");
        let peer = format!("{prefix}p{suffix}");
        assert!(host.len() <= 15, "veth name {host} is too long");
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &host, "up"]);
        ip(&["link", "set", &peer, "up"]);
        Self {
            host,
            peer,
            peer_netns: None,
        }
    }

    /// Moves the peer end into `ns` and brings it up there.
    pub fn move_peer(&mut self, ns: &Netns) {
        ip(&["link", "set", &self.peer, "netns", ns.name()]);
        ns.exec_ok(&["ip", "link", "set", &self.peer, "up"]);
        self.peer_netns = Some(ns.name().to_string());
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .output();
        if let Some(ns) = &self.peer_netns {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "ip", "link", "del", &self.peer])
                .output();
        }
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TAP device whose fd the test holds: frames written go into the host as if a VM sent
/// them; frames the host sends to the "VM" are read back.
pub struct TestTap {
    name: String,
    file: File,
    /// Created by this fixture (removed on drop) rather than opened.
    owned: bool,
}

fn attach_tap(name: &str) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    assert!(name.len() < libc::IFNAMSIZ, "TAP name {name} is too long");
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads/writes an ifreq, which `req` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Non-blocking, so reads can time out through poll.
    // SAFETY: plain fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(file)
}

impl TestTap {
    /// A fresh TAP `<prefix><suffix>`, up, removed when dropped.
    pub fn create(prefix: &str) -> Self {
        let name = unique_name(prefix);
        let file = attach_tap(&name).unwrap_or_else(|e| panic!("cannot create TAP {name}: {e}"));
        ip(&["link", "set", &name, "up"]);
        let tap = Self {
            name,
            file,
            owned: true,
        };
        tap.wait_operational();
        tap
    }

    /// Attaches to the existing (persistent, up) TAP `name`, which stays when dropped.
    /// Returns once the kernel has activated the link (carrier on, operstate up): before that
    /// the TAP's queue discipline drops every frame sent to the "VM".
    pub fn open(name: &str) -> Self {
        let file = attach_tap(name).unwrap_or_else(|e| panic!("cannot open TAP {name}: {e}"));
        let tap = Self {
            name: name.to_string(),
            file,
            owned: false,
        };
        tap.wait_operational();
        tap
    }

    /// Waits until the link is operationally up (the kernel's linkwatch activates a link
    /// asynchronously, rate-limited to once a second when many links change).
    pub fn wait_operational(&self) {
        let path = format!("/sys/class/net/{}/operstate", self.name);
        crate::process::wait_until(
            &format!("TAP {} operationally up", self.name),
            Duration::from_secs(10),
            || {
                let state = std::fs::read_to_string(&path).ok()?;
                (state.trim() == "up").then_some(())
            },
        );
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one Ethernet frame "from the VM".
    pub fn write_frame(&mut self, frame: &[u8]) {
        self.file
            .write_all(frame)
            .unwrap_or_else(|e| panic!("write to TAP {}: {e}", self.name));
    }

    /// The next frame sent to the "VM" within `timeout`, if any.
    pub fn read_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            match self.file.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Some(buf);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read from TAP {}: {e}", self.name),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        }
    }

    /// The first frame within `timeout` for which `accept` returns `Some`, skipping others
    /// (e.g. IPv6 noise from the host).
    pub fn read_matching<T>(
        &mut self,
        timeout: Duration,
        mut accept: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.read_frame(left)?;
            if let Some(v) = accept(&frame) {
                return Some(v);
            }
        }
    }

    /// Discards frames already queued.
    pub fn drain(&mut self) {
        while self.read_frame(Duration::ZERO).is_some() {}
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("ip")
                .args(["link", "del", &self.name])
                .output();
        }
    }
}

/// A tokio runtime whose threads all live in a network namespace: an in-process daemon spawned
/// on it (and every process it starts: `ip`, `tc`, QEMU, …) sees that namespace's interfaces,
/// as a daemon run under `ip netns exec` would. Unix sockets are paths, so clients in the host
/// namespace still reach it.
///
/// A network namespace is per thread (`setns(CLONE_NEWNET)`), and threads and processes a
/// thread creates inherit it; the runtime is built on a thread that first entered the
/// namespace, so its workers and blocking threads are inside too. Like `ip netns exec`, the
/// thread also takes a mount namespace of its own (slave to the host's) with a fresh `/sys`, so
/// `/sys/class/net` lists the namespace's interfaces; the host's bpffs stays mounted at
/// `/sys/fs/bpf` (pins are shared with the host namespace). Dropping it shuts the runtime down.
pub struct NetnsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Puts the calling thread into network namespace `name` (`/run/netns/<name>`) and a private
/// mount namespace whose `/sys` shows it.
fn enter_netns(name: &str) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{setns, unshare, CloneFlags};
    let none: Option<&str> = None;
    // A mount namespace of this thread's own (implies CLONE_FS: this thread's fs attributes
    // are no longer shared with the process), nothing mounted here propagates back.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)
        .map_err(|e| format!("make / a slave mount: {e}"))?;
    let file = File::open(format!("/run/netns/{name}"))
        .map_err(|e| format!("open /run/netns/{name}: {e}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns({name}): {e}"))?;
    // Keep the host's bpffs: bind it aside, mount the namespace's sysfs, move it back.
    let aside = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    mount(
        Some("/sys/fs/bpf"),
        aside.path(),
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| format!("bind /sys/fs/bpf aside: {e}"))?;
    mount(Some(name), "/sys", Some("sysfs"), MsFlags::empty(), none)
        .map_err(|e| format!("mount sysfs: {e}"))?;
    mount(
        Some(aside.path()),
        "/sys/fs/bpf",
        none,
        MsFlags::MS_MOVE,
        none,
    )
    .map_err(|e| format!("move bpffs back to /sys/fs/bpf: {e}"))?;
    Ok(())
}

/// Makes the mount at `path` (and those below it) shared (`mount --make-rshared`), so mounts
/// made below it later in the host's mount namespace also appear in the mount namespaces of
/// [`NetnsRuntime`]s created afterwards (their copies are slaves of it). The host's mounts are
/// private here; a test pool's mount point is what needs this (mvirt-zfs mounts each new
/// volume below it, and QEMU inside the namespace opens the volume's files).
pub fn share_mounts_below(path: &std::path::Path) {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    mount(none, path, none, MsFlags::MS_REC | MsFlags::MS_SHARED, none)
        .unwrap_or_else(|e| panic!("mount --make-rshared {}: {e}", path.display()));
}

impl NetnsRuntime {
    /// A multi-thread runtime (`workers` threads) inside `ns`.
    pub fn new(ns: &Netns, workers: usize) -> NetnsRuntime {
        let name = ns.name().to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                if let Err(e) = enter_netns(&name) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .thread_name(format!("ns-{name}"))
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("build runtime: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Until dropped (or the owner is gone).
                let _ = stop_rx.recv();
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("spawn the netns thread");
        let handle = ready_rx
            .recv()
            .expect("the netns thread reports")
            .unwrap_or_else(|e| panic!("cannot enter netns {}: {e}", ns.name()));
        NetnsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Runs `future` on the namespace's runtime and waits for its output (from any runtime).
    pub async fn run<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(future)
            .await
            .expect("the task in the netns runtime panicked")
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for NetnsRuntime {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_netns_runtime_sees_only_its_namespace_and_its_children_run_there() {
        crate::require_root();
        let ns = Netns::new("mvtr");
        let mut veth = VethPair::new("mvr");
        veth.move_peer(&ns);
        let runtime = NetnsRuntime::new(&ns, 2);
        let peer = veth.peer.clone();
        let (listed, children) = runtime
            .run(async move {
                // From a worker and from a blocking thread: both inside.
                let listed: Vec<String> = std::fs::read_dir("/sys/class/net")
                    .unwrap()
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect();
                let out = tokio::task::spawn_blocking(|| {
                    Command::new("ip").args(["-o", "link"]).output().unwrap()
                })
                .await
                .unwrap();
                (listed, String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .await;
        assert!(listed.contains(&peer), "{listed:?}");
        assert!(!listed.contains(&veth.host), "{listed:?}");
        assert!(children.contains(&peer), "{children}");
        assert!(!children.contains(&veth.host), "{children}");
        // The host's view is untouched (sysfs and bpffs).
        assert!(std::path::Path::new("/sys/class/net")
            .join(&veth.host)
            .exists());
        assert!(!std::path::Path::new("/sys/class/net").join(&peer).exists());
        let bpf = runtime
            .run(async { std::fs::read_dir("/sys/fs/bpf").is_ok() })
            .await;
        assert!(bpf, "bpffs is mounted inside");
        drop(runtime);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mounts_made_later_below_a_shared_mount_reach_a_netns_runtime() {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        crate::require_root();
        let none: Option<&str> = None;
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        std::fs::create_dir_all(top.join("later")).unwrap();
        mount(Some(&top), &top, none, MsFlags::MS_BIND, none).unwrap();
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = umount2(&self.0.join("later"), MntFlags::MNT_DETACH);
                let _ = umount2(&self.0, MntFlags::MNT_DETACH);
            }
        }
        let _unmount = Unmount(top.clone());
        share_mounts_below(&top);
        let ns = Netns::new("mvts");
        let runtime = NetnsRuntime::new(&ns, 1);
        mount(
            Some("tmpfs"),
            &top.join("later"),
            Some("tmpfs"),
            MsFlags::empty(),
            none,
        )
        .unwrap();
        std::fs::write(top.join("later").join("file"), "x").unwrap();
        let file = top.join("later").join("file");
        let seen = runtime.run(async move { file.exists() }).await;
        assert!(seen, "the later mount is visible inside");
    }
}
