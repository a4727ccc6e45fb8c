//! The NICs of the node's VMs and pods; they decide which networks and security groups the node needs.

use std::collections::BTreeSet;

use super::Desired;
use crate::proto;

/// The NICs attached to the node's VMs and what they need on the node.
pub(super) struct Attached {
    pub nics: Vec<proto::NicSpec>,
    pub network_ids: BTreeSet<String>,
    pub security_group_ids: BTreeSet<String>,
}

pub(super) fn nics(
    cx: &mut Desired,
    vm_ids: &BTreeSet<String>,
    pod_ids: &BTreeSet<String>,
) -> Attached {
    let state = cx.state;
    let mut attached = Attached {
        nics: Vec::new(),
        network_ids: BTreeSet::new(),
        security_group_ids: BTreeSet::new(),
    };
    for nic in state.nics.values() {
        let vm_id = nic.vm_id.as_ref().filter(|v| vm_ids.contains(*v));
        let pod_id = nic.pod_id.as_ref().filter(|p| pod_ids.contains(*p));
        if vm_id.is_none() && pod_id.is_none() {
            continue;
        }
        cx.bump(nic.meta.spec_revision);
        attached.network_ids.insert(nic.spec.network_id.clone());
        attached
            .security_group_ids
            .extend(nic.spec.security_group_ids.iter().cloned());
        attached.nics.push(proto::NicSpec {
            id: nic.meta.id.clone(),
            trace_id: nic.meta.trace_id.clone().unwrap_or_default(),
            name: nic.meta.name.clone(),
            network_id: nic.spec.network_id.clone(),
            mac_address: nic.spec.mac_address.clone().unwrap_or_default(),
            ipv4_address: nic.spec.ipv4_address.clone().unwrap_or_default(),
            ipv6_address: nic.spec.ipv6_address.clone().unwrap_or_default(),
            security_group_ids: nic.spec.security_group_ids.clone(),
            owner_vm_id: nic.owner_vm_id.clone().unwrap_or_default(),
            vm_id: vm_id.cloned().unwrap_or_default(),
            routed_prefixes: nic.spec.routed_prefixes.clone(),
            owner_pod_id: nic.owner_pod_id.clone().unwrap_or_default(),
            pod_id: pod_id.cloned().unwrap_or_default(),
        });
    }
    attached
}
