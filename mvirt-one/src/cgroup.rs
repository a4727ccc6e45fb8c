//! Per-container cgroups: CPU quota, memory limit, pids limit, OOM-kill detection.
//!
//! In a pod VM mvirt-one mounts cgroup v2 on `/sys/fs/cgroup` and is PID 1 in its root, so
//! containers live in `/sys/fs/cgroup/mvirt-one/<pod id>/<container>` with the `cpu`, `memory`
//! and `pids` controllers enabled on the way down (`cgroup.subtree_control`; the intermediate
//! levels hold no processes, as cgroup v2 requires). Limits: `cpu.max` (`<millicores × 100>
//! 100000`), `memory.max` (+ `memory.swap.max 0`, `memory.oom.group 1`: an OOM kill takes the
//! whole container, as in Kubernetes), `pids.max`.
//!
//! Local mode runs on whatever the host has. A host with the controllers bound to cgroup v1
//! hierarchies (the hybrid layout of the test machines) gets the v1 equivalents —
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`, `memory.limit_in_bytes` (+ `memsw`),
//! `pids.max` — in `<controller mount>/<own cgroup>/mvirt-one/<pod>/<container>` per
//! controller. Without any usable hierarchy, a container without limits runs uncontained and
//! a container with limits is refused at `CreatePod` (`FAILED_PRECONDITION`).
//!
//! A process joins by writing `0` ("myself") to `cgroup.procs` after its fork, before exec
//! ([`crate::launch`] gets the paths): everything it forks inherits the cgroup. The OOM-kill
//! counter (`memory.events` / `memory.oom_control`: `oom_kill`) is read before and after each
//! run; an increase means the kernel OOM killer struck inside the container.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the cgroup under which mvirt-one puts its pods.
pub const BASE_NAME: &str = "mvirt-one";
/// `cpu.max` period (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CPU quota the kernel accepts is 1 ms per period: 10 millicores.
pub const MIN_CPU_MILLICORES: u32 = 10;
/// 1000 CPUs: far beyond any pod VM, and well inside what `cpu.max` accepts.
pub const MAX_CPU_MILLICORES: u32 = 1_000_000;
/// Below this a container cannot even exec busybox; such a limit is a mistake.
pub const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
/// The kernel's `PID_MAX_LIMIT`: `pids.max` accepts nothing larger.
pub const MAX_PIDS: u32 = 4 * 1024 * 1024;

/// Resource limits of one container; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_millicores: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = self.cpu_millicores {
            if !(MIN_CPU_MILLICORES..=MAX_CPU_MILLICORES).contains(&m) {
                return Err(format!(
                    "cpu_millicores must be between {MIN_CPU_MILLICORES} and {MAX_CPU_MILLICORES} (got {m}); omit it for no limit"
                ));
            }
        }
        if let Some(b) = self.memory_bytes {
            if b < MIN_MEMORY_BYTES {
                return Err(format!(
                    "memory_limit_bytes must be at least {MIN_MEMORY_BYTES} (got {b}); omit it for no limit"
                ));
            }
        }
        if let Some(p) = self.pids {
            if !(1..=MAX_PIDS).contains(&p) {
                return Err(format!(
                    "pids_limit must be between 1 and {MAX_PIDS} (got {p}); omit it for no limit"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{0}")]
    Unsupported(String),
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Where mvirt-one's cgroups live on this system.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// One unified tree: `base` is `<cgroup2 mount><own cgroup>/mvirt-one`; `available` are the
    /// controllers the parent of `base` offers.
    V2 {
        base: PathBuf,
        available: Vec<String>,
    },
    /// One tree per controller: `(controller, <mount><own cgroup>/mvirt-one)`.
    V1 { bases: Vec<(String, PathBuf)> },
    /// No usable hierarchy.
    None,
}

impl Hierarchy {
    /// Finds the hierarchy from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::from_proc(&mountinfo, &own, |p| std::fs::read_to_string(p).ok())
    }

    fn from_proc(
        mountinfo: &str,
        own_cgroups: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Self {
        // /proc/self/cgroup: "<id>:<controllers>:<path>"; v2 is "0::<path>".
        let own_path = |controller: Option<&str>| -> Option<String> {
            own_cgroups.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                let matches = match controller {
                    None => list.is_empty(),
                    Some(c) => list.split(',').any(|x| x == c),
                };
                matches.then(|| path.to_string())
            })
        };
        let join = |mount: &str, path: &str| {
            Path::new(mount)
                .join(path.trim_start_matches('/'))
                .join(BASE_NAME)
        };
        // mountinfo: "... <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
        let mut v2_mount = None;
        let mut v1_mounts: Vec<(String, String)> = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).unwrap_or_default().to_string();
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let super_opts = right.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" => v2_mount = Some(mount_point),
                "cgroup" => {
                    for c in CONTROLLERS {
                        if super_opts.split(',').any(|o| o == c) {
                            v1_mounts.push((c.to_string(), mount_point.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        if let (Some(mount), Some(path)) = (&v2_mount, own_path(None)) {
            let base = join(mount, &path);
            let parent = base.parent().unwrap_or(Path::new(mount)).to_path_buf();
            let available: Vec<String> = read(&parent.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .filter(|c| CONTROLLERS.contains(c))
                .map(str::to_string)
                .collect();
            if !available.is_empty() {
                return Hierarchy::V2 { base, available };
            }
        }
        let bases: Vec<(String, PathBuf)> = v1_mounts
            .into_iter()
            .filter_map(|(c, mount)| {
                let path = own_path(Some(&c))?;
                Some((c, join(&mount, &path)))
            })
            .collect();
        if bases.is_empty() {
            Hierarchy::None
        } else {
            Hierarchy::V1 { bases }
        }
    }

    fn has(&self, controller: &str) -> bool {
        match self {
            Hierarchy::V2 { available, .. } => available.iter().any(|c| c == controller),
            Hierarchy::V1 { bases } => bases.iter().any(|(c, _)| c == controller),
            Hierarchy::None => false,
        }
    }

    /// Whether `limits` can be enforced here; the error says which controller is missing.
    pub fn check(&self, limits: &Limits) -> Result<(), CgroupError> {
        let needed = [
            ("cpu", limits.cpu_millicores.is_some()),
            ("memory", limits.memory_bytes.is_some()),
            ("pids", limits.pids.is_some()),
        ];
        for (controller, wanted) in needed {
            if wanted && !self.has(controller) {
                return Err(CgroupError::Unsupported(format!(
                    "cannot enforce the {controller} limit: no cgroup hierarchy with the {controller} controller on this system"
                )));
            }
        }
        Ok(())
    }

    /// Creates (and limits) the cgroup of one container.
    pub fn create(
        &self,
        pod: &str,
        container: &str,
        limits: &Limits,
    ) -> Result<Cgroup, CgroupError> {
        self.check(limits)?;
        // The base is removed when its last pod goes; a create racing with that sees a
        // directory vanish under it and simply starts over.
        let mut attempts = 0;
        loop {
            match self.create_once(pod, container, limits) {
                Err(CgroupError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempts < 5 =>
                {
                    attempts += 1;
                }
                result => return result,
            }
        }
    }

    fn create_once(
        &self,
        pod: &str,
        container: &str,
        limits: &Limits,
    ) -> Result<Cgroup, CgroupError> {
        match self {
            Hierarchy::None => Ok(Cgroup { dirs: Vec::new() }),
            Hierarchy::V2 { base, available } => {
                let enable: String = available
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let pod_dir = base.join(pod);
                let dir = pod_dir.join(container);
                // Controllers must be enabled on every level above the leaf (mvirt-one's own
                // cgroup, the base, the pod); only the leaf holds processes.
                let parent = base.parent().map(Path::to_path_buf).unwrap_or_default();
                write(&parent.join("cgroup.subtree_control"), &enable)?;
                for level in [base, &pod_dir] {
                    mkdir(level)?;
                    write(&level.join("cgroup.subtree_control"), &enable)?;
                }
                mkdir(&dir)?;
                let cgroup = Cgroup {
                    dirs: vec![(None, dir.clone())],
                };
                let apply = || -> Result<(), CgroupError> {
                    if let Some(m) = limits.cpu_millicores {
                        write(
                            &dir.join("cpu.max"),
                            &format!("{} {CPU_PERIOD_US}", u64::from(m) * 100),
                        )?;
                    }
                    if let Some(b) = limits.memory_bytes {
                        write(&dir.join("memory.max"), &b.to_string())?;
                        write_if_exists(&dir.join("memory.swap.max"), "0")?;
                        write_if_exists(&dir.join("memory.oom.group"), "1")?;
                    }
                    if let Some(p) = limits.pids {
                        write(&dir.join("pids.max"), &p.to_string())?;
                    }
                    Ok(())
                };
                match apply() {
                    Ok(()) => Ok(cgroup),
                    Err(e) => {
                        cgroup.remove_now();
                        Err(e)
                    }
                }
            }
            Hierarchy::V1 { bases } => {
                let mut cgroup = Cgroup { dirs: Vec::new() };
                for (controller, base) in bases {
                    let dir = base.join(pod).join(container);
                    if let Err(e) = mkdir(&dir) {
                        cgroup.remove_now();
                        return Err(e);
                    }
                    cgroup.dirs.push((Some(controller.clone()), dir));
                }
                let apply = |cgroup: &Cgroup| -> Result<(), CgroupError> {
                    for (controller, dir) in &cgroup.dirs {
                        match controller.as_deref() {
                            Some("cpu") => {
                                if let Some(m) = limits.cpu_millicores {
                                    write(
                                        &dir.join("cpu.cfs_period_us"),
                                        &CPU_PERIOD_US.to_string(),
                                    )?;
                                    write(
                                        &dir.join("cpu.cfs_quota_us"),
                                        &(u64::from(m) * 100).to_string(),
                                    )?;
                                }
                            }
                            Some("memory") => {
                                if let Some(b) = limits.memory_bytes {
                                    write(&dir.join("memory.limit_in_bytes"), &b.to_string())?;
                                    write_if_exists(
                                        &dir.join("memory.memsw.limit_in_bytes"),
                                        &b.to_string(),
                                    )?;
                                }
                            }
                            Some("pids") => {
                                if let Some(p) = limits.pids {
                                    write(&dir.join("pids.max"), &p.to_string())?;
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                };
                match apply(&cgroup) {
                    Ok(()) => Ok(cgroup),
                    Err(e) => {
                        cgroup.remove_now();
                        Err(e)
                    }
                }
            }
        }
    }

    /// The cgroup a container of a pod has (or would have), without creating it.
    pub fn cgroup_of(&self, pod: &str, container: &str) -> Cgroup {
        let dirs = match self {
            Hierarchy::V2 { base, .. } => vec![(None, base.join(pod).join(container))],
            Hierarchy::V1 { bases } => bases
                .iter()
                .map(|(c, b)| (Some(c.clone()), b.join(pod).join(container)))
                .collect(),
            Hierarchy::None => vec![],
        };
        Cgroup { dirs }
    }

    /// The directories of a pod's cgroup (one per hierarchy).
    pub fn pod_dirs(&self, pod: &str) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2 { base, .. } => vec![base.join(pod)],
            Hierarchy::V1 { bases } => bases.iter().map(|(_, b)| b.join(pod)).collect(),
            Hierarchy::None => vec![],
        }
    }

    /// Removes the cgroups of a pod none of whose containers ever ran (a failed create).
    pub fn discard(&self, pod: &str, containers: &[&str]) {
        for container in containers {
            self.cgroup_of(pod, container).remove_now();
        }
        self.remove_pod(pod);
    }

    /// Removes the (empty) cgroup of a pod after its containers' cgroups are gone.
    /// Also removes the base once no pod is left (other pods keep it busy).
    pub fn remove_pod(&self, pod: &str) {
        for dir in self.pod_dirs(pod) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot remove pod cgroup");
                }
            }
            if let Some(base) = dir.parent() {
                let _ = std::fs::remove_dir(base);
            }
        }
    }
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                mkdir(parent)?;
            }
            match std::fs::create_dir(path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_err(path)(e)),
                _ => Ok(()),
            }
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(value.as_bytes()).map_err(io_err(path))
}

fn write_if_exists(path: &Path, value: &str) -> Result<(), CgroupError> {
    if path.exists() {
        write(path, value)
    } else {
        Ok(())
    }
}

/// The cgroup of one container: one directory (v2) or one per controller (v1).
#[derive(Debug, Clone, Default)]
pub struct Cgroup {
    dirs: Vec<(Option<String>, PathBuf)>,
}

impl Cgroup {
    /// The `cgroup.procs` files a process writes `0` to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// The directories (for tests and diagnostics).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The directory holding `controller`'s files (v2: the one directory).
    pub fn dir_for(&self, controller: &str) -> Option<PathBuf> {
        self.dirs
            .iter()
            .find(|(c, _)| c.as_deref().is_none_or(|c| c == controller))
            .map(|(_, d)| d.clone())
    }

    /// How many times the kernel OOM killer killed a process in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        for (controller, dir) in &self.dirs {
            let file = match controller.as_deref() {
                None => dir.join("memory.events"),
                Some("memory") => dir.join("memory.oom_control"),
                Some(_) => continue,
            };
            if let Ok(text) = std::fs::read_to_string(&file) {
                return text
                    .lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
            }
        }
        0
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in self.dirs() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn remove_now(&self) -> bool {
        let mut all = true;
        for dir in self.dirs() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => all = false,
            }
        }
        all
    }

    /// Kills whatever still runs in the cgroup and removes it, retrying for up to ~7 s while
    /// the kernel finishes the killed processes: when a container's pid-namespace init dies,
    /// the rest of the namespace is killed asynchronously, and cgroup v1 has no notification
    /// for "empty" (v2's `cgroup.events` does, but one loop for both keeps this simple).
    pub async fn remove(&self) -> Result<(), CgroupError> {
        for attempt in 0..50 {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if self.remove_now() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20 + attempt * 5)).await;
        }
        let leftover = self
            .dirs()
            .into_iter()
            .find(|d| d.exists())
            .unwrap_or_default();
        let source = std::fs::remove_dir(&leftover)
            .err()
            .unwrap_or_else(|| std::io::Error::other("busy"));
        Err(CgroupError::Io {
            path: leftover,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
40 25 0:35 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
41 40 0:36 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
44 40 0:39 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
48 40 0:43 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
50 40 0:45 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "8:pids:/\n4:memory:/jobs/42\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_hosts_use_the_v1_controllers() {
        let h = Hierarchy::from_proc(HYBRID_MOUNTINFO, HYBRID_CGROUP, |p| {
            (p == Path::new("/sys/fs/cgroup/unified/cgroup.controllers"))
                .then(|| "hugetlb\n".to_string())
        });
        let Hierarchy::V1 { bases } = &h else {
            panic!("{h:?}")
        };
        assert!(bases.contains(&(
            "memory".to_string(),
            PathBuf::from("/sys/fs/cgroup/memory/jobs/42/mvirt-one")
        )));
        assert!(bases.contains(&(
            "pids".to_string(),
            PathBuf::from("/sys/fs/cgroup/pids/mvirt-one")
        )));
        assert!(h
            .check(&Limits {
                cpu_millicores: Some(500),
                memory_bytes: Some(1 << 30),
                pids: Some(10)
            })
            .is_ok());
    }

    #[test]
    fn the_vm_uses_cgroup_v2_at_the_root() {
        let mountinfo = "30 1 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let h = Hierarchy::from_proc(mountinfo, "0::/\n", |p| {
            (p == Path::new("/sys/fs/cgroup/cgroup.controllers"))
                .then(|| "cpuset cpu io memory pids\n".to_string())
        });
        let Hierarchy::V2 { base, available } = &h else {
            panic!("{h:?}")
        };
        assert_eq!(base, Path::new("/sys/fs/cgroup/mvirt-one"));
        assert_eq!(available, &["cpu", "memory", "pids"]);
    }

    #[test]
    fn limits_need_their_controller() {
        let h = Hierarchy::V1 {
            bases: vec![("pids".into(), PathBuf::from("/x"))],
        };
        let err = h
            .check(&Limits {
                memory_bytes: Some(1 << 30),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("memory controller"), "{err}");
        assert!(Hierarchy::None.check(&Limits::default()).is_ok());
    }

    #[test]
    fn limit_values_are_validated() {
        assert!(Limits::default().validate().is_ok());
        assert!(Limits {
            cpu_millicores: Some(MIN_CPU_MILLICORES),
            memory_bytes: Some(MIN_MEMORY_BYTES),
            pids: Some(1),
        }
        .validate()
        .is_ok());
        for bad in [
            Limits {
                cpu_millicores: Some(5),
                ..Default::default()
            },
            Limits {
                memory_bytes: Some(1024),
                ..Default::default()
            },
            Limits {
                pids: Some(0),
                ..Default::default()
            },
            Limits {
                cpu_millicores: Some(MAX_CPU_MILLICORES + 1),
                ..Default::default()
            },
            Limits {
                pids: Some(MAX_PIDS + 1),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
