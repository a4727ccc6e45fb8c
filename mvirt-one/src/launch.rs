//! Launchers: the small, single-threaded processes that put a container or an exec'd command
//! into its namespaces.
//!
//! Namespace set-up (`unshare`, `setns`, mounts, `pivot_root`) must not happen in the
//! multi-threaded daemon, so mvirt-one re-executes its own binary (`mvirt-one launch-container`
//! / `launch-exec` with a JSON spec) for each container run and each exec. The launcher
//!
//! - for a container: unshares mount, pid, uts and ipc namespaces (the network namespace stays
//!   the pod's), mounts an overlay (image rootfs read-only below, a per-container upper dir),
//!   a minimal `/dev`, `/sys`, and — in the forked child, which is PID 1 of the new pid
//!   namespace — `/proc`, then pivots into the root, drops to the image user and execs;
//! - for an exec: joins the namespaces of the container's first process and forks the command.
//!
//! It reports `ok <host pid>` or `err <message>` on fd 3, waits for its child and exits with
//! the child's exit code (128 + signal when killed). The child dies with its launcher
//! (`PR_SET_PDEATHSIG`), so killing the launcher never leaves a container behind.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, sethostname, Gid, Uid};
use serde::{Deserialize, Serialize};

/// The fd on which a launcher reports its result to the daemon.
pub const STATUS_FD: i32 = 3;

/// Who a process runs as inside the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything a container launcher needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerLaunch {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub hostname: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub identity: Identity,
    /// Copied to `/etc/resolv.conf` in the container when it exists.
    pub resolv_conf: Option<PathBuf>,
    /// `cgroup.procs` files of the container's cgroup (one per hierarchy) that its first
    /// process joins before exec.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
}

/// Everything an exec launcher needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecLaunch {
    /// Host pid of the container's first process, whose namespaces are joined.
    pub target_pid: u32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub identity: Identity,
    pub tty: bool,
    /// The container's cgroup, which the command joins (so the limits cover it too).
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
}

fn report(line: &str) {
    // SAFETY: fd 3 is the status pipe the daemon passed; it is owned by this process alone
    // and used once.
    let mut status = unsafe { std::fs::File::from_raw_fd(STATUS_FD) };
    let _ = writeln!(status, "{line}");
}

fn finish(result: Result<std::process::Child, String>) -> i32 {
    match result {
        Ok(mut child) => {
            report(&format!("ok {}", child.id()));
            match child.wait() {
                Ok(status) => crate::reaper::std_exit_code(status),
                Err(_) => 255,
            }
        }
        Err(message) => {
            report(&format!("err {}", message.replace('\n', " ")));
            127
        }
    }
}

/// Entry point of `mvirt-one launch-container`; returns the process exit code.
pub fn run_container(spec: &ContainerLaunch) -> i32 {
    // Never let the status fd leak into the container.
    let _ = nix::fcntl::fcntl(
        STATUS_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    finish(spawn_container(spec))
}

/// Entry point of `mvirt-one launch-exec`; returns the process exit code.
pub fn run_exec(spec: &ExecLaunch) -> i32 {
    let _ = nix::fcntl::fcntl(
        STATUS_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    finish(spawn_exec(spec))
}

fn ctx<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

fn mkdir_p(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("create {}: {e}", path.display()))
}

/// Opens the `cgroup.procs` files to join (while the host's /sys/fs/cgroup is still visible).
fn open_cgroup_procs(paths: &[PathBuf]) -> Result<Vec<std::fs::File>, String> {
    paths
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| format!("open {}: {e}", p.display()))
        })
        .collect()
}

/// Moves the calling process into the cgroups (`0` means "the writer"); between fork and exec.
fn join_cgroups(files: &[std::fs::File]) -> std::io::Result<()> {
    for file in files {
        (&*file).write_all(b"0")?;
    }
    Ok(())
}

fn spawn_container(spec: &ContainerLaunch) -> Result<std::process::Child, String> {
    let argv0 = spec
        .argv
        .first()
        .ok_or_else(|| "no command to run: the image has no entrypoint or cmd".to_string())?;
    let cgroups = open_cgroup_procs(&spec.cgroup_procs)?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC,
    )
    .map_err(ctx(|| "unshare namespaces".into()))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx(|| "make / private".into()))?;
    for dir in [&spec.upper, &spec.work, &spec.merged] {
        mkdir_p(dir)?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.lower.display(),
        spec.upper.display(),
        spec.work.display()
    );
    mount(
        Some("overlay"),
        &spec.merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(ctx(|| "mount overlay root filesystem".into()))?;
    sethostname(&spec.hostname).map_err(ctx(|| "set hostname".into()))?;

    let root = &spec.merged;
    mkdir_p(&root.join("etc"))?;
    let write = |name: &str, content: String| {
        let path = root.join("etc").join(name);
        // A symlink here would point into the host; replace it.
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, content).map_err(|e| format!("write {}: {e}", path.display()))
    };
    write("hostname", format!("{}\n", spec.hostname))?;
    write(
        "hosts",
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\t{}\n",
            spec.hostname
        ),
    )?;
    if let Some(resolv) = &spec.resolv_conf {
        if let Ok(content) = std::fs::read_to_string(resolv) {
            write("resolv.conf", content)?;
        }
    }
    setup_dev(&root.join("dev"))?;
    mkdir_p(&root.join("sys"))?;
    mount(
        Some("sysfs"),
        &root.join("sys"),
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ctx(|| "mount /sys".into()))?;
    mkdir_p(&root.join("proc"))?;

    let merged = spec.merged.clone();
    let cwd = if spec.cwd.is_empty() {
        "/".to_string()
    } else {
        spec.cwd.clone()
    };
    let identity = spec.identity.clone();
    let mut command = Command::new(argv0);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    // SAFETY: the launcher is single-threaded, so the forked child may allocate; every call
    // below is a plain syscall wrapper.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            join_cgroups(&cgroups)?;
            mount(
                Some("proc"),
                &merged.join("proc"),
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )?;
            enter_root(&merged)?;
            enter_as(&cwd, &identity, true)?;
            Ok(())
        });
    }
    command.spawn().map_err(|e| format!("start {argv0:?}: {e}"))
}

/// Makes `root` the process's root directory: `pivot_root` where possible, `MS_MOVE` +
/// `chroot` when the current root is the initramfs (which cannot be pivoted away from).
fn enter_root(root: &Path) -> std::io::Result<()> {
    chdir(root)?;
    match pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH)?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
            nix::unistd::chroot(".")?;
        }
        Err(e) => return Err(e.into()),
    }
    chdir("/")?;
    Ok(())
}

/// Changes to the working directory (created if missing, as Kubernetes does) and drops to
/// `identity`.
fn enter_as(cwd: &str, identity: &Identity, create_cwd: bool) -> std::io::Result<()> {
    if create_cwd {
        std::fs::create_dir_all(cwd)?;
    }
    chdir(cwd)?;
    let groups: Vec<Gid> = identity.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups)?;
    nix::unistd::setgid(Gid::from_raw(identity.gid))?;
    nix::unistd::setuid(Uid::from_raw(identity.uid))?;
    Ok(())
}

fn setup_dev(dev: &Path) -> Result<(), String> {
    mkdir_p(dev)?;
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(ctx(|| "mount /dev".into()))?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(ctx(|| format!("mknod /dev/{name}")))?;
        // mknod honours the umask; the nodes must be world-writable.
        nix::sys::stat::fchmodat(
            None,
            &path,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(ctx(|| format!("chmod /dev/{name}")))?;
    }
    for dir in ["pts", "shm"] {
        mkdir_p(&dev.join(dir))?;
    }
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(ctx(|| "mount /dev/pts".into()))?;
    mount(
        Some("shm"),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(ctx(|| "mount /dev/shm".into()))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    Ok(())
}

fn spawn_exec(spec: &ExecLaunch) -> Result<std::process::Child, String> {
    let argv0 = spec
        .argv
        .first()
        .ok_or_else(|| "exec needs a command".to_string())?;
    // The cgroup files are opened before the container's mount namespace hides them.
    let cgroups = open_cgroup_procs(&spec.cgroup_procs)?;
    // Open every namespace before joining any: after joining the mount namespace, /proc is the
    // container's.
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{}/ns/{name}", spec.target_pid);
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("open {path}: {e} (container gone?)"))?;
        namespaces.push((name, file, flag));
    }
    for (name, file, flag) in &namespaces {
        setns(file, *flag).map_err(ctx(|| format!("join {name} namespace")))?;
    }
    drop(namespaces);
    let cwd = if spec.cwd.is_empty() {
        "/".to_string()
    } else {
        spec.cwd.clone()
    };
    let identity = spec.identity.clone();
    let tty = spec.tty;
    let mut command = Command::new(argv0);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: single-threaded launcher; plain syscalls only.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            join_cgroups(&cgroups)?;
            if tty {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            enter_as(&cwd, &identity, false)?;
            Ok(())
        });
    }
    command.spawn().map_err(|e| format!("exec {argv0:?}: {e}"))
}

/// `KEY=VALUE` strings as pairs (entries without `=` are kept with an empty value).
pub fn split_env(entries: &[String]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

/// Checks that a string can be passed to exec (no interior NUL).
pub fn valid_arg(arg: &str) -> bool {
    CString::new(arg).is_ok()
}
