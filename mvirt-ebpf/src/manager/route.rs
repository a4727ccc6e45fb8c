//! Routes: a prefix of a network reached through another node, over the VXLAN tunnel.

use ipnet::IpNet;
use mvirt_common::validate;

use super::{not_found, now, ManagerError, NetManager, Result};
use crate::model::{Invalid, Route, RouteSpec};

impl NetManager {
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
