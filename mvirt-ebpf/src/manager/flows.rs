//! Tracked flows of a NIC handed between nodes (live migration): the source exports the
//! conntrack entries whose local side is one of the NIC's addresses, the target imports them
//! (last-seen = now) before the guest runs there, so the replies of flows the VM opened are let
//! in by its security groups on the new node as they were on the old one.

use std::net::IpAddr;

use super::{not_found, ManagerError, NetManager, Result};
use crate::datapath::CtKey;
use crate::model::Invalid;

/// At most this many flows per import (the conntrack map is an LRU of its own size; a NIC
/// with more open flows loses the rest, which then need a rule or a reconnect).
pub const MAX_IMPORT_FLOWS: usize = 16_384;

/// One tracked flow, as the NIC's first packet of it went: `src` → `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedFlow {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// A FIN was seen (the short timeout applies).
    pub closing: bool,
}

fn bytes16(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn ip_of(family: u8, b: [u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(b)
    }
}

fn invalid(msg: String) -> ManagerError {
    ManagerError::Invalid(Invalid(msg))
}

impl NetManager {
    /// The NIC's datapath network index and its addresses (IPv4, IPv6).
    fn nic_flow_scope(&self, nic_id: &str) -> Result<(u32, Vec<IpAddr>)> {
        let nic = self.get_nic(nic_id)?;
        let network = self
            .store
            .get_network(&nic.spec.network_id)?
            .ok_or_else(|| not_found("network", &nic.spec.network_id))?;
        let addrs = nic
            .spec
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(nic.spec.ipv6.map(IpAddr::V6))
            .collect();
        Ok((network.index, addrs))
    }

    /// The tracked flows with one of the NIC's addresses on either side.
    pub async fn export_flows(&self, nic_id: &str) -> Result<Vec<TrackedFlow>> {
        let (network, addrs) = self.nic_flow_scope(nic_id)?;
        let raw: Vec<[u8; 16]> = addrs.iter().map(|a| bytes16(*a)).collect();
        let inner = self.inner.lock().await;
        Ok(inner
            .datapath
            .conntrack_of(network, &raw)
            .into_iter()
            .filter(|(k, _)| k.family == 4 || k.family == 6)
            .map(|(k, v)| TrackedFlow {
                protocol: k.proto,
                src: ip_of(k.family, k.src),
                dst: ip_of(k.family, k.dst),
                src_port: k.sport,
                dst_port: k.dport,
                closing: v.closing != 0,
            })
            .collect())
    }

    /// Inserts `flows` (each with one of the NIC's addresses on one side) into the conntrack
    /// map with last-seen = now; returns how many. The NIC must exist (`NOT_FOUND`); a flow
    /// that is not the NIC's, mixes families or names an untracked protocol, or more than
    /// [`MAX_IMPORT_FLOWS`] flows, is `INVALID_ARGUMENT` and nothing is imported.
    pub async fn import_flows(&self, nic_id: &str, flows: &[TrackedFlow]) -> Result<usize> {
        let (network, addrs) = self.nic_flow_scope(nic_id)?;
        if flows.len() > MAX_IMPORT_FLOWS {
            return Err(invalid(format!(
                "{} flows: at most {MAX_IMPORT_FLOWS} per import",
                flows.len()
            )));
        }
        let mut keys = Vec::with_capacity(flows.len());
        for (i, f) in flows.iter().enumerate() {
            if !addrs.contains(&f.src) && !addrs.contains(&f.dst) {
                return Err(invalid(format!(
                    "flow {i} ({} -> {}): neither side is an address of NIC {nic_id}",
                    f.src, f.dst
                )));
            }
            let family = match (f.src, f.dst) {
                (IpAddr::V4(_), IpAddr::V4(_)) => 4,
                (IpAddr::V6(_), IpAddr::V6(_)) => 6,
                _ => {
                    return Err(invalid(format!(
                        "flow {i} ({} -> {}): mixes IPv4 and IPv6",
                        f.src, f.dst
                    )))
                }
            };
            // TCP, UDP, ICMP and ICMPv6 (echo: the identifier in both ports).
            if ![6u8, 17, 1, 58].contains(&f.protocol) {
                return Err(invalid(format!(
                    "flow {i}: protocol {} is not tracked (tcp 6, udp 17, icmp 1, icmpv6 58)",
                    f.protocol
                )));
            }
            keys.push((
                CtKey {
                    network,
                    family,
                    proto: f.protocol,
                    sport: f.src_port,
                    dport: f.dst_port,
                    pad: 0,
                    src: bytes16(f.src),
                    dst: bytes16(f.dst),
                },
                f.closing,
            ));
        }
        let mut inner = self.inner.lock().await;
        inner.datapath.conntrack_insert(&keys)?;
        drop(inner);
        self.audit.audit(
            format!("imported {} tracked flows of NIC {nic_id}", keys.len()),
            &[nic_id],
        );
        Ok(keys.len())
    }
}
