//! Child processes for tests: killed (and reaped) when the guard drops, even when the test
//! fails, plus waiting for a condition with a deadline instead of sleeping.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process killed with SIGKILL on drop.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd`, panicking with the program name if it cannot be started.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child: Some(child),
            name: name.to_string(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (e.g. SIGTERM) without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits for the process to exit within `timeout`; returns its exit status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            } else {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` until it returns `Some` or `timeout` passes; panics with `what` on timeout.
pub fn wait_until<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async version of [`wait_until`] for tokio tests.
pub async fn wait_until_async<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Program names of the hypervisors mvirt-vmm starts.
const HYPERVISOR_PROGRAMS: &[&str] = &["qemu-system-", "cloud-hypervisor"];

/// Every live hypervisor process (QEMU or cloud-hypervisor, by the program name of its command
/// line) whose arguments name a path under `dir`: `(pid, command line)`.
pub fn hypervisors_under(dir: &std::path::Path) -> Vec<(i32, String)> {
    let needle = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A zombie has an empty command line: it no longer runs a guest.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(program) = args.first() else {
            continue;
        };
        let program = program.rsplit('/').next().unwrap_or(program);
        if HYPERVISOR_PROGRAMS.iter().any(|p| program.starts_with(p))
            && args.iter().skip(1).any(|a| a.contains(&needle))
        {
            found.push((pid, args.join(" ")));
        }
    }
    found
}

/// Asserts, at the end of a test, that no hypervisor process started by the test outlives it:
/// no QEMU or cloud-hypervisor process whose command line names a path under `dir` (the test's
/// mvirt-vmm data directory or any directory above it) may still run. A process that is already
/// being torn down gets `grace` to disappear. Leftovers are SIGKILLed (so one failing test does
/// not leak guests into the next) and the test fails with their pids and command lines.
pub async fn assert_no_hypervisor_outlives(dir: &std::path::Path, grace: Duration) {
    let deadline = Instant::now() + grace;
    let mut left = hypervisors_under(dir);
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = hypervisors_under(dir);
    }
    for (pid, _) in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "{} hypervisor process(es) under {} outlived the test (now killed):\n{}",
        left.len(),
        dir.display(),
        left.iter()
            .map(|(pid, cmd)| format!("  pid {pid}: {cmd}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose program is called `qemu-system-…` and names a file under the directory
    /// is found, fails the check, and is killed by it; one naming another directory is not.
    #[tokio::test]
    async fn a_leftover_hypervisor_fails_the_check_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        // `tail -f <file>` under a hypervisor's name: runs until killed, names its file.
        let fake = dir.path().join("qemu-system-x86_64");
        std::fs::copy("/usr/bin/tail", &fake).unwrap();
        let run = dir.path().join("run");
        let spawn_naming = |base: &std::path::Path| {
            let log = base.join("vm").join("console.log");
            std::fs::create_dir_all(log.parent().unwrap()).unwrap();
            std::fs::write(&log, b"").unwrap();
            // A copy just written can be "text file busy" while another test thread's fork still
            // holds the copy's write descriptor: try again for a moment.
            let mut tries = 0;
            loop {
                match std::process::Command::new(&fake)
                    .arg("-f")
                    .arg(&log)
                    .spawn()
                {
                    Ok(child) => break child,
                    Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("spawn {}: {e}", fake.display()),
                }
            }
        };
        let mut ours = spawn_naming(&run);
        let mut foreign = spawn_naming(other.path());
        wait_until(
            "the fake hypervisor to exec",
            Duration::from_secs(5),
            || (!hypervisors_under(&run).is_empty()).then_some(()),
        );
        assert_eq!(hypervisors_under(&run)[0].0, ours.id() as i32);
        let check = tokio::spawn({
            let run = run.clone();
            async move { assert_no_hypervisor_outlives(&run, Duration::from_millis(200)).await }
        });
        let failed = check.await.unwrap_err();
        assert!(failed.is_panic());
        let status = ours.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(matches!(foreign.try_wait(), Ok(None)), "foreign survives");
        assert!(hypervisors_under(&run).is_empty());
        foreign.kill().unwrap();
        foreign.wait().unwrap();
        assert_no_hypervisor_outlives(&run, Duration::ZERO).await;
    }
}
