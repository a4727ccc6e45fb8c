//! The networking service's domain logic: every NetService call lands here after `grpc.rs`
//! translated it. A mutation validates its input (nothing changes on bad input), writes the
//! store, then converges the node to the store: TAP devices, datapath tables
//! ([`DesiredState`] recomputed from the whole store and written by [`Datapath::sync`]),
//! responders, NAT rules. One async mutex serialises mutations, so the store and the kernel
//! never disagree for long; the same convergence runs at start ([`NetManager::start`]).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use mvirt_common::{validate, ErrorKind, HasErrorKind};
use mvirt_log::AuditLogger;
use tokio::sync::Mutex;

use crate::datapath::{
    CtKey, Datapath, DatapathError, DesiredState, NicInfo, NicRules, NicStats, Route4Data,
    Route6Data, RouteValue, SgRule, ROUTE_NIC, ROUTE_TUNNEL, ROUTE_UPLINK,
};
use crate::model::{
    self, tap_name, Direction, Invalid, Network, NetworkSpec, Nic, NicSpec, Protocol, Route,
    RouteSpec, RuleTarget, SecurityGroup, SecurityGroupSpec,
};
use crate::responder::{NicConfig, Responder, ResponderError};
use crate::store::{Store, StoreError};
use crate::{nat, tap};

/// Settings of the manager (from the daemon's flags).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub database: PathBuf,
    pub pin_dir: PathBuf,
    pub lease_secs: u32,
    /// MTU announced to guests (DHCP option 26, RA); 0 = none.
    pub guest_mtu: u16,
    pub conntrack_timeout_secs: u64,
    /// Host interface public networks are SNATed to (none: public networks only get routes).
    pub uplink: Option<String>,
    /// nftables table holding the SNAT rules.
    pub nft_table: String,
    /// VXLAN (collect_md) device carrying routes to other nodes.
    pub tunnel_device: String,
    pub tunnel_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InUse(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error(transparent)]
    Responder(Box<ResponderError>),
    #[error(transparent)]
    Nat(#[from] nat::NatError),
}

impl HasErrorKind for ManagerError {
    fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::Invalid(_) => ErrorKind::InvalidArgument,
            ManagerError::NotFound { .. } => ErrorKind::NotFound,
            ManagerError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            ManagerError::InUse(_) => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }
}
mvirt_common::impl_status_from!(ManagerError);

impl From<DatapathError> for ManagerError {
    fn from(e: DatapathError) -> Self {
        ManagerError::Datapath(Box::new(e))
    }
}

impl From<ResponderError> for ManagerError {
    fn from(e: ResponderError) -> Self {
        ManagerError::Responder(Box::new(e))
    }
}

impl From<validate::InvalidName> for ManagerError {
    fn from(e: validate::InvalidName) -> Self {
        ManagerError::Invalid(e.into())
    }
}

type Result<T, E = ManagerError> = std::result::Result<T, E>;

/// `MAX_RULES` in bpf/datapath.c: rules evaluated per NIC and direction.
const MAX_RULES_PER_DIRECTION: usize = 4096;

fn not_found(what: &'static str, id: &str) -> ManagerError {
    ManagerError::NotFound {
        what,
        id: id.into(),
    }
}

struct Inner {
    datapath: Datapath,
    responders: HashMap<String, Responder>,
    ifindex: HashMap<String, u32>,
    tunnel_ifindex: Option<u32>,
}

/// The networking service of one node.
pub struct NetManager {
    store: Store,
    config: ManagerConfig,
    audit: AuditLogger,
    inner: Mutex<Inner>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl NetManager {
    /// Opens the store, loads the datapath (failing loudly if the kernel refuses it), and
    /// converges TAPs, tables, responders and NAT to the stored state.
    pub async fn start(config: ManagerConfig, audit: AuditLogger) -> Result<Self> {
        let store = Store::open(&config.database)?;
        let datapath = Datapath::load(&config.pin_dir, config.conntrack_timeout_secs)?;
        let manager = Self {
            store,
            config,
            audit,
            inner: Mutex::new(Inner {
                datapath,
                responders: HashMap::new(),
                ifindex: HashMap::new(),
                tunnel_ifindex: None,
            }),
        };
        {
            let mut inner = manager.inner.lock().await;
            let nics = manager.store.list_nics()?;
            // One broken NIC (say, its TAP name taken by a foreign device) must not keep the
            // others offline: it is logged and stays without datapath until fixed.
            for nic in &nics {
                if let Err(e) = manager.bring_up_nic(&mut inner, nic) {
                    let message = mvirt_common::error::error_chain(&e);
                    tracing::error!(nic = nic.id, error = %message, "cannot restore NIC");
                    manager.audit.error(
                        format!("cannot restore NIC {}: {message}", nic.id),
                        &[&nic.id],
                    );
                }
            }
            if !manager.store.list_routes()?.is_empty() {
                manager.ensure_tunnel(&mut inner)?;
            }
            manager.converge(&mut inner)?;
            // Links of TAPs that are no longer in the store.
            let known: HashSet<String> = nics.iter().map(|n| n.tap_name.clone()).collect();
            for link in crate::datapath::pinned_links(&manager.config.pin_dir) {
                if !known.contains(&link) && link != manager.config.tunnel_device {
                    inner.datapath.detach(&link);
                }
            }
            tracing::info!(nics = nics.len(), "datapath converged to the stored state");
        }
        Ok(manager)
    }

    // ---- convergence -------------------------------------------------------------------

    fn nic_config(&self, nic: &Nic, network: &Network) -> NicConfig {
        NicConfig {
            nic_id: nic.id.clone(),
            mac: nic.spec.mac,
            ipv4: nic.spec.ipv4,
            ipv6: nic.spec.ipv6,
            ipv4_prefix: network.spec.ipv4_prefix,
            ipv6_prefix: network.spec.ipv6_prefix,
            dns_servers: network.spec.dns_servers.clone(),
            ntp_servers: network.spec.ntp_servers.clone(),
            hostname: nic.spec.hostname.clone(),
            lease_secs: self.config.lease_secs,
            mtu: self.config.guest_mtu,
        }
    }

    /// TAP, datapath attachment and responder of one NIC (idempotent).
    fn bring_up_nic(&self, inner: &mut Inner, nic: &Nic) -> Result<()> {
        let network = self
            .store
            .get_network(&nic.spec.network_id)?
            .ok_or_else(|| not_found("network", &nic.spec.network_id))?;
        // The host stack sees a NIC's IPv6 only where it NATs it to the uplink (NAT66).
        let host_ipv6 = self.config.uplink.is_some()
            && network.spec.public
            && network.spec.ipv6_prefix.is_some();
        tap::ensure(
            &nic.tap_name,
            host_ipv6,
            &tap::owner_alias(&self.config.pin_dir),
        )?;
        let ifindex = inner.datapath.attach_tap(&nic.tap_name)?;
        inner.ifindex.insert(nic.id.clone(), ifindex);
        let config = self.nic_config(nic, &network);
        match inner.responders.get(&nic.id) {
            Some(r) => r.update(config),
            None => {
                let r = Responder::spawn(&nic.tap_name, ifindex, config, &inner.datapath)?;
                inner.responders.insert(nic.id.clone(), r);
            }
        }
        Ok(())
    }

    fn ensure_tunnel(&self, inner: &mut Inner) -> Result<u32> {
        if let Some(i) = inner.tunnel_ifindex {
            return Ok(i);
        }
        let dev = &self.config.tunnel_device;
        tap::check_name(dev)?;
        if !crate::ip::link_exists(dev) {
            let port = self.config.tunnel_port.to_string();
            crate::ip::ip(&[
                "link", "add", "name", dev, "type", "vxlan", "external", "dstport", &port,
            ])
            .map_err(nat::NatError::from)?;
        }
        crate::ip::ip(&["link", "set", "dev", dev, "up"]).map_err(nat::NatError::from)?;
        let i = inner.datapath.attach_tunnel(dev)?;
        inner.tunnel_ifindex = Some(i);
        Ok(i)
    }

    /// Everything the datapath tables must hold, computed from the store.
    fn desired(&self, inner: &Inner) -> Result<DesiredState> {
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
                    pad: [0; 2],
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
    fn converge(&self, inner: &mut Inner) -> Result<()> {
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
    fn remove_orphan_taps(&self, inner: &mut Inner) -> Result<()> {
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

    fn update_responders(&self, inner: &Inner, network_id: &str) -> Result<()> {
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

    // ---- networks ----------------------------------------------------------------------

    /// Creates a network; `key` is its VXLAN VNI, allocated by the control plane. Two networks
    /// with one key would share their tunnel traffic, so a second is refused, never shared.
    pub async fn create_network(&self, id: &str, spec: NetworkSpec, key: u32) -> Result<Network> {
        validate::resource_id("network id", id)?;
        spec.validate()?;
        model::validate_tunnel_key(key)?;
        let mut inner = self.inner.lock().await;
        if let Some(existing) = self.store.get_network(id)? {
            if existing.spec == spec && existing.tunnel_key == key {
                return Ok(existing);
            }
            return Err(ManagerError::AlreadyExists(format!(
                "network {id} exists with a different spec or tunnel key"
            )));
        }
        for other in self.store.list_networks()? {
            if other.tunnel_key == key {
                return Err(ManagerError::InUse(format!(
                    "network {id} has the same tunnel key {key:#x} as network {}",
                    other.id
                )));
            }
            if spec.public && other.spec.public {
                let pairs = [
                    (
                        spec.ipv4_prefix.map(IpNet::V4),
                        other.spec.ipv4_prefix.map(IpNet::V4),
                    ),
                    (
                        spec.ipv6_prefix.map(IpNet::V6),
                        other.spec.ipv6_prefix.map(IpNet::V6),
                    ),
                ];
                for (a, b) in pairs {
                    if let (Some(a), Some(b)) = (a, b) {
                        if a.contains(&b.network()) || b.contains(&a.network()) {
                            return Err(ManagerError::InUse(format!(
                                "public prefix {a} overlaps {b} of public network {}",
                                other.id
                            )));
                        }
                    }
                }
            }
        }
        let mut network = Network {
            id: id.into(),
            spec,
            index: 0,
            tunnel_key: key,
            created_at: now(),
        };
        network.index = self.store.insert_network(&network)?;
        self.converge(&mut inner)?;
        self.audit.audit(format!("created network {id}"), &[id]);
        Ok(network)
    }

    pub fn get_network(&self, id: &str) -> Result<Network> {
        self.store
            .get_network(id)?
            .ok_or_else(|| not_found("network", id))
    }

    pub fn list_networks(&self) -> Result<Vec<Network>> {
        Ok(self.store.list_networks()?)
    }

    pub async fn update_network(
        &self,
        id: &str,
        dns: Vec<IpAddr>,
        ntp: Vec<IpAddr>,
    ) -> Result<Network> {
        let inner = self.inner.lock().await;
        let mut network = self.get_network(id)?;
        network.spec.dns_servers = dns;
        network.spec.ntp_servers = ntp;
        network.spec.validate()?;
        self.store.update_network(&network)?;
        self.update_responders(&inner, id)?;
        self.audit
            .audit(format!("updated DNS/NTP servers of network {id}"), &[id]);
        Ok(network)
    }

    pub async fn delete_network(&self, id: &str) -> Result<()> {
        let mut inner = self.inner.lock().await;
        if self.store.get_network(id)?.is_none() {
            return Err(not_found("network", id));
        }
        let nics = self
            .store
            .list_nics()?
            .into_iter()
            .filter(|n| n.spec.network_id == id)
            .count();
        let routes = self
            .store
            .list_routes()?
            .into_iter()
            .filter(|r| r.spec.network_id == id)
            .count();
        if nics > 0 || routes > 0 {
            return Err(ManagerError::InUse(format!(
                "network {id} still has {nics} NIC(s) and {routes} route(s)"
            )));
        }
        self.store.delete_network(id)?;
        self.converge(&mut inner)?;
        self.audit.audit(format!("deleted network {id}"), &[id]);
        Ok(())
    }

    // ---- NICs --------------------------------------------------------------------------

    fn check_nic(&self, id: &str, spec: &NicSpec) -> Result<Network> {
        let network = self
            .store
            .get_network(&spec.network_id)?
            .ok_or_else(|| not_found("network", &spec.network_id))?;
        spec.validate(&network)?;
        for other in self.store.list_nics()? {
            if other.id == id {
                continue;
            }
            if other.spec.network_id == spec.network_id {
                for (mine, theirs) in [
                    (spec.ipv4.map(IpAddr::V4), other.spec.ipv4.map(IpAddr::V4)),
                    (spec.ipv6.map(IpAddr::V6), other.spec.ipv6.map(IpAddr::V6)),
                ] {
                    if let (Some(a), Some(b)) = (mine, theirs) {
                        if a == b {
                            return Err(ManagerError::AlreadyExists(format!(
                                "address {a} is already used by NIC {} in network {}",
                                other.id, spec.network_id
                            )));
                        }
                    }
                }
            }
            if other.tap_name == tap_name(id) {
                return Err(ManagerError::AlreadyExists(format!(
                    "NIC {} already uses TAP name {} (the digests of two ids collide)",
                    other.id, other.tap_name
                )));
            }
        }
        for sg in &spec.security_groups {
            if self.store.get_security_group(sg)?.is_none() {
                return Err(not_found("security group", sg));
            }
        }
        let candidate = Nic {
            id: id.into(),
            spec: spec.clone(),
            tap_name: tap_name(id),
            created_at: 0,
        };
        self.check_rule_counts(Some(&candidate), None)?;
        Ok(network)
    }

    /// Refuses a change after which some NIC would have more rules per direction than the
    /// datapath evaluates (remote groups expand into one rule per member address). `nic` and
    /// `group` are the changed objects, replacing their stored versions.
    fn check_rule_counts(&self, nic: Option<&Nic>, group: Option<&SecurityGroup>) -> Result<()> {
        let mut nics = self.store.list_nics()?;
        if let Some(changed) = nic {
            nics.retain(|n| n.id != changed.id);
            nics.push(changed.clone());
        }
        let mut groups: HashMap<String, SecurityGroup> = self
            .store
            .list_security_groups()?
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        if let Some(changed) = group {
            groups.insert(changed.id.clone(), changed.clone());
        }
        for n in nics.iter().filter(|n| !n.spec.security_groups.is_empty()) {
            let rules = nic_rules(n, &nics, &groups);
            let most = rules.ingress.len().max(rules.egress.len());
            if most > MAX_RULES_PER_DIRECTION {
                return Err(Invalid(format!(
                    "NIC {} would have {most} security-group rules in one direction after \
                     expanding remote groups; the datapath evaluates at most \
                     {MAX_RULES_PER_DIRECTION}",
                    n.id
                ))
                .into());
            }
        }
        Ok(())
    }

    pub async fn create_nic(&self, id: &str, spec: NicSpec) -> Result<Nic> {
        validate::resource_id("NIC id", id)?;
        let mut inner = self.inner.lock().await;
        if let Some(existing) = self.store.get_nic(id)? {
            if existing.spec == spec {
                return Ok(existing);
            }
            return Err(ManagerError::AlreadyExists(format!(
                "NIC {id} exists with a different spec"
            )));
        }
        self.check_nic(id, &spec)?;
        let nic = Nic {
            id: id.into(),
            tap_name: tap_name(id),
            spec,
            created_at: now(),
        };
        self.store.upsert_nic(&nic)?;
        let result = self
            .bring_up_nic(&mut inner, &nic)
            .and_then(|_| self.converge(&mut inner));
        if let Err(e) = result {
            // Undo: nothing changed.
            inner.responders.remove(id);
            inner.ifindex.remove(id);
            inner.datapath.detach(&nic.tap_name);
            let _ = tap::remove(&nic.tap_name);
            self.store.delete_nic(id)?;
            let _ = self.converge(&mut inner);
            return Err(e);
        }
        self.audit.audit(
            format!(
                "created NIC {id} (TAP {}) in network {}",
                nic.tap_name, nic.spec.network_id
            ),
            &[id, &nic.spec.network_id],
        );
        Ok(nic)
    }

    pub fn get_nic(&self, id: &str) -> Result<Nic> {
        self.store.get_nic(id)?.ok_or_else(|| not_found("NIC", id))
    }

    pub fn list_nics(&self, network_id: Option<&str>) -> Result<Vec<Nic>> {
        Ok(self
            .store
            .list_nics()?
            .into_iter()
            .filter(|n| network_id.is_none_or(|id| n.spec.network_id == id))
            .collect())
    }

    /// Replaces hostname, routed prefixes and security groups of a NIC.
    pub async fn update_nic(
        &self,
        id: &str,
        hostname: String,
        routed_prefixes: Vec<IpNet>,
        security_groups: Vec<String>,
    ) -> Result<Nic> {
        let mut inner = self.inner.lock().await;
        let mut nic = self.get_nic(id)?;
        nic.spec.hostname = hostname;
        nic.spec.routed_prefixes = routed_prefixes;
        nic.spec.security_groups = dedup(security_groups);
        let network = self.check_nic(id, &nic.spec)?;
        self.store.upsert_nic(&nic)?;
        if let Some(r) = inner.responders.get(id) {
            r.update(self.nic_config(&nic, &network));
        }
        self.converge(&mut inner)?;
        self.audit.audit(format!("updated NIC {id}"), &[id]);
        Ok(nic)
    }

    pub async fn attach_security_group(
        &self,
        nic_id: &str,
        sg_id: &str,
        attach: bool,
    ) -> Result<Nic> {
        let nic = self.get_nic(nic_id)?;
        if self.store.get_security_group(sg_id)?.is_none() {
            return Err(not_found("security group", sg_id));
        }
        let mut groups = nic.spec.security_groups.clone();
        groups.retain(|g| g != sg_id);
        if attach {
            groups.push(sg_id.to_string());
        }
        let nic = self
            .update_nic(
                nic_id,
                nic.spec.hostname.clone(),
                nic.spec.routed_prefixes.clone(),
                groups,
            )
            .await?;
        let verb = if attach { "attached" } else { "detached" };
        self.audit.audit(
            format!("{verb} security group {sg_id} to NIC {nic_id}"),
            &[nic_id, sg_id],
        );
        Ok(nic)
    }

    pub async fn delete_nic(&self, id: &str) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let nic = self.get_nic(id)?;
        inner.responders.remove(id);
        inner.ifindex.remove(id);
        inner.datapath.detach(&nic.tap_name);
        self.store.delete_nic(id)?;
        // Before converging, which would otherwise find the TAP an orphan.
        tap::remove(&nic.tap_name)?;
        self.converge(&mut inner)?;
        self.audit
            .audit(format!("deleted NIC {id} (TAP {})", nic.tap_name), &[id]);
        Ok(())
    }

    pub async fn nic_stats(&self, id: &str) -> Result<NicStats> {
        let inner = self.inner.lock().await;
        let nic = self.get_nic(id)?;
        Ok(inner
            .ifindex
            .get(&nic.id)
            .map(|i| inner.datapath.stats(*i))
            .unwrap_or_default())
    }

    // ---- security groups ---------------------------------------------------------------

    fn check_group(&self, id: &str, spec: &SecurityGroupSpec) -> Result<()> {
        spec.validate()?;
        for rule in &spec.rules {
            if let Some(g) = rule.target.group_id() {
                if g != id && self.store.get_security_group(g)?.is_none() {
                    return Err(not_found("remote security group", g));
                }
            }
        }
        Ok(())
    }

    pub async fn create_security_group(
        &self,
        id: &str,
        spec: SecurityGroupSpec,
    ) -> Result<SecurityGroup> {
        validate::resource_id("security group id", id)?;
        let _inner = self.inner.lock().await;
        if let Some(existing) = self.store.get_security_group(id)? {
            if existing.spec == spec {
                return Ok(existing);
            }
            return Err(ManagerError::AlreadyExists(format!(
                "security group {id} exists with a different spec"
            )));
        }
        self.check_group(id, &spec)?;
        let sg = SecurityGroup {
            id: id.into(),
            spec,
            created_at: now(),
        };
        self.store.upsert_security_group(&sg)?;
        self.audit.audit(
            format!(
                "created security group {id} with {} rule(s)",
                sg.spec.rules.len()
            ),
            &[id],
        );
        Ok(sg)
    }

    pub fn get_security_group(&self, id: &str) -> Result<SecurityGroup> {
        self.store
            .get_security_group(id)?
            .ok_or_else(|| not_found("security group", id))
    }

    pub fn list_security_groups(&self) -> Result<Vec<SecurityGroup>> {
        Ok(self.store.list_security_groups()?)
    }

    /// Replaces the rules of a group; live traffic follows at once.
    pub async fn update_security_group(
        &self,
        id: &str,
        rules: Vec<model::Rule>,
    ) -> Result<SecurityGroup> {
        let mut inner = self.inner.lock().await;
        let mut sg = self.get_security_group(id)?;
        sg.spec.rules = rules;
        self.check_group(id, &sg.spec)?;
        self.check_rule_counts(None, Some(&sg))?;
        self.store.upsert_security_group(&sg)?;
        self.converge(&mut inner)?;
        self.audit.audit(
            format!(
                "updated rules of security group {id} ({} rule(s))",
                sg.spec.rules.len()
            ),
            &[id],
        );
        Ok(sg)
    }

    pub async fn delete_security_group(&self, id: &str) -> Result<()> {
        let mut inner = self.inner.lock().await;
        self.get_security_group(id)?;
        if let Some(nic) = self
            .store
            .list_nics()?
            .into_iter()
            .find(|n| n.spec.security_groups.iter().any(|g| g == id))
        {
            return Err(ManagerError::InUse(format!(
                "security group {id} is attached to NIC {}",
                nic.id
            )));
        }
        for other in self.store.list_security_groups()? {
            if other.id != id
                && other
                    .spec
                    .rules
                    .iter()
                    .any(|r| r.target.group_id() == Some(id))
            {
                return Err(ManagerError::InUse(format!(
                    "security group {id} is referenced by a rule of security group {}",
                    other.id
                )));
            }
        }
        self.store.delete_security_group(id)?;
        self.converge(&mut inner)?;
        self.audit
            .audit(format!("deleted security group {id}"), &[id]);
        Ok(())
    }

    // ---- routes ------------------------------------------------------------------------

    pub async fn create_route(&self, id: &str, spec: RouteSpec) -> Result<Route> {
        validate::resource_id("route id", id)?;
        spec.validate()?;
        let mut inner = self.inner.lock().await;
        if let Some(existing) = self.store.get_route(id)? {
            if existing.spec == spec {
                return Ok(existing);
            }
            return Err(ManagerError::AlreadyExists(format!(
                "route {id} exists with a different spec"
            )));
        }
        let network = self
            .store
            .get_network(&spec.network_id)?
            .ok_or_else(|| not_found("network", &spec.network_id))?;
        let family_ok = match spec.destination {
            IpNet::V4(_) => network.spec.ipv4_prefix.is_some(),
            IpNet::V6(_) => network.spec.ipv6_prefix.is_some(),
        };
        if !family_ok {
            return Err(Invalid(format!(
                "network {} has no prefix of the family of route {}",
                network.id, spec.destination
            ))
            .into());
        }
        if let Some(other) = self.store.list_routes()?.into_iter().find(|r| {
            r.spec.network_id == spec.network_id && r.spec.destination == spec.destination
        }) {
            return Err(ManagerError::AlreadyExists(format!(
                "route {} already sends {} of network {}",
                other.id, spec.destination, spec.network_id
            )));
        }
        self.ensure_tunnel(&mut inner)?;
        let route = Route {
            id: id.into(),
            spec,
            created_at: now(),
        };
        self.store.insert_route(&route)?;
        self.converge(&mut inner)?;
        self.audit.audit(
            format!(
                "created route {id}: {} via node {}",
                route.spec.destination, route.spec.remote_node
            ),
            &[id, &route.spec.network_id],
        );
        Ok(route)
    }

    pub fn list_routes(&self, network_id: Option<&str>) -> Result<Vec<Route>> {
        Ok(self
            .store
            .list_routes()?
            .into_iter()
            .filter(|r| network_id.is_none_or(|id| r.spec.network_id == id))
            .collect())
    }

    pub async fn delete_route(&self, id: &str) -> Result<()> {
        let mut inner = self.inner.lock().await;
        if self.store.get_route(id)?.is_none() {
            return Err(not_found("route", id));
        }
        self.store.delete_route(id)?;
        self.converge(&mut inner)?;
        self.audit.audit(format!("deleted route {id}"), &[id]);
        Ok(())
    }
}

fn dedup(ids: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|i| seen.insert(i.clone())).collect()
}

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
/// ICMPv6 rule are left out, and so are duplicates.
pub fn nic_rules(nic: &Nic, nics: &[Nic], groups: &HashMap<String, SecurityGroup>) -> NicRules {
    let mut out = NicRules::default();
    for gid in &nic.spec.security_groups {
        let Some(group) = groups.get(gid) else {
            continue;
        };
        for rule in &group.spec.rules {
            let list = match rule.direction {
                Direction::Ingress => &mut out.ingress,
                Direction::Egress => &mut out.egress,
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
    use crate::model::{NicSpec, Rule};

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
