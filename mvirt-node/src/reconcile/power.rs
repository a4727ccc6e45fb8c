//! A VM's power as its spec asks: `running` starts a stopped or failed VM; `stopped` stops a
//! running one gracefully (ACPI power button, then the hard stop) or kills it (stop mode
//! `force`); a new `restart_generation` restarts a running VM once. Stops and restarts run in
//! the background, and passes leave the VM alone until they end.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::daemons::DaemonChannel;
use tonic::Status;

use mvirt_api::proto as api;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;

use super::Context;

/// The VMs with a stop or restart running in the background.
#[derive(Default)]
pub struct Operations {
    running: Arc<Mutex<HashSet<String>>>,
}

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn busy(&self, vm_id: &str) -> bool {
        self.lock().contains(vm_id)
    }
}

/// What a pass does to a VM's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerAction {
    Leave,
    Start,
    Stop { force: bool },
    Restart,
}

/// The action for a VM in `state` whose spec asks for `desired`. `restart_requested`: the spec
/// carries a restart generation not acted on yet.
fn decide(
    state: vmm::VmState,
    desired: api::DesiredState,
    force: bool,
    restart_requested: bool,
) -> PowerAction {
    let running = matches!(state, vmm::VmState::Running | vmm::VmState::Starting);
    let down = matches!(state, vmm::VmState::Stopped | vmm::VmState::Failed);
    match desired {
        api::DesiredState::Stopped if running => PowerAction::Stop { force },
        api::DesiredState::Stopped => PowerAction::Leave,
        api::DesiredState::Running | api::DesiredState::Unspecified => {
            if restart_requested && running {
                PowerAction::Restart
            } else if down {
                PowerAction::Start
            } else {
                PowerAction::Leave
            }
        }
    }
}

fn restart_key(vm_id: &str) -> String {
    format!("restart_generation:{vm_id}")
}

/// Whether the spec asks for a restart not acted on yet; records it as acted on (a restart
/// asked for while the VM is down is consumed by the start).
fn take_restart_request(cx: &Context, want: &api::VmSpec) -> bool {
    let key = restart_key(&want.id);
    if want.restart_generation <= cx.ledger.counter(&key) {
        return false;
    }
    if let Err(err) = cx.ledger.set_counter(&key, want.restart_generation) {
        tracing::warn!(vm = %want.id, error = %mvirt_common::error::error_chain(&err), "cannot record the restart");
    }
    true
}

/// Records the spec's restart generation as acted on without restarting: a VM that migrated
/// here was restarted (or not) where it ran before.
pub(super) fn adopt_restart_generation(cx: &Context, want: &api::VmSpec) {
    let key = restart_key(&want.id);
    if want.restart_generation > cx.ledger.counter(&key) {
        if let Err(err) = cx.ledger.set_counter(&key, want.restart_generation) {
            tracing::warn!(vm = %want.id, error = %mvirt_common::error::error_chain(&err), "cannot record the restart");
        }
    }
}

/// Starts, stops or restarts the VM as the spec asks; returns the VM as it is now.
pub(super) async fn converge(
    cx: &Context,
    operations: &Operations,
    want: &api::VmSpec,
    vm: vmm::Vm,
) -> vmm::Vm {
    if operations.busy(&want.id) {
        return vm;
    }
    let state = vmm::VmState::try_from(vm.state).unwrap_or_default();
    let desired = api::DesiredState::try_from(want.desired_state).unwrap_or_default();
    let force = want.stop_mode == api::StopMode::Force as i32;
    let restart_requested = desired != api::DesiredState::Stopped && take_restart_request(cx, want);
    match decide(state, desired, force, restart_requested) {
        PowerAction::Leave => vm,
        PowerAction::Start => start(cx, want, vm).await,
        PowerAction::Stop { force } => {
            in_background(
                cx,
                operations,
                &want.id,
                move |mut client, id, timeout| async move {
                    if force {
                        client.kill_vm(vmm::KillVmRequest { id }).await.map(drop)
                    } else {
                        let request = vmm::StopVmRequest {
                            id,
                            timeout_seconds: timeout,
                        };
                        client.stop_vm(request).await.map(drop)
                    }
                },
            );
            cx.audit
                .audit(format!("stopping VM {}", want.id), &[&want.id]);
            vm
        }
        PowerAction::Restart => {
            cx.audit
                .audit(format!("restarting VM {}", want.id), &[&want.id]);
            in_background(
                cx,
                operations,
                &want.id,
                |mut client, id, timeout| async move {
                    let request = vmm::RestartVmRequest {
                        id,
                        timeout_seconds: timeout,
                    };
                    client.restart_vm(request).await.map(drop)
                },
            );
            vm
        }
    }
}

/// Starts the VM; a refused start leaves it `failed` with the reason.
async fn start(cx: &Context, want: &api::VmSpec, mut vm: vmm::Vm) -> vmm::Vm {
    let request = vmm::StartVmRequest {
        id: want.id.clone(),
    };
    match cx.vmm().start_vm(request).await {
        Ok(started) => {
            cx.audit
                .audit(format!("started VM {}", want.id), &[&want.id]);
            started.into_inner()
        }
        Err(e) => {
            vm.state = vmm::VmState::Failed as i32;
            vm.state_reason = format!("start failed: {}", e.message());
            vm
        }
    }
}

/// Runs a VM operation in the background; the VM is skipped by passes until it ends, then the
/// agent is woken.
fn in_background<F, Fut>(cx: &Context, operations: &Operations, id: &str, operation: F)
where
    F: FnOnce(VmServiceClient<DaemonChannel>, String, u32) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    operations.lock().insert(id.to_string());
    let running = operations.running.clone();
    let wake = cx.wake.clone();
    let client = cx.vmm();
    let id = id.to_string();
    let timeout = cx.settings.stop_timeout_secs;
    tokio::spawn(mvirt_common::trace::inherit(async move {
        if let Err(err) = operation(client, id.clone(), timeout).await {
            tracing::warn!(vm = %id, error = %err, "VM operation failed");
        }
        running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        wake.notify_one();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::DesiredState as Desired;
    use vmm::VmState as State;
    use PowerAction::*;

    /// (state, desired, force, restart requested, action)
    #[rustfmt::skip]
    const CASES: &[(State, Desired, bool, bool, PowerAction)] = &[
        // Asked to stop: a running VM is stopped gracefully, or killed with `force`.
        (State::Running, Desired::Stopped, false, false, Stop { force: false }),
        (State::Starting, Desired::Stopped, true, false, Stop { force: true }),
        (State::Stopped, Desired::Stopped, false, false, Leave),
        (State::Stopping, Desired::Stopped, false, true, Leave),
        // Asked to run: a stopped or failed VM is started.
        (State::Stopped, Desired::Running, false, false, Start),
        (State::Failed, Desired::Unspecified, false, false, Start),
        (State::Running, Desired::Running, false, false, Leave),
        (State::Stopping, Desired::Running, false, false, Leave),
        // A restart restarts a running VM; a stopped one is simply started.
        (State::Running, Desired::Running, false, true, Restart),
        (State::Stopped, Desired::Running, false, true, Start),
    ];

    #[test]
    fn the_power_action_follows_the_state_and_the_desired_state() {
        for &(state, desired, force, restart, action) in CASES {
            assert_eq!(
                decide(state, desired, force, restart),
                action,
                "{state:?} asked {desired:?} (force {force}, restart {restart})"
            );
        }
    }
}
