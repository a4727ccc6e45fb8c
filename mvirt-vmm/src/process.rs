//! Hypervisor processes as the kernel sees them: identity (pid + start time), command line,
//! liveness, signals, and waiting for exit with a pidfd.
//!
//! A pid alone is not an identity: after a crash and a reboot of the daemon the pid may belong
//! to anything. Every check here compares the start time recorded when the process was launched
//! (field 22 of `/proc/<pid>/stat`), and recovery also checks the command line.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::model::ProcessIdentity;

/// State letter and start time of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: parse after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

/// The identity of a live process, or `None` if `pid` does not exist (or is a zombie).
pub fn identity(pid: u32) -> Option<ProcessIdentity> {
    let (state, start_time) = stat(pid)?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    Some(ProcessIdentity { pid, start_time })
}

/// Whether the process with this identity is still alive (same pid, same start time).
pub fn is_alive(id: ProcessIdentity) -> bool {
    identity(id.pid).is_some_and(|now| now == id)
}

/// The command line of `pid` (empty if it cannot be read).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `signal` to the process if it is still the one identified. Returns whether it was sent.
pub fn signal(id: ProcessIdentity, signal: nix::sys::signal::Signal) -> bool {
    if !is_alive(id) {
        return false;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(id.pid as i32), signal).is_ok()
}

struct PidFd(OwnedFd);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn pidfd_open(pid: u32) -> Option<PidFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Some(PidFd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// Resolves once the identified process has exited (or has become a zombie). Works for
/// processes that are not our children (adopted after a restart).
pub async fn wait_exit(id: ProcessIdentity) {
    if !is_alive(id) {
        return;
    }
    if let Some(fd) = pidfd_open(id.pid) {
        // The pid may have been recycled between the check and the open: check again.
        if !is_alive(id) {
            return;
        }
        // SAFETY: PidFd owns the fd; it stays open and unchanged for the AsyncFd's lifetime.
        if let Ok(afd) = unsafe { AsyncFd::register(fd) } {
            let _ = afd.readable().await;
            return;
        }
    }
    // No pidfd (very old kernel): poll /proc.
    while is_alive(id) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identity_tracks_a_process_until_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = identity(child.id()).unwrap();
        assert!(is_alive(id));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !cmdline(id.pid).contains(&"30".to_string()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                cmdline(id.pid)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // A different start time is a different process, even with the same pid.
        assert!(!is_alive(ProcessIdentity {
            pid: id.pid,
            start_time: id.start_time + 1
        }));
        let waiter = tokio::spawn(wait_exit(id));
        assert!(signal(id, nix::sys::signal::Signal::SIGKILL));
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        let _ = child.wait();
        assert!(!is_alive(id));
        assert!(!signal(id, nix::sys::signal::Signal::SIGKILL));
    }
}
