//! Routes: the NICs on the node's networks that are attached to VMs on other nodes, and the
//! node to send their traffic to.

use std::collections::BTreeSet;

use super::Desired;
use crate::proto;

pub(super) fn routes(cx: &mut Desired, network_ids: &BTreeSet<String>) -> Vec<proto::RouteSpec> {
    let state = cx.state;
    let mut routes = Vec::new();
    for nic in state.nics.values() {
        if !network_ids.contains(&nic.spec.network_id) {
            continue;
        }
        let Some(vm) = nic.vm_id.as_ref().and_then(|v| state.vms.get(v)) else {
            continue;
        };
        let Some(other) = vm.node_id.as_deref().filter(|n| *n != cx.node_id) else {
            continue;
        };
        // A VM migrating here has its NICs here already: no route to its node. (Its traffic
        // keeps going to the source until the switch moves the VM, and with it every route.)
        if super::vm::incoming(vm, cx.node_id).is_some() {
            continue;
        }
        let Some(other_node) = state.nodes.get(other) else {
            continue;
        };
        cx.bump(nic.meta.spec_revision);
        cx.bump(vm.meta.spec_revision);
        cx.bump(other_node.meta.spec_revision);
        let mut destinations = Vec::new();
        if let Some(a) = &nic.spec.ipv4_address {
            destinations.push(format!("{a}/32"));
        }
        if let Some(a) = &nic.spec.ipv6_address {
            destinations.push(format!("{a}/128"));
        }
        destinations.extend(nic.spec.routed_prefixes.iter().cloned());
        routes.push(proto::RouteSpec {
            id: nic.meta.id.clone(),
            trace_id: nic.meta.trace_id.clone().unwrap_or_default(),
            network_id: nic.spec.network_id.clone(),
            destinations,
            node_id: other_node.meta.id.clone(),
            node_address: other_node.status.address.clone(),
        });
    }
    routes
}
