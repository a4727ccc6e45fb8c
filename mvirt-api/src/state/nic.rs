//! NICs: a port on a network with its MAC and addresses (allocated here when not asked for,
//! fixed once allocated) and its security groups. A NIC attached to a VM is not deleted.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::json;

use super::{refuse_if_used, ApiError, Change, Removed, Resource, SpecChanged, State};
use crate::model::*;

impl Resource for Nic {
    type Spec = NicSpec;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_new(Kind::Nic, &new.meta)?;
        s.allocate_nic(new, &BTreeSet::new(), &BTreeSet::new())
    }

    fn update_spec(s: &mut State, at: u64, id: &str, mut new: NicSpec) -> SpecChanged {
        let nic = &s.nics[id];
        if new.network_id != nic.spec.network_id {
            return Err(ApiError::invalid("a NIC's network cannot change"));
        }
        // Addresses and MAC are fixed once allocated; omitted means "keep".
        for (field, old, newv) in [
            ("mac_address", &nic.spec.mac_address, &mut new.mac_address),
            (
                "ipv4_address",
                &nic.spec.ipv4_address,
                &mut new.ipv4_address,
            ),
            (
                "ipv6_address",
                &nic.spec.ipv6_address,
                &mut new.ipv6_address,
            ),
        ] {
            match newv {
                None => *newv = old.clone(),
                Some(x) if Some(&*x) != old.as_ref() => {
                    return Err(ApiError::invalid(format!("{field} cannot change")))
                }
                _ => {}
            }
        }
        for sg in &new.security_group_ids {
            if !s.security_groups.contains_key(sg) {
                return Err(ApiError::not_found(Kind::SecurityGroup, sg));
            }
        }
        if new.security_group_ids != nic.spec.security_group_ids {
            // Leaving a group removes the NIC from other nodes' remote-group expansions.
            s.counters.last_removal_revision = at;
        }
        let changed = s.store_spec(id, new, |n: &mut Nic| &mut n.spec);
        Ok((changed, Vec::new()))
    }

    fn delete(s: &mut State, _: u64, id: &str, _: bool) -> Removed {
        if let Some(vm) = s.nics.get(id).and_then(|n| n.vm_id.clone()) {
            refuse_if_used(vec![format!("vm/{vm}")], || {
                format!("NIC {id} is attached to VM {vm}")
            })?;
        }
        if let Some(pod) = s.nics.get(id).and_then(|n| n.pod_id.clone()) {
            refuse_if_used(vec![format!("pod/{pod}")], || {
                format!("NIC {id} is attached to pod {pod}")
            })?;
        }
        s.nics.remove(id);
        Ok(Vec::new())
    }
}

impl State {
    /// Fills in MAC and addresses of a NIC (requested ones must be free). `extra_macs` and
    /// `extra_ips` are taken by NICs minted in the same command.
    pub(super) fn allocate_nic(
        &self,
        nic: &mut Nic,
        extra_macs: &BTreeSet<String>,
        extra_ips: &BTreeSet<IpAddr>,
    ) -> Result<(), ApiError> {
        let network = self.get::<Network>(&nic.spec.network_id)?;
        if network.meta.project != nic.meta.project {
            return Err(ApiError::invalid(format!(
                "network {} is in project {}, not {}",
                network.meta.id, network.meta.project, nic.meta.project
            )));
        }
        for sg in &nic.spec.security_group_ids {
            let group = self.get::<SecurityGroup>(sg)?;
            if group.meta.project != nic.meta.project {
                return Err(ApiError::invalid(format!(
                    "security group {sg} is in another project"
                )));
            }
        }
        let mut used_ips: BTreeSet<IpAddr> = extra_ips.clone();
        for other in self.nics.values() {
            if other.spec.network_id == nic.spec.network_id {
                for addr in [&other.spec.ipv4_address, &other.spec.ipv6_address]
                    .into_iter()
                    .flatten()
                {
                    if let Ok(ip) = addr.parse() {
                        used_ips.insert(ip);
                    }
                }
            }
        }
        nic.spec.ipv4_address = crate::ipam::allocate(
            network.spec.ipv4_prefix.as_deref(),
            nic.spec.ipv4_address.as_deref(),
            &used_ips,
        )
        .map_err(|e| e.with_details(json!({"network_id": network.meta.id})))?;
        nic.spec.ipv6_address = crate::ipam::allocate(
            network.spec.ipv6_prefix.as_deref(),
            nic.spec.ipv6_address.as_deref(),
            &used_ips,
        )
        .map_err(|e| e.with_details(json!({"network_id": network.meta.id})))?;
        let mut used_macs: BTreeSet<String> = extra_macs.clone();
        used_macs.extend(
            self.nics
                .values()
                .filter_map(|n| n.spec.mac_address.clone()),
        );
        match &nic.spec.mac_address {
            Some(mac) => {
                if used_macs.contains(mac) {
                    return Err(ApiError::conflict(format!("MAC address {mac} is in use")));
                }
            }
            None => nic.spec.mac_address = Some(crate::ipam::mac_for(&nic.meta.id, &used_macs)),
        }
        Ok(())
    }

    /// Removes a NIC (its network is going), detaching it from its VM.
    pub(super) fn remove_nic(&mut self, index: u64, nic_id: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(nic) = self.nics.remove(nic_id) {
            if let Some(vm_id) = &nic.vm_id {
                if let Some(vm) = self.vms.get_mut(vm_id) {
                    vm.spec.nic_ids.retain(|n| n != nic_id);
                    vm.meta.revision = index;
                    vm.meta.spec_revision = index;
                    changes.push(self.change(Kind::Vm, vm_id, "updated"));
                }
            }
            if let Some(pod_id) = &nic.pod_id {
                if let Some(pod) = self.pods.get_mut(pod_id) {
                    pod.spec.nic_ids.retain(|n| n != nic_id);
                    pod.meta.revision = index;
                    pod.meta.spec_revision = index;
                    changes.push(self.change(Kind::Pod, pod_id, "updated"));
                }
            }
            changes.push(State::removed(Kind::Nic, nic_id, &nic.meta.project));
        }
        self.counters.last_removal_revision = index;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn addresses_are_allocated_once_and_a_taken_mac_is_refused() {
        let mut s = state_after(&[network("n1", "net"), nic("c1", "a", "n1")]);
        let first = s.nics["c1"].spec.clone();
        assert_eq!(first.ipv4_address.as_deref(), Some("10.0.0.1"));
        let mut twin = nic("c2", "b", "n1");
        if let Command::CreateNic { nic } = &mut twin.command {
            nic.spec.mac_address = first.mac_address.clone();
        }
        assert_eq!(refused(&mut s, 3, &twin).code, ErrorCode::Conflict);
        let readdress = Spec::Nic(NicSpec {
            ipv4_address: Some("10.0.0.9".into()),
            ..first.clone()
        });
        let err = refused(&mut s, 4, &update("c1", readdress));
        assert_eq!(err.message, "ipv4_address cannot change");
        assert_eq!(s.nics["c1"].spec, first);
    }
}
