//! Child processes and their exit statuses, collected in one place.
//!
//! Every process mvirt-one starts (container and exec launchers) is spawned through
//! [`Reaper::spawn`], which registers its pid while holding the same lock the SIGCHLD handler
//! takes, so an exit is never missed nor reaped by someone else. As PID 1 ([`Reaper::new`] with
//! `adopt_orphans`), the reaper also collects every orphan the kernel re-parents to init; in
//! local mode it only waits for its own pids, leaving other children of the process alone.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// Exit code of a process: its status, or 128 + signal number when a signal killed it.
pub fn exit_code(status: &WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(*code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + *signal as i32),
        _ => None,
    }
}

/// Exit code of a `std::process::ExitStatus`, with the same convention as [`exit_code`].
pub fn std_exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Mutex<HashMap<i32, oneshot::Sender<i32>>>>,
    adopt_orphans: bool,
}

impl Reaper {
    /// Starts the SIGCHLD listener. Must be called inside a tokio runtime.
    pub fn new(adopt_orphans: bool) -> std::io::Result<Self> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let reaper = Self {
            inner: Default::default(),
            adopt_orphans,
        };
        let worker = reaper.clone();
        tokio::spawn(async move {
            loop {
                worker.collect();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `command` and returns its pid and a receiver for its exit code.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<(u32, oneshot::Receiver<i32>)> {
        let mut waiting = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let child = command.spawn()?;
        let pid = child.id();
        // The Child handle is dropped without waiting: the reaper owns the pid from now on.
        drop(child);
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid as i32, tx);
        Ok((pid, rx))
    }

    fn collect(&self) {
        let mut waiting = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let pids: Vec<i32> = waiting.keys().copied().collect();
        for pid in pids {
            if let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                if let Some(code) = exit_code(&status) {
                    if let Some(tx) = waiting.remove(&pid) {
                        let _ = tx.send(code);
                    }
                }
            }
        }
        if self.adopt_orphans {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => {
                        if let (Some(pid), Some(code)) = (status.pid(), exit_code(&status)) {
                            if let Some(tx) = waiting.remove(&pid.as_raw()) {
                                let _ = tx.send(code);
                            } else {
                                tracing::debug!(pid = pid.as_raw(), code, "reaped orphan");
                            }
                        }
                    }
                }
            }
        }
    }
}
