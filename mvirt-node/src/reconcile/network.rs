//! Networks in mvirt-ebpf: created with the API's prefixes and tunnel key; DNS and NTP servers
//! are updated in place. The tunnel key is fixed once created.

use std::collections::HashMap;

use tonic::Status;

use mvirt_api::proto as api;
use mvirt_ebpf::proto as net;

use super::{by_id, deleted, Context, Converging, Outcome, Reconciler};
use crate::ledger::Kind;

pub struct NetworkReconciler<'a> {
    pub cx: &'a Context,
}

/// What a desired network needs on this node.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Create,
    Update,
    InSync,
    /// The key names the network's tunnel traffic on every node; mvirt-ebpf cannot change it,
    /// so a difference is reported, never papered over.
    KeyMismatch {
        here: u32,
    },
}

fn step(want: &api::NetworkSpec, have: Option<&net::Network>) -> Step {
    match have {
        None => Step::Create,
        Some(have) if have.tunnel_key != want.tunnel_key => Step::KeyMismatch {
            here: have.tunnel_key,
        },
        Some(have)
            if have.dns_servers != want.dns_servers || have.ntp_servers != want.ntp_servers =>
        {
            Step::Update
        }
        Some(_) => Step::InSync,
    }
}

impl Reconciler for NetworkReconciler<'_> {
    const KIND: Kind = Kind::Network;
    type Desired = api::NetworkSpec;
    type Observed = HashMap<String, net::Network>;
    type Converged = ();

    async fn observe(&self) -> Result<Self::Observed, Status> {
        let request = net::ListNetworksRequest {};
        let listed = self.cx.net().list_networks(request).await?;
        let networks = listed.into_inner().networks;
        Ok(by_id(networks, |n| &n.id))
    }

    async fn converge(&self, want: &Self::Desired, seen: &Self::Observed) -> Converging<()> {
        let mut client = self.cx.net();
        let result = match step(want, seen.get(&want.id)) {
            Step::InSync => Ok(()),
            Step::KeyMismatch { here } => Err(Status::failed_precondition(format!(
                "network {} has tunnel key {here} on this node but {} in the cluster",
                want.id, want.tunnel_key
            ))),
            Step::Update => client
                .update_network(net::UpdateNetworkRequest {
                    id: want.id.clone(),
                    dns_servers: want.dns_servers.clone(),
                    ntp_servers: want.ntp_servers.clone(),
                })
                .await
                .map(drop),
            Step::Create => {
                let request = net::CreateNetworkRequest {
                    id: want.id.clone(),
                    name: want.name.clone(),
                    ipv4_prefix: want.ipv4_prefix.clone(),
                    ipv6_prefix: want.ipv6_prefix.clone(),
                    dns_servers: want.dns_servers.clone(),
                    ntp_servers: want.ntp_servers.clone(),
                    public: want.is_public,
                    tunnel_key: want.tunnel_key,
                };
                let call = client.create_network(request);
                let created = self.cx.create(Kind::Network, "network", &want.id, call);
                created.await?.map(drop)
            }
        };
        Ok(Outcome::of_call("network", result))
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        let request = net::DeleteNetworkRequest { id: id.to_string() };
        deleted(cx.net().delete_network(request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> api::NetworkSpec {
        api::NetworkSpec {
            id: "n".into(),
            tunnel_key: 7,
            dns_servers: vec!["10.0.0.1".into()],
            ..Default::default()
        }
    }

    /// The network as mvirt-ebpf has it after creating `want()`.
    fn have() -> net::Network {
        let want = want();
        net::Network {
            id: want.id,
            tunnel_key: want.tunnel_key,
            dns_servers: want.dns_servers,
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_network_is_created_and_a_matching_one_left_alone() {
        assert_eq!(step(&want(), None), Step::Create);
        assert_eq!(step(&want(), Some(&have())), Step::InSync);
    }

    #[test]
    fn changed_dns_servers_update_the_network_in_place() {
        let mut want = want();
        want.dns_servers.push("10.0.0.2".into());
        assert_eq!(step(&want, Some(&have())), Step::Update);
    }

    #[test]
    fn a_different_tunnel_key_is_reported_even_when_servers_changed_too() {
        let mut want = want();
        want.tunnel_key = 8;
        want.ntp_servers.push("10.0.0.3".into());
        assert_eq!(step(&want, Some(&have())), Step::KeyMismatch { here: 7 });
    }
}
