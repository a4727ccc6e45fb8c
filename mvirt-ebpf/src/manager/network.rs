//! Networks: create (with the VXLAN key the control plane allocated), read, update, delete.

use std::net::IpAddr;

use ipnet::IpNet;
use mvirt_common::validate;

use super::{not_found, now, ManagerError, NetManager, Result};
use crate::model::{self, Network, NetworkSpec};

impl NetManager {
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
}
