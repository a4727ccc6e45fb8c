//! NICs in mvirt-ebpf: created with the API's MAC and addresses (mvirt-ebpf's DHCP hands out
//! exactly those) and the hostname of the VM or pod that uses them; security-group membership and
//! routed prefixes are updated in place. A converged NIC (its TAP) is handed to the VMs.

use std::collections::HashMap;

use tonic::Status;

use mvirt_api::proto as api;
use mvirt_api::proto::ResourceStatus;
use mvirt_common::names::local_name;
use mvirt_ebpf::proto as net;

use super::{by_id, deleted, Context, Converging, Failure, Outcome, Reconciler};
use crate::ledger::Kind;

pub struct NicReconciler<'a> {
    cx: &'a Context,
    /// The hostname of the VM each NIC belongs to, by NIC id.
    hostnames: HashMap<&'a str, &'a str>,
}

impl<'a> NicReconciler<'a> {
    pub fn new(cx: &'a Context, spec: &'a api::NodeSpec) -> Self {
        let vms = spec.vms.iter().flat_map(|vm| {
            vm.nic_ids
                .iter()
                .map(move |nic| (nic.as_str(), vm.hostname.as_str()))
        });
        let pods = spec.pods.iter().flat_map(|pod| {
            let hostname = if pod.hostname.is_empty() {
                pod.name.as_str()
            } else {
                pod.hostname.as_str()
            };
            pod.nic_ids.iter().map(move |nic| (nic.as_str(), hostname))
        });
        let hostnames = vms.chain(pods).collect();
        Self { cx, hostnames }
    }
}

/// Whether an existing NIC's security groups or routed prefixes differ from the desired ones
/// (in any order).
fn needs_update(want: &api::NicSpec, have: &net::Nic) -> bool {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    sorted(&have.security_group_ids) != sorted(&want.security_group_ids)
        || sorted(&have.routed_prefixes) != sorted(&want.routed_prefixes)
}

/// Adds a NIC's addresses to a status (a NIC's own, or one of the VM that uses it).
pub(super) fn report_addresses(status: &mut ResourceStatus, nic: &api::NicSpec) {
    if !nic.ipv4_address.is_empty() {
        status.ipv4_addresses.push(nic.ipv4_address.clone());
    }
    if !nic.ipv6_address.is_empty() {
        status.ipv6_addresses.push(nic.ipv6_address.clone());
    }
}

impl Reconciler for NicReconciler<'_> {
    const KIND: Kind = Kind::Nic;
    const HELD_BY_VMS: bool = true;
    type Desired = api::NicSpec;
    type Observed = HashMap<String, net::Nic>;
    type Converged = net::Nic;

    async fn observe(&self) -> Result<Self::Observed, Status> {
        let request = net::ListNicsRequest::default();
        let listed = self.cx.net().list_nics(request).await?;
        let nics = listed.into_inner().nics;
        Ok(by_id(nics, |n| &n.id))
    }

    async fn converge(&self, want: &Self::Desired, seen: &Self::Observed) -> Converging<net::Nic> {
        let mut client = self.cx.net();
        let Some(have) = seen.get(&want.id) else {
            let request = net::CreateNicRequest {
                id: want.id.clone(),
                network_id: want.network_id.clone(),
                name: local_name(&want.name, &want.id),
                mac_address: want.mac_address.clone(),
                ipv4_address: want.ipv4_address.clone(),
                ipv6_address: want.ipv6_address.clone(),
                routed_prefixes: want.routed_prefixes.clone(),
                hostname: self
                    .hostnames
                    .get(want.id.as_str())
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
                security_group_ids: want.security_group_ids.clone(),
            };
            let call = client.create_nic(request);
            let created = self.cx.create(Kind::Nic, "NIC", &want.id, call).await?;
            return Ok(Outcome::of_call("NIC", created));
        };
        if !needs_update(want, have) {
            return Ok(Outcome::Ready(have.clone()));
        }
        let updated = client
            .update_nic(net::UpdateNicRequest {
                id: want.id.clone(),
                hostname: have.hostname.clone(),
                routed_prefixes: want.routed_prefixes.clone(),
                security_group_ids: want.security_group_ids.clone(),
            })
            .await;
        Ok(match updated {
            Ok(nic) => Outcome::Ready(nic.into_inner()),
            Err(error) => Outcome::Degraded(have.clone(), Failure::Call { what: "NIC", error }),
        })
    }

    fn report(&self, want: &api::NicSpec, have: &net::Nic, status: &mut ResourceStatus) {
        report_addresses(status, want);
        status.fields.insert("tap".into(), have.tap_name.clone());
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        let request = net::DeleteNicRequest { id: id.to_string() };
        deleted(cx.net().delete_nic(request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nic_is_updated_only_when_its_groups_or_prefixes_differ_in_content() {
        let want = api::NicSpec {
            security_group_ids: vec!["a".into(), "b".into()],
            routed_prefixes: vec!["10.1.0.0/24".into()],
            ..Default::default()
        };
        let mut have = net::Nic {
            security_group_ids: vec!["b".into(), "a".into()],
            routed_prefixes: vec!["10.1.0.0/24".into()],
            ..Default::default()
        };
        assert!(!needs_update(&want, &have));
        have.routed_prefixes.clear();
        assert!(needs_update(&want, &have));
    }

    #[test]
    fn only_the_addresses_a_nic_has_are_reported() {
        let mut status = ResourceStatus::default();
        report_addresses(
            &mut status,
            &api::NicSpec {
                ipv4_address: "10.0.0.5".into(),
                ..Default::default()
            },
        );
        assert_eq!(status.ipv4_addresses, ["10.0.0.5"]);
        assert!(status.ipv6_addresses.is_empty());
    }
}
