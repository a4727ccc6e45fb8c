//! HA fencing (issue 23), the node's half: an agent that has not reached the API for the
//! fencing time (`--ha-fencing-secs`, default 30, the same value as mvirt-api's) kills every
//! HA VM it runs, watchdog-style, and starts none until it has a fresh spec again.
//!
//! Contact is a successful `Heartbeat` (the call the API's liveness is made of, so the two
//! sides count from nearly the same moment; the API moves the VMs only after the fencing time
//! plus a margin). While fenced:
//! - a background task ([`run`]) kills (mvirt-vmm `KillVm`) every VM of the latest spec
//!   marked `ha` that mvirt-vmm shows running, every tick, and audits it;
//! - the reconcile passes see those VMs as desired stopped (forced, [`Fence::filter`]), so
//!   nothing restarts them, and without their replication schedules as the source (a round
//!   in flight is aborted: the API may be promoting the replica on the target).
//!
//! Migration targets (issue 23): a VM this node holds as the TARGET of a live migration the
//! API has not confirmed (the latest spec still names it with `incoming_migration_id`) is
//! fenced like an HA VM, whether prepared, receiving or already resumed after
//! `CompleteMigration`: killed every tick (audited `fencing: killed incoming VM …`), not
//! prepared again ([`fenced_incoming`]), and `NodePeer.CompleteMigration` is refused while
//! fenced (`AbortMigration` kills the copy first, then records the abort). The API fails
//! such a migration only after the fencing time plus the margin (mvirt-api `ha.rs`), so the
//! source resumes its paused copy only after this node's copy is gone. What the target's
//! guest ran after the switch-over is lost with it.
//!
//! The fence lease (a dead or hung agent still fences): every tick while not fenced, [`run`]
//! renews mvirt-vmm's lease (`RenewFenceLease`) naming the VMs this fence would kill, with
//! ttl = the time left until this fence would fire (last contact + fencing time - now). If
//! this agent dies or hangs, mvirt-vmm kills them itself at that moment (state reason
//! "fenced: the node agent's lease expired"); the API's margin is unchanged. With nothing to
//! name, the lease is cancelled (an empty list, sent once). An mvirt-vmm without the RPC
//! (UNIMPLEMENTED) is logged once and not asked again.
//!
//! Leaving the fence: the first heartbeat that succeeds again bumps an epoch; the spec watch
//! then opens a new stream from revision 0 (the API answers at once with the node's whole
//! set, computed after that heartbeat). The fence lifts with the first spec of such a stream,
//! and only specs at least that new may start HA VMs. A VM the API failed over is no longer
//! in that spec: the ordinary delete path removes its old copy, which is never started again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use mvirt_api::proto as api;
use mvirt_common::Shutdown;
use mvirt_vmm::proto as vmm;

use crate::daemons::Daemons;

#[derive(Debug)]
struct Inner {
    last_contact: Instant,
    fenced: bool,
    /// Fenced, and a heartbeat succeeded since: waiting for a spec from a stream of this epoch.
    resumed_epoch: Option<u64>,
    /// Specs older than this may not start HA VMs (the first fresh spec after a fence).
    min_revision: u64,
}

/// The agent's fencing state, shared by the heartbeat, the spec watch and the reconcile loop.
#[derive(Debug)]
pub struct Fence {
    fencing: Duration,
    inner: Mutex<Inner>,
    epoch: watch::Sender<u64>,
}

impl Fence {
    pub fn new(fencing: Duration) -> Arc<Fence> {
        Arc::new(Fence {
            fencing,
            inner: Mutex::new(Inner {
                last_contact: Instant::now(),
                fenced: false,
                resumed_epoch: None,
                min_revision: 0,
            }),
            epoch: watch::channel(0).0,
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A heartbeat succeeded.
    pub fn contact(&self) {
        let mut inner = self.inner();
        inner.last_contact = Instant::now();
        if inner.fenced && inner.resumed_epoch.is_none() {
            let epoch = *self.epoch.borrow() + 1;
            inner.resumed_epoch = Some(epoch);
            self.epoch.send_replace(epoch);
            tracing::warn!("fencing: the API answers again; waiting for a fresh spec");
        }
    }

    /// Changes when the spec watch must open a new stream (see the module's docs).
    pub fn epochs(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// A spec arrived on a stream opened at `stream_epoch`. Lifts the fence when that stream
    /// was opened after the heartbeat resumed.
    pub fn spec_received(&self, stream_epoch: u64, revision: u64) {
        let mut inner = self.inner();
        if inner.fenced && inner.resumed_epoch.is_some_and(|e| stream_epoch >= e) {
            inner.fenced = false;
            inner.resumed_epoch = None;
            inner.min_revision = revision;
            tracing::warn!(revision, "fencing lifted: a fresh spec arrived");
        }
    }

    /// Whether the fence holds now: fenced already, or no contact for the fencing time
    /// (which fences). True only once per fence as the second value.
    fn check(&self) -> (bool, bool) {
        let mut inner = self.inner();
        if !inner.fenced && inner.last_contact.elapsed() >= self.fencing {
            inner.fenced = true;
            inner.resumed_epoch = None;
            return (true, true);
        }
        (inner.fenced, false)
    }

    /// The fence lease's ttl now: the time left until this fence fires (None when fenced or
    /// due).
    pub fn lease_ttl(&self) -> Option<Duration> {
        let inner = self.inner();
        if inner.fenced {
            return None;
        }
        Some(self.fencing.saturating_sub(inner.last_contact.elapsed())).filter(|t| !t.is_zero())
    }

    /// Whether the fence holds now (no contact for the fencing time fences).
    pub fn fenced(&self) -> bool {
        self.check().0
    }

    /// Whether HA VMs of a spec with this revision may run.
    pub fn may_run_ha(&self, revision: u64) -> bool {
        let inner = self.inner();
        !inner.fenced && revision >= inner.min_revision
    }

    /// `spec` as the reconcile pass may carry it out: while HA VMs may not run, they are
    /// desired stopped (forced).
    pub fn filter(&self, spec: &api::NodeSpec) -> Option<api::NodeSpec> {
        self.check();
        if self.may_run_ha(spec.revision) || !spec.vms.iter().any(fenced_kind) {
            return None;
        }
        let mut spec = spec.clone();
        let mut ha = Vec::new();
        for vm in spec.vms.iter_mut().filter(|v| fenced_kind(v)) {
            vm.desired_state = api::DesiredState::Stopped as i32;
            vm.stop_mode = api::StopMode::Force as i32;
            ha.push(vm.id.clone());
        }
        // Their replication from here stops too (a running round is aborted, so its stream
        // ends without trailer and commits nothing): the API may be promoting the replica.
        let node_id = spec.node_id.clone();
        spec.replications
            .retain(|r| r.source_node_id != node_id || !ha.contains(&r.vm_id));
        Some(spec)
    }
}

/// The VMs a fence stops: HA VMs, and VMs held as a migration's target (the API has not
/// confirmed the migration: the spec still names them with `incoming_migration_id`).
fn fenced_kind(vm: &api::VmSpec) -> bool {
    vm.ha || !vm.incoming_migration_id.is_empty()
}

/// Whether `vm` is an incoming migration's VM the fence stopped ([`Fence::filter`] marks it
/// desired stopped, forced): it must not be prepared again.
pub fn fenced_incoming(vm: &api::VmSpec) -> bool {
    !vm.incoming_migration_id.is_empty()
        && vm.desired_state == api::DesiredState::Stopped as i32
        && vm.stop_mode == api::StopMode::Force as i32
}

/// Fences when contact is lost: kills the running HA VMs and the migration targets' VMs of
/// the latest spec, every tick while fenced.
pub async fn run(
    fence: Arc<Fence>,
    daemons: Daemons,
    specs: watch::Receiver<Option<api::NodeSpec>>,
    audit: mvirt_log::AuditLogger,
    shutdown: Shutdown,
) {
    let tick = (fence.fencing / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut lease = LeaseRenewer::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait() => return,
        }
        let (fenced, now_fenced) = fence.check();
        if !fenced {
            lease.renew(&fence, &daemons, &specs).await;
        }
        if now_fenced {
            let message = format!(
                "fencing: no contact with the API for {} s; killing this node's HA VMs and \
                 unconfirmed incoming migrations",
                fence.fencing.as_secs()
            );
            tracing::error!("{message}");
            audit.warn(message, &[]);
        }
        if !fenced {
            continue;
        }
        let ha: Vec<(String, bool)> = specs
            .borrow()
            .as_ref()
            .map(|s| {
                s.vms
                    .iter()
                    .filter(|v| fenced_kind(v))
                    .map(|v| (v.id.clone(), !v.incoming_migration_id.is_empty()))
                    .collect()
            })
            .unwrap_or_default();
        if ha.is_empty() {
            continue;
        }
        let listed = match daemons
            .vmm
            .clone()
            .list_vms(vmm::ListVmsRequest::default())
            .await
        {
            Ok(listed) => listed.into_inner().vms,
            Err(err) => {
                tracing::error!(error = %err, "fencing: cannot list the VMs");
                continue;
            }
        };
        for vm in listed.iter() {
            let Some((_, incoming)) = ha.iter().find(|(id, _)| *id == vm.id) else {
                continue;
            };
            let what = if *incoming {
                "incoming VM (unconfirmed migration target)"
            } else {
                "HA VM"
            };
            let running = matches!(
                vmm::VmState::try_from(vm.state),
                Ok(vmm::VmState::Running | vmm::VmState::Starting | vmm::VmState::Stopping)
            );
            if !running {
                continue;
            }
            let request = vmm::KillVmRequest { id: vm.id.clone() };
            match daemons.vmm.clone().kill_vm(request).await {
                Ok(_) => {
                    let message = format!("fencing: killed {what} {} (pid {})", vm.id, vm.pid);
                    tracing::error!("{message}");
                    audit.warn(message, &[&vm.id]);
                }
                Err(err) => tracing::error!(vm = %vm.id, error = %err, "fencing: kill failed"),
            }
        }
    }
}

/// Renews mvirt-vmm's fence lease (see the module's docs).
#[derive(Default)]
struct LeaseRenewer {
    /// The last renewal that succeeded named no VM (nothing to cancel).
    cancelled: bool,
    /// mvirt-vmm answered UNIMPLEMENTED (logged once; not asked again).
    unsupported: bool,
}

impl LeaseRenewer {
    async fn renew(
        &mut self,
        fence: &Fence,
        daemons: &Daemons,
        specs: &watch::Receiver<Option<api::NodeSpec>>,
    ) {
        if self.unsupported {
            return;
        }
        let Some(ttl) = fence.lease_ttl() else {
            return;
        };
        // No spec yet (e.g. a restarted agent): a lease left by the previous one stands.
        let Some(vm_ids) = specs.borrow().as_ref().map(|s| {
            s.vms
                .iter()
                .filter(|v| fenced_kind(v))
                .map(|v| v.id.clone())
                .collect::<Vec<_>>()
        }) else {
            return;
        };
        if vm_ids.is_empty() && self.cancelled {
            return;
        }
        let empty = vm_ids.is_empty();
        let request = vmm::RenewFenceLeaseRequest {
            ttl_ms: (ttl.as_millis() as u64).max(1),
            vm_ids,
        };
        match daemons.vmm.clone().renew_fence_lease(request).await {
            Ok(_) => self.cancelled = empty,
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                self.unsupported = true;
                tracing::warn!(
                    "fencing: mvirt-vmm has no fence lease (RenewFenceLease unimplemented): \
                     a dead agent's HA VMs are not fenced"
                );
            }
            Err(err) => {
                self.cancelled = false;
                tracing::error!(error = %err, "fencing: cannot renew mvirt-vmm's fence lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(revision: u64) -> api::NodeSpec {
        let replication = |vm: &str| api::ReplicationSpec {
            vm_id: vm.into(),
            source_node_id: "me".into(),
            ..Default::default()
        };
        api::NodeSpec {
            node_id: "me".into(),
            replications: vec![replication("ha"), replication("plain")],
            revision,
            vms: vec![
                api::VmSpec {
                    id: "ha".into(),
                    ha: true,
                    desired_state: api::DesiredState::Running as i32,
                    ..Default::default()
                },
                api::VmSpec {
                    id: "plain".into(),
                    desired_state: api::DesiredState::Running as i32,
                    ..Default::default()
                },
                api::VmSpec {
                    id: "incoming".into(),
                    incoming_migration_id: "mig".into(),
                    desired_state: api::DesiredState::Running as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_fence_holds_until_a_fresh_spec_after_contact() {
        let fence = Fence::new(Duration::from_millis(50));
        assert!(fence.filter(&spec(5)).is_none(), "in contact: unchanged");
        let ttl = fence.lease_ttl().expect("a lease while in contact");
        assert!(
            ttl <= Duration::from_millis(50) && !ttl.is_zero(),
            "{ttl:?}"
        );
        std::thread::sleep(Duration::from_millis(80));
        let filtered = fence.filter(&spec(5)).expect("fenced");
        assert_eq!(
            filtered.vms[0].desired_state,
            api::DesiredState::Stopped as i32
        );
        assert_eq!(filtered.vms[0].stop_mode, api::StopMode::Force as i32);
        assert_eq!(
            filtered.vms[1].desired_state,
            api::DesiredState::Running as i32
        );
        assert!(
            fenced_incoming(&filtered.vms[2]),
            "an unconfirmed incoming migration is fenced too"
        );
        assert!(!fenced_incoming(&spec(5).vms[2]));
        assert!(fence.fenced());
        assert_eq!(fence.lease_ttl(), None, "no lease while fenced");
        let replicated: Vec<_> = filtered.replications.iter().map(|r| &r.vm_id).collect();
        assert_eq!(replicated, ["plain"], "the HA VM's replication stops");
        // A spec from the old stream does not lift it, nor does contact alone.
        fence.spec_received(0, 9);
        fence.contact();
        assert!(fence.filter(&spec(5)).is_some());
        let epoch = *fence.epochs().borrow();
        assert_eq!(epoch, 1);
        fence.spec_received(0, 9);
        assert!(
            fence.filter(&spec(9)).is_some(),
            "a stream opened before the contact"
        );
        fence.spec_received(epoch, 9);
        assert!(fence.filter(&spec(9)).is_none(), "lifted by the fresh spec");
        assert!(
            fence.filter(&spec(8)).is_some(),
            "an older spec still may not start them"
        );
    }
}
