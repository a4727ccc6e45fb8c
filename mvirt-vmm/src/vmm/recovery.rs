//! Start and shutdown of the manager: adopting hypervisor processes that outlived the daemon,
//! and detaching from every VM (they keep running) when it stops.

use crate::model::VmState;
use crate::process;

use super::{lock, read_tail, VmEventKind, Vmm, VmmError};

impl Vmm {
    /// Adopts hypervisor processes that survived a daemon restart and marks VMs whose process
    /// is gone. Never starts or kills a guest.
    pub async fn recover(&self) -> Result<(), VmmError> {
        for vm in self.inner.store.list()? {
            if !vm.state.is_active() {
                continue;
            }
            let id = vm.id.clone();
            let run = self.run_dir(&id);
            let recorded = vm.process.filter(|identity| {
                process::is_alive(*identity)
                    && self
                        .inner
                        .driver
                        .owns_process(&run, &process::cmdline(identity.pid))
            });
            // A crash between spawning the hypervisor and recording its pid leaves a process
            // the database does not name: find it by its run directory rather than start a
            // duplicate later.
            let adopted = recorded.or_else(|| {
                process::all_pids().into_iter().find_map(|pid| {
                    let identity = process::identity(pid)?;
                    self.inner
                        .driver
                        .owns_process(&run, &process::cmdline(pid))
                        .then_some(identity)
                })
            });
            match adopted {
                Some(identity) => {
                    let seed = read_tail(&run.console_log(), crate::console::SCROLLBACK_BYTES);
                    self.track(&id, identity, None, seed);
                    let previous = vm.state;
                    // A guest paused for a migration (waiting for its incoming state, or
                    // migrated away) stays as recorded: it does not run.
                    let paused = vm.state_reason == super::migration::INCOMING
                        || vm.state_reason == super::migration::MIGRATED;
                    self.update(&id, VmEventKind::StateChanged, |vm| {
                        if !paused {
                            vm.state = VmState::Running;
                            vm.state_reason = "adopted after mvirt-vmm restart".into();
                        }
                        vm.process = Some(identity);
                    })?;
                    if vm.state_reason == super::migration::MIGRATING {
                        // The outgoing migration went on without the daemon: follow it again
                        // so its end is recorded (and a failure resumes the guest here).
                        self.follow_migration_again(&id);
                    }
                    tracing::info!(vm = %id, pid = identity.pid, ?previous, "adopted running VM");
                    self.inner.audit.info(
                        format!("adopted running VM {} (pid {})", vm.spec.name, identity.pid),
                        &[&id],
                    );
                }
                None => {
                    let reason = match vm.process {
                        Some(identity) if process::is_alive(identity) => format!(
                            "pid {} belongs to another program now: not adopted",
                            identity.pid
                        ),
                        _ => "hypervisor process exited while mvirt-vmm was down".to_string(),
                    };
                    let state = if vm.state == VmState::Stopping {
                        VmState::Stopped
                    } else {
                        VmState::Failed
                    };
                    self.update(&id, VmEventKind::StateChanged, |vm| {
                        vm.state = state;
                        vm.state_reason = reason.clone();
                        vm.process = None;
                    })?;
                    for socket in [run.control_socket(), run.console_socket()] {
                        let _ = std::fs::remove_file(socket);
                    }
                    self.inner
                        .audit
                        .warn(format!("VM {}: {reason}", vm.spec.name), &[&id]);
                }
            }
        }
        Ok(())
    }

    /// Detaches from every VM (consoles, watchers) and leaves the guests running.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        for runtime in lock(&self.inner.runtimes).drain() {
            runtime.1.console.detach();
        }
        self.inner.audit.flush().await;
    }
}
