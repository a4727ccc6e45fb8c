//! mvirt-vmm's Prometheus metrics (see `mvirt_common::metrics` and the README's table).
//!
//! VMs and pods by state are counted from the store at scrape time; VM start latency is
//! observed where `Vmm::start` returns.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use mvirt_common::metrics::prometheus::metrics::counter::Counter;
use mvirt_common::metrics::prometheus::metrics::family::Family;
use mvirt_common::metrics::prometheus::registry::Unit;
use mvirt_common::metrics::{self, HistogramFamily, Kind, Labels, Sampled, Snapshot};
use mvirt_common::Shutdown;

use crate::model::{VmRecord, VmState};
use crate::pod::model::PodState;
use crate::pod::PodManager;
use crate::vmm::Vmm;

/// The registry name (the binary's).
pub const DAEMON: &str = "mvirt-vmm";

const VM_STATES: [VmState; 5] = [
    VmState::Stopped,
    VmState::Starting,
    VmState::Running,
    VmState::Stopping,
    VmState::Failed,
];
const POD_STATES: [PodState; 6] = [
    PodState::Created,
    PodState::Starting,
    PodState::Running,
    PodState::Stopping,
    PodState::Stopped,
    PodState::Failed,
];

pub struct VmmMetrics {
    /// `mvirt_vmm_vm_start_duration_seconds{hypervisor}`: StartVm until the guest runs.
    start_duration: HistogramFamily,
    /// `mvirt_vmm_vm_start_failures_total{hypervisor}`.
    start_failures: Family<Labels, Counter>,
    /// `mvirt_vmm_vms{state}`, `mvirt_vmm_pods{state}`.
    sampled: Sampled,
}

/// The metric set (registered on first use).
pub fn get() -> &'static VmmMetrics {
    static METRICS: OnceLock<VmmMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = VmmMetrics {
            start_duration: metrics::slow_family(),
            start_failures: Family::default(),
            sampled: Sampled::default(),
        };
        metrics::register(DAEMON, |r| {
            r.register_with_unit(
                "mvirt_vmm_vm_start_duration",
                "Time from a VM start request until its hypervisor runs the guest",
                Unit::Seconds,
                m.start_duration.clone(),
            );
            r.register(
                "mvirt_vmm_vm_start_failures",
                "VM starts that failed",
                m.start_failures.clone(),
            );
            r.register_collector(Box::new(m.sampled.clone()));
        });
        m
    })
}

/// Records the outcome of one `Vmm::start`.
pub fn vm_started<E>(result: &Result<VmRecord, E>, hypervisor: &str, since: Instant) {
    let labels = vec![("hypervisor", hypervisor.to_string())];
    match result {
        Ok(vm) if vm.state == VmState::Running => get()
            .start_duration
            .get_or_create(&labels)
            .observe(since.elapsed().as_secs_f64()),
        Ok(_) => {}
        Err(_) => {
            get().start_failures.get_or_create(&labels).inc();
        }
    }
}

/// Counts VMs and pods by state on every scrape, until `shutdown` fires.
pub fn watch(vmm: &Vmm, pods: &PodManager, shutdown: &Shutdown) {
    let m = get();
    let (vmm, pods, shutdown) = (vmm.clone(), pods.clone(), shutdown.clone());
    metrics::on_scrape(
        DAEMON,
        Arc::new(move || {
            let (vmm, pods, shutdown) = (vmm.clone(), pods.clone(), shutdown.clone());
            Box::pin(async move {
                if shutdown.is_triggered() {
                    return false;
                }
                let all = BTreeMap::new();
                let mut snapshot = Snapshot::default();
                if let Ok(vms) = vmm.list(&all) {
                    let family = snapshot.family(
                        Kind::Gauge,
                        "mvirt_vmm_vms",
                        "VMs of this host by state",
                        None,
                    );
                    for state in VM_STATES {
                        let n = vms.iter().filter(|v| v.state == state).count();
                        family.add(vec![("state", state.as_str().to_string())], n as f64);
                    }
                }
                if let Ok(list) = pods.list(&all) {
                    let family = snapshot.family(
                        Kind::Gauge,
                        "mvirt_vmm_pods",
                        "Pods of this host by state",
                        None,
                    );
                    for state in POD_STATES {
                        let n = list.iter().filter(|p| p.state == state).count();
                        family.add(vec![("state", state.as_str().to_string())], n as f64);
                    }
                }
                m.sampled.replace(snapshot);
                true
            })
        }),
    );
}
