//! mvirt-ebpf's Prometheus metrics (see `mvirt_common::metrics` and the README's table): the
//! datapath's per-NIC counters (drops by reason), the flows each security-group rule allowed,
//! the control-frame rate-limit drops, DHCP leases, the conntrack table's size, read from the
//! manager at scrape time.

use std::sync::{Arc, OnceLock, Weak};

use mvirt_common::metrics::{self, Kind, Sampled, Snapshot};
use mvirt_common::Shutdown;

use crate::manager::metrics::MetricsSample;
use crate::manager::NetManager;

/// The registry name (the binary's).
pub const DAEMON: &str = "mvirt-ebpf";

fn sampled() -> &'static Sampled {
    static SAMPLED: OnceLock<Sampled> = OnceLock::new();
    SAMPLED.get_or_init(|| {
        let s = Sampled::default();
        metrics::register(DAEMON, |r| r.register_collector(Box::new(s.clone())));
        s
    })
}

/// The metric families of one sample. Direction `from_guest` is the datapath's rx (what the
/// VM sent), `to_guest` its tx.
pub fn snapshot(sample: &MetricsSample) -> Snapshot {
    let mut s = Snapshot::default();
    let directions = |n: &crate::manager::metrics::NicSample| {
        [
            ("from_guest", n.stats.rx_bytes, n.stats.rx_packets),
            ("to_guest", n.stats.tx_bytes, n.stats.tx_packets),
        ]
    };
    for (name, help, pick) in [
        (
            "mvirt_ebpf_nic_bytes",
            "Bytes through a NIC's datapath, by direction",
            0usize,
        ),
        (
            "mvirt_ebpf_nic_packets",
            "Packets through a NIC's datapath, by direction",
            1,
        ),
    ] {
        let family = s.family(Kind::Counter, name, help, None);
        for nic in &sample.nics {
            for (direction, bytes, packets) in directions(nic) {
                let value = [bytes, packets][pick];
                family.add(
                    vec![("nic", nic.nic_id.clone()), ("direction", direction.into())],
                    value as f64,
                );
            }
        }
    }
    let family = s.family(
        Kind::Counter,
        "mvirt_ebpf_nic_dropped_packets",
        "Packets the datapath dropped on a NIC, by direction and reason (no_ingress_rule_matched, \
         no_egress_rule_matched: security groups; spoofed_mac, spoofed_source, no_route, \
         hairpin, not_ip, malformed, error)",
        None,
    );
    for nic in &sample.nics {
        for (reason, from_guest, to_guest) in nic.drops.by_reason() {
            for (direction, value) in [("from_guest", from_guest), ("to_guest", to_guest)] {
                family.add(
                    vec![
                        ("nic", nic.nic_id.clone()),
                        ("direction", direction.into()),
                        ("reason", reason.into()),
                    ],
                    value as f64,
                );
            }
        }
    }
    let family = s.family(
        Kind::Counter,
        "mvirt_ebpf_sg_rule_flows",
        "Flows a security-group rule allowed on a NIC (their first packet matched it; \
         connection tracking passes the rest), by the rule's direction",
        None,
    );
    for nic in &sample.nics {
        for rule in &nic.rule_flows {
            family.add(
                vec![
                    ("nic", nic.nic_id.clone()),
                    ("security_group", rule.origin.security_group.clone()),
                    ("rule", rule.origin.rule.clone()),
                    (
                        "direction",
                        if rule.direction == 0 {
                            "ingress"
                        } else {
                            "egress"
                        }
                        .into(),
                    ),
                ],
                rule.flows as f64,
            );
        }
    }
    let family = s.family(
        Kind::Counter,
        "mvirt_ebpf_nic_control_rate_limited",
        "Control frames (DHCP, NDP, ARP) of a NIC dropped by its rate limit",
        None,
    );
    for nic in &sample.nics {
        family.add(
            vec![("nic", nic.nic_id.clone())],
            nic.control_rate_limited as f64,
        );
    }
    const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];
    let family = s.family(
        Kind::Counter,
        "mvirt_ebpf_dhcp_leases_granted",
        "DHCP leases (DHCPACK, DHCPv6 Reply with the address) granted to a NIC's guest, renewals included",
        None,
    );
    for nic in &sample.nics {
        for (f, name) in FAMILIES.iter().enumerate() {
            family.add(
                vec![("nic", nic.nic_id.clone()), ("family", (*name).into())],
                nic.leases.granted[f] as f64,
            );
        }
    }
    let family = s.family(
        Kind::Gauge,
        "mvirt_ebpf_dhcp_leases",
        "NICs whose guest holds an unexpired DHCP lease on its address",
        None,
    );
    for (f, name) in FAMILIES.iter().enumerate() {
        let active = sample.nics.iter().filter(|n| n.leases.active[f]).count();
        family.add(vec![("family", (*name).into())], active as f64);
    }
    for (name, help, value) in [
        ("mvirt_ebpf_nics", "NICs on this host", sample.nics.len()),
        (
            "mvirt_ebpf_networks",
            "Networks on this host",
            sample.networks,
        ),
        (
            "mvirt_ebpf_security_groups",
            "Security groups on this host",
            sample.security_groups,
        ),
        (
            "mvirt_ebpf_conntrack_entries",
            "Entries in the datapath's connection tracking table",
            sample.conntrack_entries,
        ),
    ] {
        s.family(Kind::Gauge, name, help, None)
            .add(vec![], value as f64);
    }
    s
}

/// Samples `manager` on every scrape until `shutdown` fires or the manager is gone.
pub fn watch(manager: &Arc<NetManager>, shutdown: &Shutdown) {
    let sampled = sampled();
    let (manager, shutdown): (Weak<NetManager>, Shutdown) =
        (Arc::downgrade(manager), shutdown.clone());
    metrics::on_scrape(
        DAEMON,
        Arc::new(move || {
            let (manager, shutdown) = (manager.upgrade(), shutdown.clone());
            Box::pin(async move {
                let Some(manager) = manager.filter(|_| !shutdown.is_triggered()) else {
                    return false;
                };
                match manager.metrics_sample().await {
                    Ok(sample) => sampled.replace(snapshot(&sample)),
                    Err(err) => tracing::warn!(error = %err, "cannot sample the NICs for metrics"),
                }
                true
            })
        }),
    );
}
