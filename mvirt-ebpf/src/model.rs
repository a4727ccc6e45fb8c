//! Domain types of the networking daemon and their validation, in one place.
//!
//! gRPC requests are translated into these types by `grpc.rs`; every check on user input
//! happens here (`*Spec::validate`) or, for checks that need other objects (overlaps, addresses
//! in use, unknown groups), in `manager.rs`. Specs compare with `==` for idempotent creates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mvirt_common::validate;
use serde::{Deserialize, Serialize};

/// The gateway every VM sees: link-local, the same on every NIC.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The gateway's fixed MAC address (also the MAC of every TAP on the host side).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x6d, 0x76, 0x00, 0x00, 0x01];

/// Invalid input, with a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

impl From<validate::InvalidName> for Invalid {
    fn from(e: validate::InvalidName) -> Self {
        Invalid(e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub ipv4_prefix: Option<Ipv4Net>,
    pub ipv6_prefix: Option<Ipv6Net>,
    pub dns_servers: Vec<IpAddr>,
    pub ntp_servers: Vec<IpAddr>,
    pub public: bool,
}

impl NetworkSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.name.is_empty() {
            validate::dns_label("network name", &self.name)?;
        }
        if self.ipv4_prefix.is_none() && self.ipv6_prefix.is_none() {
            return Err(invalid("a network needs an IPv4 or an IPv6 prefix"));
        }
        if let Some(p) = self.ipv4_prefix {
            if p.network() != p.addr() {
                return Err(invalid(format!(
                    "IPv4 prefix {p} has host bits set (did you mean {}?)",
                    p.trunc()
                )));
            }
            if p.prefix_len() > 30 {
                return Err(invalid(format!(
                    "IPv4 prefix {p} is too small (at most /30)"
                )));
            }
            if p.contains(&GATEWAY_V4) || p.addr().is_multicast() || p.addr().is_loopback() {
                return Err(invalid(format!(
                    "IPv4 prefix {p} overlaps link-local, loopback or multicast space"
                )));
            }
        }
        if let Some(p) = self.ipv6_prefix {
            if p.network() != p.addr() {
                return Err(invalid(format!(
                    "IPv6 prefix {p} has host bits set (did you mean {}?)",
                    p.trunc()
                )));
            }
            if p.prefix_len() > 120 {
                return Err(invalid(format!(
                    "IPv6 prefix {p} is too small (at most /120)"
                )));
            }
            let seg = p.addr().segments()[0];
            if seg & 0xffc0 == 0xfe80 || seg & 0xff00 == 0xff00 || p.addr().is_loopback() {
                return Err(invalid(format!(
                    "IPv6 prefix {p} overlaps link-local, loopback or multicast space"
                )));
            }
        }
        if self.dns_servers.len() > 8 || self.ntp_servers.len() > 8 {
            return Err(invalid("at most 8 DNS and 8 NTP servers"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub spec: NetworkSpec,
    /// Small integer naming the network in the datapath's tables (local to this node).
    pub index: u32,
    /// VXLAN VNI naming the network between nodes, allocated by the control plane (unique in
    /// the cluster, the same on every node).
    pub tunnel_key: u32,
    pub created_at: i64,
}

/// The largest VXLAN VNI (24 bits).
pub const MAX_TUNNEL_KEY: u32 = 0xff_ffff;

/// A tunnel key must be a usable VXLAN VNI (0 means "none given").
pub fn validate_tunnel_key(key: u32) -> Result<(), Invalid> {
    if key == 0 || key > MAX_TUNNEL_KEY {
        return Err(invalid(format!(
            "tunnel key {key} is not a VXLAN VNI (1..={MAX_TUNNEL_KEY}); the control plane allocates one per network"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    pub network_id: String,
    pub name: String,
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub routed_prefixes: Vec<IpNet>,
    pub hostname: String,
    pub security_groups: Vec<String>,
}

impl NicSpec {
    /// Checks that need only the NIC and its network.
    pub fn validate(&self, network: &Network) -> Result<(), Invalid> {
        validate::resource_id("network id", &self.network_id)?;
        if !self.name.is_empty() {
            validate::dns_label("NIC name", &self.name)?;
        }
        if !self.hostname.is_empty() {
            validate::dns_label("hostname", &self.hostname)?;
        }
        for sg in &self.security_groups {
            validate::resource_id("security group id", sg)?;
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(invalid("a NIC needs an IPv4 or an IPv6 address"));
        }
        if let Some(ip) = self.ipv4 {
            let Some(prefix) = network.spec.ipv4_prefix else {
                return Err(invalid(format!(
                    "network {} has no IPv4 prefix for address {ip}",
                    network.id
                )));
            };
            if !prefix.contains(&ip) {
                return Err(invalid(format!(
                    "address {ip} is outside the network's prefix {prefix}"
                )));
            }
            if ip == prefix.network() || ip == prefix.broadcast() {
                return Err(invalid(format!(
                    "address {ip} is the network or broadcast address of {prefix}"
                )));
            }
        }
        if let Some(ip) = self.ipv6 {
            let Some(prefix) = network.spec.ipv6_prefix else {
                return Err(invalid(format!(
                    "network {} has no IPv6 prefix for address {ip}",
                    network.id
                )));
            };
            if !prefix.contains(&ip) {
                return Err(invalid(format!(
                    "address {ip} is outside the network's prefix {prefix}"
                )));
            }
            if ip == prefix.network() {
                return Err(invalid(format!(
                    "address {ip} is the subnet-router anycast address of {prefix}"
                )));
            }
        }
        for p in &self.routed_prefixes {
            if p.network() != p.addr() {
                return Err(invalid(format!("routed prefix {p} has host bits set")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub id: String,
    pub spec: NicSpec,
    pub tap_name: String,
    pub created_at: i64,
}

/// The persistent TAP name of a NIC: derived from a digest of its whole id (see
/// [`mvirt_common::names::tap_name`]); ids of one millisecond get different names.
pub fn tap_name(nic_id: &str) -> String {
    mvirt_common::names::tap_name(nic_id)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    /// The IP protocol number the datapath matches (0 = any).
    pub fn number(self) -> u8 {
        match self {
            Protocol::All => 0,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::Icmpv6 => 58,
        }
    }
}

/// Most addresses a rule may name as remote members of a group (the datapath evaluates at most
/// 4096 rules per NIC and direction).
pub const MAX_REMOTE_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleTarget {
    Any,
    Cidr(IpNet),
    /// Members of a security group: its NICs on this node, plus `remote_addresses` — the
    /// members on other nodes, pushed by the control plane (host prefixes or CIDRs).
    Group {
        id: String,
        remote_addresses: Vec<IpNet>,
    },
}

impl RuleTarget {
    /// A group target without members on other nodes.
    pub fn group(id: impl Into<String>) -> Self {
        RuleTarget::Group {
            id: id.into(),
            remote_addresses: Vec::new(),
        }
    }

    /// The remote security group this target names, if any.
    pub fn group_id(&self) -> Option<&str> {
        match self {
            RuleTarget::Group { id, .. } => Some(id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub direction: Direction,
    pub protocol: Protocol,
    /// Inclusive destination port range; `None` = any port.
    pub ports: Option<(u16, u16)>,
    pub target: RuleTarget,
}

impl Rule {
    pub fn validate(&self) -> Result<(), Invalid> {
        validate::resource_id("rule id", &self.id)?;
        if let Some((lo, hi)) = self.ports {
            if !matches!(self.protocol, Protocol::Tcp | Protocol::Udp) {
                return Err(invalid(format!(
                    "rule {}: ports are only valid for TCP and UDP",
                    self.id
                )));
            }
            if lo == 0 || lo > hi {
                return Err(invalid(format!(
                    "rule {}: invalid port range {lo}-{hi}",
                    self.id
                )));
            }
        }
        match &self.target {
            RuleTarget::Cidr(net) => {
                if net.network() != net.addr() {
                    return Err(invalid(format!(
                        "rule {}: CIDR {net} has host bits set",
                        self.id
                    )));
                }
                let v6 = matches!(net, IpNet::V6(_));
                if (self.protocol == Protocol::Icmp && v6)
                    || (self.protocol == Protocol::Icmpv6 && !v6)
                {
                    return Err(invalid(format!(
                        "rule {}: protocol does not match the CIDR's family",
                        self.id
                    )));
                }
            }
            RuleTarget::Group {
                id,
                remote_addresses,
            } => {
                validate::resource_id("remote security group id", id)?;
                if remote_addresses.len() > MAX_REMOTE_ADDRESSES {
                    return Err(invalid(format!(
                        "rule {}: at most {MAX_REMOTE_ADDRESSES} remote addresses ({} given)",
                        self.id,
                        remote_addresses.len()
                    )));
                }
                if let Some(net) = remote_addresses.iter().find(|n| n.network() != n.addr()) {
                    return Err(invalid(format!(
                        "rule {}: remote address {net} has host bits set",
                        self.id
                    )));
                }
            }
            RuleTarget::Any => {}
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupSpec {
    pub name: String,
    pub rules: Vec<Rule>,
}

impl SecurityGroupSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.name.is_empty() {
            validate::dns_label("security group name", &self.name)?;
        }
        let mut ids = std::collections::HashSet::new();
        for rule in &self.rules {
            rule.validate()?;
            if !ids.insert(rule.id.as_str()) {
                return Err(invalid(format!("duplicate rule id {}", rule.id)));
            }
        }
        if self.rules.len() > 4096 {
            return Err(invalid("at most 4096 rules per security group"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub spec: SecurityGroupSpec,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub network_id: String,
    pub destination: IpNet,
    pub remote_node: Ipv4Addr,
}

impl RouteSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        validate::resource_id("network id", &self.network_id)?;
        if self.destination.network() != self.destination.addr() {
            return Err(invalid(format!(
                "destination {} has host bits set",
                self.destination
            )));
        }
        if self.remote_node.is_unspecified()
            || self.remote_node.is_multicast()
            || self.remote_node.is_broadcast()
        {
            return Err(invalid(format!(
                "remote node {} is not a unicast address",
                self.remote_node
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub id: String,
    pub spec: RouteSpec,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(v4: &str) -> Network {
        Network {
            id: "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f".into(),
            spec: NetworkSpec {
                name: "n".into(),
                ipv4_prefix: Some(v4.parse().unwrap()),
                ipv6_prefix: None,
                dns_servers: vec![],
                ntp_servers: vec![],
                public: false,
            },
            index: 1,
            tunnel_key: 1,
            created_at: 0,
        }
    }

    #[test]
    fn tap_names_fit_in_ifnamsiz_and_differ_for_ids_sharing_their_prefix() {
        let a = tap_name("0b8f3c1e-2a4d-7f6b-9c1d-7e5a3b2c1d0f");
        let b = tap_name("0b8f3c1e-2a4d-7f6b-9c1d-7e5a3b2c1d1f");
        assert!(a.len() <= 15 && b.len() <= 15);
        assert_ne!(a, b);
    }

    #[test]
    fn tunnel_keys_must_be_24_bit_vnis() {
        assert!(validate_tunnel_key(0).is_err());
        assert!(validate_tunnel_key(1).is_ok());
        assert!(validate_tunnel_key(MAX_TUNNEL_KEY).is_ok());
        assert!(validate_tunnel_key(MAX_TUNNEL_KEY + 1).is_err());
    }

    #[test]
    fn prefixes_with_host_bits_or_link_local_space_are_rejected() {
        let mut spec = net("10.0.0.0/24").spec;
        assert!(spec.validate().is_ok());
        spec.ipv4_prefix = Some("10.0.0.1/24".parse().unwrap());
        assert!(spec.validate().unwrap_err().0.contains("host bits"));
        spec.ipv4_prefix = Some("169.254.0.0/16".parse().unwrap());
        assert!(spec.validate().is_err());
        spec.ipv4_prefix = None;
        assert!(spec.validate().is_err());
    }

    #[test]
    fn nic_addresses_must_lie_inside_the_network() {
        let network = net("10.0.0.0/24");
        let mut spec = NicSpec {
            network_id: network.id.clone(),
            name: String::new(),
            mac: [2, 0, 0, 0, 0, 1],
            ipv4: Some("10.0.0.5".parse().unwrap()),
            ipv6: None,
            routed_prefixes: vec![],
            hostname: "web".into(),
            security_groups: vec![],
        };
        assert!(spec.validate(&network).is_ok());
        spec.ipv4 = Some("10.0.1.5".parse().unwrap());
        assert!(spec.validate(&network).unwrap_err().0.contains("outside"));
        spec.ipv4 = Some("10.0.0.255".parse().unwrap());
        assert!(spec.validate(&network).is_err());
        spec.ipv4 = Some("10.0.0.5".parse().unwrap());
        spec.ipv6 = Some("fd00::5".parse().unwrap());
        assert!(spec.validate(&network).unwrap_err().0.contains("no IPv6"));
    }

    #[test]
    fn ports_are_only_valid_for_tcp_and_udp_and_must_be_ordered() {
        let mut rule = Rule {
            id: "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f".into(),
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            ports: Some((22, 22)),
            target: RuleTarget::Any,
        };
        assert!(rule.validate().is_ok());
        rule.ports = Some((80, 22));
        assert!(rule.validate().is_err());
        rule.ports = Some((0, 22));
        assert!(rule.validate().is_err());
        rule.ports = Some((22, 22));
        rule.protocol = Protocol::Icmp;
        assert!(rule
            .validate()
            .unwrap_err()
            .0
            .contains("only valid for TCP and UDP"));
    }
}
