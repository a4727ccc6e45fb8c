//! The networking service's domain logic: every NetService call lands here after `grpc.rs`
//! translated it. A mutation validates its input (nothing changes on bad input), writes the
//! store, then converges the node to the store: TAP devices, datapath tables
//! ([`DesiredState`] recomputed from the whole store and written by [`Datapath::sync`]),
//! responders, NAT rules. One async mutex serialises mutations, so the store and the kernel
//! never disagree for long; the same convergence runs at start ([`NetManager::start`]).
//!
//! One module per kind of resource ([`network`], [`nic`], [`security_group`], [`route`]: their
//! calls), and one per concern they share: [`converge`] (store → kernel), [`rules`] (security
//! groups → the datapath's rule tables), [`tunnel`] (the VXLAN device). This file holds the
//! manager, its errors, start-up and a NIC's bring-up.

mod converge;
pub mod flows;
pub mod metrics;
mod network;
mod nic;
mod route;
mod rules;
mod security_group;
mod tunnel;

pub use rules::{nic_rules, rules_allow};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use mvirt_common::{validate, ErrorKind, HasErrorKind};
use mvirt_log::AuditLogger;
use tokio::sync::Mutex;

#[cfg(doc)]
use crate::datapath::DesiredState;
use crate::datapath::{Datapath, DatapathError};
use crate::model::{Invalid, Network, Nic};
use crate::responder::{ControlRateLimit, NicConfig, Responder, ResponderError};
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
    /// Per-NIC budget of control frames the responder answers.
    pub control_rate: ControlRateLimit,
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
                let r = Responder::spawn(
                    &nic.tap_name,
                    ifindex,
                    config,
                    self.config.control_rate,
                    &inner.datapath,
                )?;
                inner.responders.insert(nic.id.clone(), r);
            }
        }
        Ok(())
    }
}

fn dedup(ids: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|i| seen.insert(i.clone())).collect()
}
