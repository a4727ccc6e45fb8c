//! The node agent's Prometheus metrics (see `mvirt_common::metrics` and the README's table):
//! reconcile passes, failures by resource kind, time to converge, resources by phase, and the
//! usage of the host and of every VM and pod on it ([`crate::stats`], sampled at scrape time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mvirt_api::proto as api;
use mvirt_common::metrics::prometheus::metrics::counter::Counter;
use mvirt_common::metrics::prometheus::metrics::family::Family;
use mvirt_common::metrics::prometheus::metrics::histogram::Histogram;
use mvirt_common::metrics::prometheus::registry::Unit;
use mvirt_common::metrics::{self, Kind, Labels, Sampled, Snapshot};
use mvirt_common::Shutdown;

use crate::daemons::Daemons;

/// The registry name (the binary's).
pub const DAEMON: &str = "mvirt-node";

struct AgentMetrics {
    passes: Counter,
    pass_duration: Histogram,
    failures: Family<Labels, Counter>,
    converge: Histogram,
    sampled: Sampled,
    /// Phases of the last pass (to count transitions into FAILED once), the revision waiting
    /// to converge and since when, and resources by kind and phase.
    last: Mutex<LastPass>,
}

#[derive(Default)]
struct LastPass {
    phases: HashMap<(i32, String), i32>,
    /// The revision being converged, since when, and whether it converged (measured once).
    converging: Option<(u64, Instant, bool)>,
    by_phase: Vec<(Labels, f64)>,
}

fn get() -> &'static AgentMetrics {
    static METRICS: OnceLock<AgentMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = AgentMetrics {
            passes: Counter::default(),
            pass_duration: metrics::latency_histogram(),
            failures: Family::default(),
            converge: metrics::slow_histogram(),
            sampled: Sampled::default(),
            last: Mutex::default(),
        };
        metrics::register(DAEMON, |r| {
            r.register(
                "mvirt_node_reconcile_passes",
                "Reconcile passes run",
                m.passes.clone(),
            );
            r.register_with_unit(
                "mvirt_node_reconcile_pass_duration",
                "Time of one reconcile pass",
                Unit::Seconds,
                m.pass_duration.clone(),
            );
            r.register(
                "mvirt_node_reconcile_failures",
                "Resources that went FAILED, by kind (network, nic, volume, vm, ...)",
                m.failures.clone(),
            );
            r.register_with_unit(
                "mvirt_node_converge_duration",
                "Time from a new desired-state revision until a pass leaves nothing in progress",
                Unit::Seconds,
                m.converge.clone(),
            );
            r.register_collector(Box::new(m.sampled.clone()));
        });
        m
    })
}

fn kind_name(kind: i32) -> String {
    api::ResourceKind::try_from(kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("RESOURCE_KIND_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| kind.to_string())
}

fn phase_name(phase: i32) -> String {
    api::Phase::try_from(phase)
        .map(|p| p.as_str_name().trim_start_matches("PHASE_").to_lowercase())
        .unwrap_or_else(|_| phase.to_string())
}

/// Whether a phase is still moving (the node is working on it).
fn in_progress(phase: i32) -> bool {
    matches!(
        api::Phase::try_from(phase),
        Ok(api::Phase::Creating
            | api::Phase::Stopping
            | api::Phase::Importing
            | api::Phase::Deleting
            | api::Phase::Unspecified)
    )
}

/// Records one reconcile pass over `revision` that produced `statuses` in `took`.
pub fn pass(revision: u64, statuses: &[api::ResourceStatus], took: Duration) {
    let m = get();
    m.passes.inc();
    m.pass_duration.observe(took.as_secs_f64());
    let mut last = m.last.lock().unwrap_or_else(|e| e.into_inner());
    let mut phases = HashMap::with_capacity(statuses.len());
    let mut by_phase: HashMap<(String, String), f64> = HashMap::new();
    for s in statuses {
        let key = (s.kind, s.id.clone());
        if s.phase == api::Phase::Failed as i32
            && last.phases.get(&key) != Some(&(api::Phase::Failed as i32))
        {
            m.failures
                .get_or_create(&vec![("kind", kind_name(s.kind))])
                .inc();
        }
        *by_phase
            .entry((kind_name(s.kind), phase_name(s.phase)))
            .or_default() += 1.0;
        phases.insert(key, s.phase);
    }
    last.phases = phases;
    last.by_phase = by_phase
        .into_iter()
        .map(|((kind, phase), n)| (vec![("kind", kind), ("phase", phase)], n))
        .collect();
    match last.converging {
        Some((r, _, _)) if r == revision => {}
        _ => last.converging = Some((revision, Instant::now(), false)),
    }
    if !statuses.iter().any(|s| in_progress(s.phase)) {
        if let Some((_, since, done @ false)) = &mut last.converging {
            m.converge.observe(since.elapsed().as_secs_f64());
            *done = true;
        }
    }
}

/// Samples the host and every VM and pod on every scrape until `shutdown` fires.
pub fn watch(daemons: &Daemons, shutdown: &Shutdown) {
    let m = get();
    let (daemons, shutdown) = (daemons.clone(), shutdown.clone());
    metrics::on_scrape(
        DAEMON,
        Arc::new(move || {
            let (daemons, shutdown) = (daemons.clone(), shutdown.clone());
            Box::pin(async move {
                if shutdown.is_triggered() {
                    return false;
                }
                let stats =
                    crate::stats::sample(&daemons, "", &api::GetStatsRequest::default()).await;
                let by_phase = m
                    .last
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .by_phase
                    .clone();
                let mut s = Snapshot::default();
                let family = s.family(
                    Kind::Gauge,
                    "mvirt_node_resources",
                    "Resources of this node by kind and phase, as the last pass reported them",
                    None,
                );
                for (labels, n) in by_phase {
                    family.add(labels, n);
                }
                match stats {
                    Ok(stats) => usage(&mut s, &stats),
                    Err(err) => tracing::warn!(error = %err, "cannot sample usage for metrics"),
                }
                m.sampled.replace(s);
                true
            })
        }),
    );
}

/// The usage families of one sample.
fn usage(s: &mut Snapshot, stats: &api::NodeStats) {
    if let Some(host) = &stats.host {
        s.family(
            Kind::Counter,
            "mvirt_node_cpu",
            "CPU time of the host (all CPUs), busy or idle (idle includes iowait)",
            Some(Unit::Seconds),
        )
        .add(vec![("mode", "busy".into())], host.cpu_busy_seconds)
        .add(vec![("mode", "idle".into())], host.cpu_idle_seconds);
        s.family(
            Kind::Gauge,
            "mvirt_node_memory_total",
            "Memory of the host",
            Some(Unit::Bytes),
        )
        .add(vec![], host.memory_total_bytes as f64);
        s.family(
            Kind::Gauge,
            "mvirt_node_memory_available",
            "Memory available on the host (MemAvailable)",
            Some(Unit::Bytes),
        )
        .add(vec![], host.memory_available_bytes as f64);
    }
    for (guests, label, prefix) in [(&stats.vms, "vm", "vm"), (&stats.pods, "pod", "pod")] {
        let names = GuestNames::of(prefix);
        for g in guests.iter() {
            let id = || vec![(label, g.id.clone())];
            if g.running {
                s.family(
                    Kind::Counter,
                    names.cpu,
                    "CPU time of the guest's hypervisor process (user + system)",
                    Some(Unit::Seconds),
                )
                .add(id(), g.cpu_seconds);
                s.family(
                    Kind::Gauge,
                    names.memory,
                    "Resident memory of the guest's hypervisor process",
                    Some(Unit::Bytes),
                )
                .add(id(), g.memory_rss_bytes as f64);
                s.family(
                    Kind::Counter,
                    names.disk_read,
                    "Bytes the guest's hypervisor process made the block layer read",
                    Some(Unit::Bytes),
                )
                .add(id(), g.disk_read_bytes as f64);
                s.family(
                    Kind::Counter,
                    names.disk_write,
                    "Bytes the guest's hypervisor process caused to be written to storage",
                    Some(Unit::Bytes),
                )
                .add(id(), g.disk_write_bytes as f64);
            }
            for nic in &g.nics {
                for (direction, bytes, packets) in [
                    ("from_guest", nic.rx_bytes, nic.rx_packets),
                    ("to_guest", nic.tx_bytes, nic.tx_packets),
                ] {
                    let labels = vec![
                        (label, g.id.clone()),
                        ("nic", nic.nic_id.clone()),
                        ("direction", direction.to_string()),
                    ];
                    s.family(
                        Kind::Counter,
                        names.nic_bytes,
                        "Bytes through the guest's NIC (eBPF datapath), by direction",
                        None,
                    )
                    .add(labels.clone(), bytes as f64);
                    s.family(
                        Kind::Counter,
                        names.nic_packets,
                        "Packets through the guest's NIC (eBPF datapath), by direction",
                        None,
                    )
                    .add(labels, packets as f64);
                }
            }
        }
    }
}

struct GuestNames {
    cpu: &'static str,
    memory: &'static str,
    disk_read: &'static str,
    disk_write: &'static str,
    nic_bytes: &'static str,
    nic_packets: &'static str,
}

impl GuestNames {
    fn of(prefix: &str) -> GuestNames {
        if prefix == "vm" {
            GuestNames {
                cpu: "mvirt_node_vm_cpu",
                memory: "mvirt_node_vm_memory_resident",
                disk_read: "mvirt_node_vm_disk_read",
                disk_write: "mvirt_node_vm_disk_written",
                nic_bytes: "mvirt_node_vm_nic_bytes",
                nic_packets: "mvirt_node_vm_nic_packets",
            }
        } else {
            GuestNames {
                cpu: "mvirt_node_pod_cpu",
                memory: "mvirt_node_pod_memory_resident",
                disk_read: "mvirt_node_pod_disk_read",
                disk_write: "mvirt_node_pod_disk_written",
                nic_bytes: "mvirt_node_pod_nic_bytes",
                nic_packets: "mvirt_node_pod_nic_packets",
            }
        }
    }
}
