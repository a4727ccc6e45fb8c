//! The security groups of the node's NICs, the groups their rules name, and for each rule with
//! a remote group the addresses of that group's members on other nodes.

use std::collections::BTreeSet;

use super::Desired;
use crate::model::{Direction, Protocol, SecurityGroupRule};
use crate::proto;

pub(super) fn security_groups(
    cx: &mut Desired,
    mut ids: BTreeSet<String>,
) -> Vec<proto::SecurityGroupSpec> {
    let state = cx.state;
    // Groups named by the rules of those groups come along (mvirt-ebpf needs a rule's remote
    // group to exist locally, even when none of its members lives here).
    let mut queue: Vec<String> = ids.iter().cloned().collect();
    while let Some(id) = queue.pop() {
        let Some(g) = state.security_groups.get(&id) else {
            continue;
        };
        for remote in g
            .spec
            .rules
            .iter()
            .filter_map(|r| r.remote_group_id.as_ref())
        {
            if ids.insert(remote.clone()) {
                queue.push(remote.clone());
            }
        }
    }
    let mut groups = Vec::new();
    for g in ids.iter().filter_map(|id| state.security_groups.get(id)) {
        cx.bump(g.meta.spec_revision);
        let rules = g.spec.rules.iter().map(|r| rule_spec(cx, r)).collect();
        groups.push(proto::SecurityGroupSpec {
            id: g.meta.id.clone(),
            trace_id: g.meta.trace_id.clone().unwrap_or_default(),
            name: g.meta.name.clone(),
            project_id: cx.project_id(&g.meta.project),
            rules,
        });
    }
    groups
}

fn rule_spec(cx: &mut Desired, r: &SecurityGroupRule) -> proto::SecurityGroupRuleSpec {
    proto::SecurityGroupRuleSpec {
        id: r.id.clone().unwrap_or_default(),
        direction: match r.direction {
            Direction::Ingress => proto::Direction::Ingress,
            Direction::Egress => proto::Direction::Egress,
        } as i32,
        protocol: match r.protocol {
            Protocol::Any => proto::Protocol::Any,
            Protocol::Tcp => proto::Protocol::Tcp,
            Protocol::Udp => proto::Protocol::Udp,
            Protocol::Icmp => proto::Protocol::Icmp,
            Protocol::Icmpv6 => proto::Protocol::Icmpv6,
        } as i32,
        port_min: r.port_min.into(),
        port_max: r.port_max.into(),
        cidr: r.cidr.clone().unwrap_or_default(),
        remote_group_id: r.remote_group_id.clone().unwrap_or_default(),
        remote_addresses: r
            .remote_group_id
            .as_deref()
            .map(|g| remote_members(cx, g))
            .unwrap_or_default(),
    }
}

/// The host addresses (no prefix length, as mvirt-ebpf returns them) of `group`'s member NICs
/// that are attached to VMs placed on other nodes (sorted, so the set is stable), bumping the
/// revision with everything they depend on.
fn remote_members(cx: &mut Desired, group: &str) -> Vec<String> {
    let state = cx.state;
    let mut addresses = BTreeSet::new();
    for nic in state
        .nics
        .values()
        .filter(|n| n.spec.security_group_ids.iter().any(|g| g == group))
    {
        let Some(vm) = nic.vm_id.as_ref().and_then(|v| state.vms.get(v)) else {
            continue;
        };
        if vm.node_id.as_deref().is_none_or(|n| n == cx.node_id) {
            continue;
        }
        cx.bump(nic.meta.spec_revision);
        cx.bump(vm.meta.spec_revision);
        addresses.extend(nic.spec.ipv4_address.iter().cloned());
        addresses.extend(nic.spec.ipv6_address.iter().cloned());
    }
    addresses.into_iter().collect()
}
