//! Rule compilation: a NIC's security groups (remote groups expanded to their members'
//! addresses) become the datapath's per-NIC rule table, and [`rules_allow`] evaluates a
//! connection against it exactly as the datapath does.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::datapath::{CtKey, NicRules, RuleOrigin, SgRule};
use crate::model::{self, Direction, Nic, Protocol, RuleTarget, SecurityGroup};

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

fn sg_rule(rule: &model::Rule, family: u8, addr: [u8; 16], prefixlen: u8) -> SgRule {
    let (port_lo, port_hi) = rule.ports.unwrap_or((0, 0));
    let family = match rule.protocol {
        Protocol::Icmp => 4,
        Protocol::Icmpv6 => 6,
        _ => family,
    };
    SgRule {
        family,
        proto: rule.protocol.number(),
        port_lo,
        port_hi,
        prefixlen,
        pad: 0,
        addr,
    }
}

/// The datapath's rule lists for a NIC: rules of all attached groups, remote groups expanded
/// into the addresses of their member NICs on this node merged with the rule's
/// `remote_addresses` (members on other nodes). Addresses of the wrong family for an ICMP or
/// ICMPv6 rule are left out, and so are duplicates. Each entry's group and rule id go to the
/// `*_origin` lists (the labels of its flow counter).
pub fn nic_rules(nic: &Nic, nics: &[Nic], groups: &HashMap<String, SecurityGroup>) -> NicRules {
    let mut out = NicRules::default();
    for gid in &nic.spec.security_groups {
        let Some(group) = groups.get(gid) else {
            continue;
        };
        for rule in &group.spec.rules {
            let (list, origins) = match rule.direction {
                Direction::Ingress => (&mut out.ingress, &mut out.ingress_origin),
                Direction::Egress => (&mut out.egress, &mut out.egress_origin),
            };
            match &rule.target {
                RuleTarget::Any => list.push(sg_rule(rule, 0, [0; 16], 0)),
                RuleTarget::Cidr(net) => list.push(sg_rule_for(rule, net)),
                RuleTarget::Group {
                    id: remote,
                    remote_addresses,
                } => {
                    let local = nics
                        .iter()
                        .filter(|n| n.spec.security_groups.iter().any(|g| g == remote))
                        .flat_map(|member| {
                            let v4 = member.spec.ipv4.map(|ip| IpNet::from(IpAddr::V4(ip)));
                            let v6 = member.spec.ipv6.map(|ip| IpNet::from(IpAddr::V6(ip)));
                            v4.into_iter().chain(v6)
                        });
                    let mut seen = HashSet::new();
                    for net in local.chain(remote_addresses.iter().copied()) {
                        let v6 = matches!(net, IpNet::V6(_));
                        let family_ok = match rule.protocol {
                            Protocol::Icmp => !v6,
                            Protocol::Icmpv6 => v6,
                            _ => true,
                        };
                        if family_ok && seen.insert(net) {
                            list.push(sg_rule_for(rule, &net));
                        }
                    }
                }
            }
            let origin = RuleOrigin {
                security_group: group.id.clone(),
                rule: rule.id.clone(),
            };
            origins.resize(list.len(), origin);
        }
    }
    out
}

/// A datapath rule matching the remote addresses in `net`.
fn sg_rule_for(rule: &model::Rule, net: &IpNet) -> SgRule {
    let family = if matches!(net, IpNet::V4(_)) { 4 } else { 6 };
    sg_rule(rule, family, addr_bytes(net.addr()), net.prefix_len())
}

fn prefix_match(rule: &[u8; 16], addr: &[u8; 16], prefixlen: u8) -> bool {
    let mut bits = u32::from(prefixlen.min(128));
    for i in 0..16 {
        if bits == 0 {
            return true;
        }
        let mask: u8 = if bits >= 8 {
            0xff
        } else {
            0xffu8 << (8 - bits)
        };
        if rule[i] & mask != addr[i] & mask {
            return false;
        }
        bits = bits.saturating_sub(8);
    }
    true
}

/// The datapath's rule evaluation (bpf/datapath.c `sg_allows`), for pruning conntrack entries
/// after a rule change.
pub fn rules_allow(rules: &NicRules, dir: Direction, ct: &CtKey) -> bool {
    let (list, remote) = match dir {
        Direction::Ingress => (&rules.ingress, &ct.src),
        Direction::Egress => (&rules.egress, &ct.dst),
    };
    if list.is_empty() {
        return dir == Direction::Egress;
    }
    list.iter().any(|r| {
        (r.family == 0 || r.family == ct.family)
            && (r.proto == 0 || r.proto == ct.proto)
            && (r.port_hi == 0 || (ct.dport >= r.port_lo && ct.dport <= r.port_hi))
            && prefix_match(&r.addr, remote, r.prefixlen)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NicSpec, Rule, SecurityGroupSpec};

    const G_WEB: &str = "00000000-0000-4000-8000-000000000001";
    const G_DB: &str = "00000000-0000-4000-8000-000000000002";

    fn nic(id: &str, ip: &str, groups: &[&str]) -> Nic {
        Nic {
            id: id.into(),
            spec: NicSpec {
                network_id: "n".into(),
                name: String::new(),
                mac: [2, 0, 0, 0, 0, 1],
                ipv4: Some(ip.parse().unwrap()),
                ipv6: None,
                routed_prefixes: vec![],
                hostname: String::new(),
                security_groups: groups.iter().map(|g| g.to_string()).collect(),
            },
            tap_name: "mvx".into(),
            created_at: 0,
        }
    }

    fn ct(src: &str, dst: &str, proto: u8, dport: u16) -> CtKey {
        CtKey {
            network: 1,
            family: 4,
            proto,
            sport: 40000,
            dport,
            pad: 0,
            src: addr_bytes(src.parse().unwrap()),
            dst: addr_bytes(dst.parse().unwrap()),
        }
    }

    #[test]
    fn remote_group_rules_expand_to_member_addresses_and_evaluate_like_the_datapath() {
        let db_rule = Rule {
            id: "00000000-0000-4000-8000-00000000000a".into(),
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            ports: Some((5432, 5432)),
            target: RuleTarget::group(G_WEB),
        };
        let groups: HashMap<String, SecurityGroup> = [(G_WEB, vec![]), (G_DB, vec![db_rule])]
            .into_iter()
            .map(|(id, rules)| {
                (
                    id.to_string(),
                    SecurityGroup {
                        id: id.into(),
                        spec: SecurityGroupSpec {
                            name: String::new(),
                            rules,
                        },
                        created_at: 0,
                    },
                )
            })
            .collect();
        let nics = vec![
            nic("web1", "10.0.0.2", &[G_WEB]),
            nic("web2", "10.0.0.3", &[G_WEB]),
            nic("db", "10.0.0.9", &[G_DB]),
        ];
        let rules = nic_rules(&nics[2], &nics, &groups);
        assert_eq!(
            rules.ingress.len(),
            2,
            "one rule per member of the remote group"
        );
        assert!(rules.egress.is_empty());
        assert!(rules_allow(
            &rules,
            Direction::Ingress,
            &ct("10.0.0.2", "10.0.0.9", 6, 5432)
        ));
        assert!(rules_allow(
            &rules,
            Direction::Ingress,
            &ct("10.0.0.3", "10.0.0.9", 6, 5432)
        ));
        assert!(
            !rules_allow(
                &rules,
                Direction::Ingress,
                &ct("10.0.0.4", "10.0.0.9", 6, 5432)
            ),
            "not a member"
        );
        assert!(
            !rules_allow(
                &rules,
                Direction::Ingress,
                &ct("10.0.0.2", "10.0.0.9", 6, 22)
            ),
            "wrong port"
        );
        assert!(
            !rules_allow(
                &rules,
                Direction::Ingress,
                &ct("10.0.0.2", "10.0.0.9", 17, 5432)
            ),
            "wrong protocol"
        );
        assert!(
            rules_allow(
                &rules,
                Direction::Egress,
                &ct("10.0.0.9", "8.8.8.8", 17, 53)
            ),
            "egress open without egress rules"
        );
    }

    #[test]
    fn remote_addresses_merge_with_local_members_by_family_and_without_duplicates() {
        let rule = |protocol, remote_addresses: &[&str]| Rule {
            id: "00000000-0000-4000-8000-00000000000a".into(),
            direction: Direction::Ingress,
            protocol,
            ports: None,
            target: RuleTarget::Group {
                id: G_WEB.into(),
                remote_addresses: remote_addresses
                    .iter()
                    .map(|a| a.parse().unwrap())
                    .collect(),
            },
        };
        let groups = |r: Rule| -> HashMap<String, SecurityGroup> {
            [(G_WEB, vec![]), (G_DB, vec![r])]
                .into_iter()
                .map(|(id, rules)| {
                    let spec = SecurityGroupSpec {
                        name: String::new(),
                        rules,
                    };
                    let sg = SecurityGroup {
                        id: id.into(),
                        spec,
                        created_at: 0,
                    };
                    (id.to_string(), sg)
                })
                .collect()
        };
        let nics = vec![
            nic("web1", "10.0.0.2", &[G_WEB]),
            nic("db", "10.0.0.9", &[G_DB]),
        ];
        let remote = ["10.1.0.7/32", "10.2.0.0/24", "10.0.0.2/32", "fd00::7/128"];
        let rules = nic_rules(&nics[1], &nics, &groups(rule(Protocol::Tcp, &remote)));
        assert_eq!(
            rules.ingress.len(),
            4,
            "local 10.0.0.2 + three remote entries (10.0.0.2 only once)"
        );
        for (src, allowed) in [
            ("10.0.0.2", true),
            ("10.1.0.7", true),
            ("10.2.0.200", true),
            ("10.1.0.8", false),
            ("10.3.0.1", false),
        ] {
            assert_eq!(
                rules_allow(&rules, Direction::Ingress, &ct(src, "10.0.0.9", 6, 22)),
                allowed,
                "{src}"
            );
        }
        // An ICMP rule only takes the IPv4 members, an ICMPv6 rule only the IPv6 ones.
        let icmp = nic_rules(&nics[1], &nics, &groups(rule(Protocol::Icmp, &remote)));
        assert_eq!(icmp.ingress.len(), 3);
        assert!(icmp.ingress.iter().all(|r| r.family == 4));
        let icmp6 = nic_rules(&nics[1], &nics, &groups(rule(Protocol::Icmpv6, &remote)));
        assert_eq!(icmp6.ingress.len(), 1);
        assert_eq!(icmp6.ingress[0].prefixlen, 128);
    }
}
