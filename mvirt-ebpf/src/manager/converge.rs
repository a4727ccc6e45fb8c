//! Convergence: the datapath tables ([`DesiredState`]) computed from the whole store and
//! written, the NAT rules, orphan TAPs removed, responders updated. Every mutation ends here.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::rules::{nic_rules, rules_allow};
use super::{Inner, NetManager, Result};
use crate::datapath::{
    CtKey, DesiredState, NicInfo, Route4Data, Route6Data, RouteValue, ROUTE_NIC, ROUTE_TUNNEL,
    ROUTE_UPLINK,
};
use crate::model::{Direction, Network, SecurityGroup};
use crate::{nat, tap};

impl NetManager {
    /// Everything the datapath tables must hold, computed from the store.
    pub(super) fn desired(&self, inner: &Inner) -> Result<DesiredState> {
        let networks: HashMap<String, Network> = self
            .store
            .list_networks()?
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
        let nics = self.store.list_nics()?;
        let groups: HashMap<String, SecurityGroup> = self
            .store
            .list_security_groups()?
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        let mut d = DesiredState::default();
        for network in networks.values() {
            d.tunnel_keys.insert(network.tunnel_key, network.index);
            if !network.spec.public {
                continue;
            }
            // Public networks: whatever matches no NIC and no tunnel route goes up the host
            // stack to the uplink (SNAT / NAT66 in nftables).
            let uplink = RouteValue {
                kind: ROUTE_UPLINK,
                ifindex: 0,
                mac: [0; 6],
                flags: 0,
                pad: 0,
                remote: [0; 4],
                key: 0,
            };
            if network.spec.ipv4_prefix.is_some() {
                let default = Route4Data {
                    network: network.index,
                    addr: [0; 4],
                };
                d.routes4.insert((0, default), uplink);
            }
            if network.spec.ipv6_prefix.is_some() {
                let default = Route6Data {
                    network: network.index,
                    addr: [0; 16],
                };
                d.routes6.insert((0, default), uplink);
            }
        }
        for nic in &nics {
            let (Some(network), Some(&ifindex)) = (
                networks.get(&nic.spec.network_id),
                inner.ifindex.get(&nic.id),
            ) else {
                continue;
            };
            d.nics.insert(
                ifindex,
                NicInfo {
                    network: network.index,
                    flags: 0,
                    mac: nic.spec.mac,
                    slot: 0,
                },
            );
            let to_nic = RouteValue {
                kind: ROUTE_NIC,
                ifindex,
                mac: nic.spec.mac,
                // NICs are TAPs: bpf_redirect to their egress (the VM reads the frame).
                flags: 0,
                pad: 0,
                remote: [0; 4],
                key: 0,
            };
            let mut prefixes: Vec<IpNet> = nic.spec.routed_prefixes.clone();
            if let Some(ip) = nic.spec.ipv4 {
                prefixes.push(IpNet::from(IpAddr::V4(ip)));
            }
            if let Some(ip) = nic.spec.ipv6 {
                prefixes.push(IpNet::from(IpAddr::V6(ip)));
            }
            for p in prefixes {
                match p {
                    IpNet::V4(p) => {
                        d.routes4.insert(
                            (
                                u32::from(p.prefix_len()),
                                Route4Data {
                                    network: network.index,
                                    addr: p.network().octets(),
                                },
                            ),
                            to_nic,
                        );
                    }
                    IpNet::V6(p) => {
                        d.routes6.insert(
                            (
                                u32::from(p.prefix_len()),
                                Route6Data {
                                    network: network.index,
                                    addr: p.network().octets(),
                                },
                            ),
                            to_nic,
                        );
                    }
                }
            }
            if !nic.spec.security_groups.is_empty() {
                d.security.insert(ifindex, nic_rules(nic, &nics, &groups));
            }
        }
        if let Some(tunnel) = inner.tunnel_ifindex {
            for route in self.store.list_routes()? {
                let Some(network) = networks.get(&route.spec.network_id) else {
                    continue;
                };
                let value = RouteValue {
                    kind: ROUTE_TUNNEL,
                    ifindex: tunnel,
                    mac: [0; 6],
                    flags: 0,
                    pad: 0,
                    remote: route.spec.remote_node.octets(),
                    key: network.tunnel_key,
                };
                match route.spec.destination {
                    IpNet::V4(p) => {
                        let data = Route4Data {
                            network: network.index,
                            addr: p.network().octets(),
                        };
                        d.routes4.insert((u32::from(p.prefix_len()), data), value);
                    }
                    IpNet::V6(p) => {
                        let data = Route6Data {
                            network: network.index,
                            addr: p.network().octets(),
                        };
                        d.routes6.insert((u32::from(p.prefix_len()), data), value);
                    }
                }
            }
        }
        Ok(d)
    }

    /// Writes the datapath tables and the NAT rules from the store.
    pub(super) fn converge(&self, inner: &mut Inner) -> Result<()> {
        self.remove_orphan_taps(inner)?;
        let desired = self.desired(inner)?;
        inner.datapath.sync(&desired)?;
        if let Some(uplink) = &self.config.uplink {
            let networks = self.store.list_networks()?;
            let nics = self.store.list_nics()?;
            let mut public_hosts = Vec::new();
            let mut prefixes: Vec<IpNet> = Vec::new();
            for n in networks.iter().filter(|n| n.spec.public) {
                prefixes.extend(n.spec.ipv4_prefix.map(IpNet::V4));
                prefixes.extend(n.spec.ipv6_prefix.map(IpNet::V6));
                for nic in nics.iter().filter(|x| x.spec.network_id == n.id) {
                    let v4 = nic.spec.ipv4.map(IpAddr::V4);
                    let v6 = nic.spec.ipv6.map(IpAddr::V6);
                    for ip in v4.into_iter().chain(v6) {
                        public_hosts.push((ip, nic.spec.mac, nic.tap_name.clone()));
                    }
                }
            }
            nat::sync(&self.config.nft_table, uplink, &prefixes, &public_hosts)?;
        }
        // Connections that the current rules no longer allow are forgotten.
        let by_addr: HashMap<(u32, [u8; 16]), u32> = desired
            .routes4
            .iter()
            .filter(|((plen, _), v)| *plen == 32 && v.kind == ROUTE_NIC)
            .map(|((_, k), v)| {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&k.addr);
                ((k.network, a), v.ifindex)
            })
            .chain(
                desired
                    .routes6
                    .iter()
                    .filter(|((plen, _), v)| *plen == 128 && v.kind == ROUTE_NIC)
                    .map(|((_, k), v)| ((k.network, k.addr), v.ifindex)),
            )
            .collect();
        inner.datapath.prune_conntrack(|ct: &CtKey| {
            let src = by_addr.get(&(ct.network, ct.src));
            let dst = by_addr.get(&(ct.network, ct.dst));
            let egress_ok = src
                .and_then(|i| desired.security.get(i))
                .is_none_or(|r| rules_allow(r, Direction::Egress, ct));
            let ingress_ok = dst
                .and_then(|i| desired.security.get(i))
                .is_none_or(|r| rules_allow(r, Direction::Ingress, ct));
            egress_ok && ingress_ok
        });
        Ok(())
    }

    /// Removes every TAP with our naming that no stored NIC owns (see `tap.rs`), with its
    /// pinned link, and says so in the audit log. A device that cannot be removed is logged and
    /// retried at the next convergence; it never fails the caller's request.
    pub(super) fn remove_orphan_taps(&self, inner: &mut Inner) -> Result<()> {
        let known: HashSet<String> = self
            .store
            .list_nics()?
            .into_iter()
            .map(|n| n.tap_name)
            .collect();
        for name in tap::orphans(&known, &tap::owner_alias(&self.config.pin_dir)) {
            inner.datapath.detach(&name);
            match tap::remove(&name) {
                Ok(()) => self
                    .audit
                    .audit(format!("removed orphan TAP {name} (no NIC owns it)"), &[]),
                Err(e) => {
                    let message = mvirt_common::error::error_chain(&e);
                    tracing::error!(tap = name, error = %message, "cannot remove orphan TAP");
                    self.audit
                        .error(format!("cannot remove orphan TAP {name}: {message}"), &[]);
                }
            }
        }
        Ok(())
    }

    pub(super) fn update_responders(&self, inner: &Inner, network_id: &str) -> Result<()> {
        let Some(network) = self.store.get_network(network_id)? else {
            return Ok(());
        };
        for nic in self
            .store
            .list_nics()?
            .into_iter()
            .filter(|n| n.spec.network_id == network_id)
        {
            if let Some(r) = inner.responders.get(&nic.id) {
                r.update(self.nic_config(&nic, &network));
            }
        }
        Ok(())
    }
}
