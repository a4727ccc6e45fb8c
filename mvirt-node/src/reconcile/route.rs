//! Routes in mvirt-ebpf: each destination of a route (an address or prefix behind another node)
//! is one local route, with an id derived from the route's id so it is stable across passes.
//! The ledger records the derived ids.

use std::collections::{HashMap, HashSet};

use tonic::Status;

use mvirt_api::proto as api;
use mvirt_ebpf::proto as net;

use super::{deleted, Context, Converging, Outcome, Reconciler};
use crate::ledger::Kind;

pub struct RouteReconciler<'a> {
    pub cx: &'a Context,
}

/// A hyphenated UUID derived from a parent id and a name (route destinations).
pub fn derived_id(parent: &str, name: &str) -> String {
    let namespace = uuid::Uuid::parse_str(parent).unwrap_or(uuid::Uuid::NAMESPACE_OID);
    uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

/// Where a local route sends its destination: (network, remote node's underlay address).
pub type Via = (String, String);

/// The destinations of a route mvirt-ebpf lacks or sends elsewhere, with their local ids and
/// whether a local route with that id exists (and must be replaced: the VM behind it moved to
/// another node, e.g. by a live migration).
fn missing_destinations<'a>(
    want: &'a api::RouteSpec,
    existing: &HashMap<String, Via>,
) -> Vec<(String, &'a String, bool)> {
    want.destinations
        .iter()
        .map(|destination| (derived_id(&want.id, destination), destination))
        .filter_map(|(id, destination)| match existing.get(&id) {
            None => Some((id, destination, false)),
            Some((network, remote))
                if *network != want.network_id || *remote != want.node_address =>
            {
                Some((id, destination, true))
            }
            Some(_) => None,
        })
        .collect()
}

impl Reconciler for RouteReconciler<'_> {
    const KIND: Kind = Kind::Route;
    type Desired = api::RouteSpec;
    type Observed = HashMap<String, Via>;
    type Converged = ();

    fn local_ids(spec: &api::NodeSpec) -> HashSet<String> {
        spec.routes
            .iter()
            .flat_map(|r| r.destinations.iter().map(|d| derived_id(&r.id, d)))
            .collect()
    }

    async fn observe(&self) -> Result<HashMap<String, Via>, Status> {
        let request = net::ListRoutesRequest::default();
        let listed = self.cx.net().list_routes(request).await?;
        let routes = listed.into_inner().routes;
        Ok(routes
            .into_iter()
            .map(|r| (r.id, (r.network_id, r.remote_node)))
            .collect())
    }

    async fn converge(&self, want: &Self::Desired, seen: &Self::Observed) -> Converging<()> {
        let mut client = self.cx.net();
        let mut result = Ok(());
        for (id, destination, replace) in missing_destinations(want, seen) {
            self.cx.claim(Kind::Route, &id)?;
            if replace {
                // mvirt-ebpf refuses a second spec under one id: delete, then create anew.
                let request = net::DeleteRouteRequest { id: id.clone() };
                if let Err(error) = deleted(client.delete_route(request).await) {
                    result = Err(error);
                    continue;
                }
            }
            if let Err(error) = client
                .create_route(net::CreateRouteRequest {
                    id,
                    network_id: want.network_id.clone(),
                    destination: destination.clone(),
                    remote_node: want.node_address.clone(),
                })
                .await
            {
                result = Err(error);
            }
        }
        Ok(Outcome::of_call("route", result))
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        let request = net::DeleteRouteRequest { id: id.to_string() };
        deleted(cx.net().delete_route(request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f";

    #[test]
    fn route_ids_are_stable_and_distinct_per_destination() {
        assert_eq!(
            derived_id(PARENT, "10.0.0.5/32"),
            derived_id(PARENT, "10.0.0.5/32")
        );
        assert_ne!(
            derived_id(PARENT, "10.0.0.5/32"),
            derived_id(PARENT, "fd00::5/128")
        );
        assert!(mvirt_common::validate::resource_id("route", &derived_id(PARENT, "x")).is_ok());
    }

    #[test]
    fn only_destinations_without_a_local_route_are_created() {
        let want = api::RouteSpec {
            id: PARENT.into(),
            destinations: vec!["10.0.0.5/32".into(), "fd00::5/128".into()],
            ..Default::default()
        };
        let existing = HashMap::from([(
            derived_id(PARENT, "10.0.0.5/32"),
            (String::new(), String::new()),
        )]);
        let missing = missing_destinations(&want, &existing);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].1, "fd00::5/128");
        assert_eq!(missing[0].0, derived_id(PARENT, "fd00::5/128"));
        assert!(!missing[0].2);
    }

    #[test]
    fn a_destination_whose_vm_moved_to_another_node_is_replaced() {
        let want = api::RouteSpec {
            id: PARENT.into(),
            network_id: "net".into(),
            destinations: vec!["10.0.0.5/32".into(), "fd00::5/128".into()],
            node_address: "10.200.0.2".into(),
            ..Default::default()
        };
        let via = |remote: &str| ("net".to_string(), remote.to_string());
        let existing = HashMap::from([
            (derived_id(PARENT, "10.0.0.5/32"), via("10.200.0.1")),
            (derived_id(PARENT, "fd00::5/128"), via("10.200.0.2")),
        ]);
        let missing = missing_destinations(&want, &existing);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].1, "10.0.0.5/32");
        assert!(missing[0].2, "the old route is replaced");
    }
}
