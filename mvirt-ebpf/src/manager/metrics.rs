//! What the metrics read from the manager at scrape time (see `crate::metrics`).

use super::{NetManager, Result};
use crate::datapath::{NicDrops, NicStats, RuleFlows};
use crate::responder::LeaseSample;

/// One NIC's datapath counters (drops by reason, flows per security-group rule) and its
/// control-frame rate-limit drops.
#[derive(Debug, Clone)]
pub struct NicSample {
    pub nic_id: String,
    pub stats: NicStats,
    pub drops: NicDrops,
    pub rule_flows: Vec<RuleFlows>,
    pub control_rate_limited: u64,
    /// Its DHCP leases (none when its responder is not running).
    pub leases: LeaseSample,
}

/// Everything the metrics show, read under the manager's lock once.
#[derive(Debug, Clone, Default)]
pub struct MetricsSample {
    pub nics: Vec<NicSample>,
    pub networks: usize,
    pub security_groups: usize,
    pub conntrack_entries: usize,
}

impl NetManager {
    /// The NICs' counters, the number of networks and security groups, and the conntrack
    /// table's size.
    pub async fn metrics_sample(&self) -> Result<MetricsSample> {
        let nics = self.list_nics(None)?;
        let networks = self.store.list_networks()?.len();
        let security_groups = self.store.list_security_groups()?.len();
        let inner = self.inner.lock().await;
        let nics = nics
            .into_iter()
            .map(|nic| NicSample {
                stats: inner
                    .ifindex
                    .get(&nic.id)
                    .map(|i| inner.datapath.stats(*i))
                    .unwrap_or_default(),
                drops: inner
                    .ifindex
                    .get(&nic.id)
                    .map(|i| inner.datapath.drops(*i))
                    .unwrap_or_default(),
                rule_flows: inner
                    .ifindex
                    .get(&nic.id)
                    .map(|i| inner.datapath.rule_flows(*i))
                    .unwrap_or_default(),
                control_rate_limited: inner
                    .responders
                    .get(&nic.id)
                    .map(|r| r.rate_limited())
                    .unwrap_or(0),
                leases: inner
                    .responders
                    .get(&nic.id)
                    .map(|r| r.leases())
                    .unwrap_or_default(),
                nic_id: nic.id,
            })
            .collect();
        Ok(MetricsSample {
            nics,
            networks,
            security_groups,
            conntrack_entries: inner.datapath.conntrack_entries(),
        })
    }

    /// Control frames (DHCP, NDP, ARP) of the NIC dropped by its rate limit so far.
    pub async fn control_rate_limited(&self, id: &str) -> Result<u64> {
        let nic = self.get_nic(id)?;
        let inner = self.inner.lock().await;
        Ok(inner
            .responders
            .get(&nic.id)
            .map(|r| r.rate_limited())
            .unwrap_or(0))
    }
}
