//! A VM's process: start (launch and track until it exits), stop, kill, restart, and the
//! classification of an exit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::cloudinit;
use crate::console::ConsoleHub;
use crate::hypervisor::{LaunchRequest, RunDir};
use crate::model::{now_ms, ProcessIdentity, VmRecord, VmState};
use crate::process;

use super::{lock, StopReason, VmEventKind, VmRuntime, Vmm, VmmError};

impl Vmm {
    /// Starts a stopped (or failed) VM; returns it running. Starting a running VM is a no-op.
    pub async fn start(&self, id: &str) -> Result<VmRecord, VmmError> {
        let since = std::time::Instant::now();
        let result = self
            .serialised(
                id,
                move |vmm, id| async move { vmm.start_locked(&id).await },
            )
            .await;
        crate::metrics::vm_started(&result, self.hypervisor_name(), since);
        result
    }

    /// SIGKILLs every hypervisor process naming the VM's run directory that the daemon does
    /// not track (none, unless something went wrong) and waits until they are gone.
    pub(super) async fn kill_untracked(&self, id: &str, run: &RunDir) {
        let tracked = lock(&self.inner.runtimes).get(id).map(|r| r.identity);
        for pid in process::all_pids() {
            let Some(identity) = process::identity(pid) else {
                continue;
            };
            if Some(identity) == tracked
                || !self.inner.driver.owns_process(run, &process::cmdline(pid))
            {
                continue;
            }
            tracing::warn!(
                vm = id,
                pid,
                "killing an untracked hypervisor process of the VM"
            );
            self.inner.audit.warn(
                format!("killed untracked hypervisor process {pid} of VM {id}"),
                &[id],
            );
            process::signal(identity, nix::sys::signal::Signal::SIGKILL);
            process::wait_exit(identity).await;
        }
        self.kill_backends(id, run).await;
    }

    /// SIGKILLs the device backends (a pod's vhost-device-vsock) of a VM whose hypervisor is
    /// gone: without their hypervisor they serve nothing.
    pub(super) async fn kill_backends(&self, id: &str, run: &RunDir) {
        for pid in process::all_pids() {
            let Some(identity) = process::identity(pid) else {
                continue;
            };
            if self.inner.driver.owns_backend(run, &process::cmdline(pid)) {
                tracing::info!(vm = id, pid, "stopping the device backend of the VM");
                process::signal(identity, nix::sys::signal::Signal::SIGKILL);
                process::wait_exit(identity).await;
            }
        }
    }

    pub(super) async fn start_locked(&self, id: &str) -> Result<VmRecord, VmmError> {
        let vm = self.load(id)?;
        if vm.state.is_active() {
            return Ok(vm);
        }
        // Files may have vanished since create.
        self.validate_spec(&vm.spec)?;
        self.set_state(id, VmState::Starting, "start requested")?;
        match self.launch(&vm).await {
            Ok(vm) => Ok(vm),
            Err(err) => {
                let reason = format!("start failed: {}", mvirt_common::error::error_chain(&err));
                self.inner.audit.error(reason.clone(), &[id]);
                let _ = self.set_state(id, VmState::Failed, reason);
                Err(err)
            }
        }
    }

    pub(super) async fn launch(&self, vm: &VmRecord) -> Result<VmRecord, VmmError> {
        let id = vm.id.as_str();
        let run = self.run_dir(id);
        std::fs::create_dir_all(run.path()).map_err(|source| VmmError::Io {
            path: run.path().display().to_string(),
            source,
        })?;
        // A new boot starts a new console log.
        let _ = std::fs::remove_file(run.console_log());
        let cidata = match &vm.spec.cloud_init {
            Some(ci) => {
                Some(cloudinit::write_seed(&run.cidata_image(), id, &vm.spec.name, ci).await?)
            }
            None => None,
        };
        let request = LaunchRequest {
            vm_id: id,
            spec: &vm.spec,
            run: &run,
            cidata: cidata.as_deref(),
        };
        let launched =
            self.inner
                .driver
                .launch(&request)
                .await
                .map_err(|source| VmmError::Hypervisor {
                    id: id.to_string(),
                    source,
                })?;
        let identity = launched.identity;
        self.track(id, identity, launched.child, Vec::new());
        let recorded = self.update(id, VmEventKind::StateChanged, |vm| {
            vm.state = VmState::Running;
            vm.state_reason = "started".into();
            vm.process = Some(identity);
            vm.started_at_ms = now_ms();
            vm.pending_changes.clear();
        });
        let vm = match recorded {
            Ok(vm) => vm,
            Err(err) => {
                // A process the store does not name would outlive the VM: stop it.
                if let Some((_, mut exited, stop_reason)) = self.runtime_handles(id) {
                    *lock(&stop_reason) = Some("start could not be recorded".into());
                    process::signal(identity, nix::sys::signal::Signal::SIGKILL);
                    let _ = exited.wait_for(|d| *d).await;
                }
                return Err(err);
            }
        };
        self.inner.audit.audit(
            format!("started VM {} (pid {})", vm.spec.name, identity.pid),
            &[id],
        );
        Ok(vm)
    }

    /// Attaches the console and starts the exit watcher for a running process.
    pub(super) fn track(
        &self,
        id: &str,
        identity: ProcessIdentity,
        child: Option<tokio::process::Child>,
        console_seed: Vec<u8>,
    ) {
        let run = self.run_dir(id);
        // QEMU logs the serial port itself; for cloud-hypervisor the hub keeps the log.
        let log = (self.inner.driver.name() != "qemu").then(|| run.console_log());
        let console = ConsoleHub::attach(run.console_socket(), console_seed, log);
        let (exited_tx, exited_rx) = watch::channel(false);
        let stop_reason = Arc::new(Mutex::new(None));
        lock(&self.inner.runtimes).insert(
            id.to_string(),
            VmRuntime {
                identity,
                console: console.clone(),
                exited: exited_rx,
                stop_reason: stop_reason.clone(),
            },
        );
        let vmm = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let status = tokio::select! {
                _ = vmm.inner.shutdown.cancelled() => return,
                status = wait_for(identity, child) => status,
            };
            vmm.kill_backends(&id, &vmm.run_dir(&id)).await;
            let requested = lock(&stop_reason).clone();
            let (state, reason) = exit_outcome(requested, status);
            // The console hub ends by itself: the dead process's socket reads EOF once the
            // last output has been delivered to viewers.
            let recorded = vmm.update(&id, VmEventKind::StateChanged, |vm| {
                if vm.process == Some(identity) {
                    vm.state = state;
                    vm.state_reason = reason.clone();
                    vm.process = None;
                }
            });
            {
                let mut runtimes = lock(&vmm.inner.runtimes);
                if runtimes.get(&id).is_some_and(|r| r.identity == identity) {
                    runtimes.remove(&id);
                }
            }
            match recorded {
                Ok(vm) => {
                    let message = format!("VM {} stopped: {reason}", vm.spec.name);
                    if state == VmState::Failed {
                        vmm.inner.audit.error(message, &[&id]);
                    } else {
                        vmm.inner.audit.audit(message, &[&id]);
                    }
                }
                Err(VmmError::NotFound(_)) => {}
                Err(err) => tracing::error!(vm = %id, error = %err, "cannot record VM exit"),
            }
            let _ = exited_tx.send(true);
        });
    }

    pub(super) fn runtime_handles(
        &self,
        id: &str,
    ) -> Option<(ProcessIdentity, watch::Receiver<bool>, StopReason)> {
        lock(&self.inner.runtimes)
            .get(id)
            .map(|r| (r.identity, r.exited.clone(), r.stop_reason.clone()))
    }

    /// Graceful stop: power button, then a hard stop after `timeout`.
    pub async fn stop(&self, id: &str, timeout: Option<Duration>) -> Result<VmRecord, VmmError> {
        self.serialised(id, move |vmm, id| async move {
            vmm.stop_locked(&id, timeout).await
        })
        .await
    }

    pub(super) async fn stop_locked(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<VmRecord, VmmError> {
        let vm = self.load(id)?;
        let Some((identity, mut exited, stop_reason)) = self.runtime_handles(id) else {
            return Ok(vm);
        };
        let timeout = timeout.unwrap_or(self.inner.config.default_stop_timeout);
        *lock(&stop_reason) = Some("stopped by request (ACPI power button)".into());
        self.set_state(id, VmState::Stopping, "power button pressed")?;
        self.inner.audit.audit(
            format!(
                "stopping VM {} (power button, {}s timeout)",
                vm.spec.name,
                timeout.as_secs()
            ),
            &[id],
        );
        let run = self.run_dir(id);
        if let Err(err) = self.inner.driver.power_button(&run).await {
            tracing::warn!(vm = id, error = %err, "power button failed; stopping hard");
        }
        if tokio::time::timeout(timeout, exited.wait_for(|done| *done))
            .await
            .is_err()
        {
            *lock(&stop_reason) = Some(format!(
                "stopped by request: the guest ignored the power button for {}s, hard stop",
                timeout.as_secs()
            ));
            self.inner.audit.warn(
                format!("VM {} ignored the power button: hard stop", vm.spec.name),
                &[id],
            );
            self.hard_stop(id, identity, &run, &mut exited).await;
        }
        self.load(id)
    }

    /// The hypervisor's own stop, then SIGKILL if the process lingers.
    pub(super) async fn hard_stop(
        &self,
        id: &str,
        identity: ProcessIdentity,
        run: &RunDir,
        exited: &mut watch::Receiver<bool>,
    ) {
        if let Err(err) = self.inner.driver.hard_stop(run).await {
            tracing::warn!(vm = id, error = %err, "hypervisor hard stop failed; sending SIGKILL");
        }
        if tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|d| *d))
            .await
            .is_err()
        {
            process::signal(identity, nix::sys::signal::Signal::SIGKILL);
            let _ = exited.wait_for(|d| *d).await;
        }
    }

    /// Immediate stop: SIGKILL to the hypervisor process.
    pub async fn kill(&self, id: &str) -> Result<VmRecord, VmmError> {
        self.serialised(id, move |vmm, id| async move {
            vmm.kill_locked(&id, "killed by request").await
        })
        .await
    }

    /// Immediate stop (SIGKILL) recording `reason` as the state reason (the fence lease).
    pub async fn kill_with_reason(&self, id: &str, reason: &str) -> Result<VmRecord, VmmError> {
        let reason = reason.to_string();
        self.serialised(id, move |vmm, id| async move {
            vmm.kill_locked(&id, &reason).await
        })
        .await
    }

    pub(super) async fn kill_locked(&self, id: &str, reason: &str) -> Result<VmRecord, VmmError> {
        let vm = self.load(id)?;
        let Some((identity, mut exited, stop_reason)) = self.runtime_handles(id) else {
            return Ok(vm);
        };
        *lock(&stop_reason) = Some(reason.to_string());
        self.inner
            .audit
            .audit(format!("killing VM {}", vm.spec.name), &[id]);
        process::signal(identity, nix::sys::signal::Signal::SIGKILL);
        let _ = exited.wait_for(|d| *d).await;
        self.load(id)
    }

    /// Graceful stop (with the hard-stop fallback), then start.
    pub async fn restart(&self, id: &str, timeout: Option<Duration>) -> Result<VmRecord, VmmError> {
        self.serialised(id, move |vmm, id| async move {
            vmm.stop_locked(&id, timeout).await?;
            vmm.start_locked(&id).await
        })
        .await
    }
}

/// Waits for the process to exit; the exit status when it is our child.
pub(super) async fn wait_for(
    identity: ProcessIdentity,
    child: Option<tokio::process::Child>,
) -> Option<std::process::ExitStatus> {
    match child {
        Some(mut child) => child.wait().await.ok(),
        None => {
            process::wait_exit(identity).await;
            None
        }
    }
}

/// The state and reason recorded when a hypervisor process exits.
pub(super) fn exit_outcome(
    requested: Option<String>,
    status: Option<std::process::ExitStatus>,
) -> (VmState, String) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(reason) = requested {
        return (VmState::Stopped, reason);
    }
    match status {
        Some(s) if s.success() => (
            VmState::Stopped,
            "guest powered off (hypervisor exited cleanly)".into(),
        ),
        Some(s) => match s.signal() {
            Some(sig) => (
                VmState::Failed,
                format!("hypervisor process killed by signal {sig}"),
            ),
            None => (
                VmState::Failed,
                format!(
                    "hypervisor process failed with exit code {}",
                    s.code().unwrap_or(-1)
                ),
            ),
        },
        None => (
            VmState::Stopped,
            "hypervisor process exited (adopted process: exit status unknown)".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_classified_by_request_and_status() {
        use std::os::unix::process::ExitStatusExt;
        let ok = std::process::ExitStatus::from_raw(0);
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(exit_outcome(None, Some(ok)).0, VmState::Stopped);
        assert_eq!(exit_outcome(None, Some(killed)).0, VmState::Failed);
        assert!(exit_outcome(None, Some(killed)).1.contains("signal 9"));
        let (state, reason) = exit_outcome(Some("killed by request".into()), Some(killed));
        assert_eq!(
            (state, reason.as_str()),
            (VmState::Stopped, "killed by request")
        );
    }
}
