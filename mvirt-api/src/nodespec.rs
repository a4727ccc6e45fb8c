//! The full desired set of one node (what `WatchSpecs` streams), computed from the state.
//!
//! Its revision is the greatest `spec_revision` of everything that went into it, or the last
//! revision at which anything was removed from some node's set, whichever is greater. So the
//! revision moves forward exactly when the set may have changed, and a watcher that resumes from
//! the last revision it saw misses nothing.

use std::collections::BTreeSet;

use crate::model::Node;
use crate::proto;
use crate::state::State;

/// Computes the desired set for `node_id` and its revision.
pub fn desired_for(state: &State, node_id: &str) -> proto::NodeSpec {
    let mut revision = state.counters.last_removal_revision;
    let mut bump = |r: u64| revision = revision.max(r);
    if let Some(node) = state.nodes.get(node_id) {
        bump(node.meta.spec_revision);
    }

    let mut vms = Vec::new();
    let mut vm_ids = BTreeSet::new();
    for vm in state
        .vms
        .values()
        .filter(|v| v.node_id.as_deref() == Some(node_id))
    {
        bump(vm.meta.spec_revision);
        vm_ids.insert(vm.meta.id.clone());
        vms.push(proto::VmSpec {
            id: vm.meta.id.clone(),
            name: vm.meta.name.clone(),
            project_id: project_id(state, &vm.meta.project),
            hostname: vm
                .spec
                .hostname
                .clone()
                .unwrap_or_else(|| vm.meta.name.clone()),
            vcpus: vm.spec.vcpus,
            memory_bytes: vm.spec.memory_bytes,
            boot_mode: match vm.spec.boot_mode.as_deref() {
                Some("uefi") => proto::BootMode::Uefi as i32,
                Some("direct_kernel") => proto::BootMode::DirectKernel as i32,
                _ => proto::BootMode::Unspecified as i32,
            },
            volume_ids: vm.spec.volume_ids.clone(),
            nic_ids: vm.spec.nic_ids.clone(),
            user_data: vm.spec.user_data.clone().unwrap_or_default(),
            ssh_authorized_keys: vm.spec.ssh_authorized_keys.clone(),
            desired_state: if vm.spec.desired_state == "stopped" {
                proto::DesiredState::Stopped as i32
            } else {
                proto::DesiredState::Running as i32
            },
            stop_mode: if vm.stop_mode == "force" {
                proto::StopMode::Force as i32
            } else {
                proto::StopMode::Graceful as i32
            },
            restart_generation: vm.restart_generation,
            hugepages: vm.spec.hugepages,
            nested_virtualization: vm.spec.nested_virtualization,
            kernel_cmdline: vm.spec.kernel_cmdline.clone().unwrap_or_default(),
        });
    }

    let mut volumes = Vec::new();
    let mut template_ids = BTreeSet::new();
    for vol in state
        .volumes
        .values()
        .filter(|v| v.node_id.as_deref() == Some(node_id))
    {
        bump(vol.meta.spec_revision);
        if let Some(t) = &vol.spec.template_id {
            template_ids.insert(t.clone());
        }
        volumes.push(proto::VolumeSpec {
            id: vol.meta.id.clone(),
            name: vol.meta.name.clone(),
            size_bytes: vol.spec.size_bytes,
            template_id: vol.spec.template_id.clone().unwrap_or_default(),
            owner_vm_id: vol.owner_vm_id.clone().unwrap_or_default(),
            snapshots: vol
                .snapshots
                .iter()
                .map(|s| proto::VolumeSnapshotSpec {
                    id: s.id.clone(),
                    name: s.name.clone(),
                })
                .collect(),
            rollback_snapshot_id: vol
                .rollback
                .as_ref()
                .map(|r| r.snapshot_id.clone())
                .unwrap_or_default(),
            rollback_generation: vol.rollback.as_ref().map_or(0, |r| r.generation),
        });
    }

    let mut nics = Vec::new();
    let mut network_ids = BTreeSet::new();
    let mut sg_ids = BTreeSet::new();
    for nic in state.nics.values() {
        let Some(vm_id) = &nic.vm_id else { continue };
        if !vm_ids.contains(vm_id) {
            continue;
        }
        bump(nic.meta.spec_revision);
        network_ids.insert(nic.spec.network_id.clone());
        sg_ids.extend(nic.spec.security_group_ids.iter().cloned());
        nics.push(proto::NicSpec {
            id: nic.meta.id.clone(),
            name: nic.meta.name.clone(),
            network_id: nic.spec.network_id.clone(),
            mac_address: nic.spec.mac_address.clone().unwrap_or_default(),
            ipv4_address: nic.spec.ipv4_address.clone().unwrap_or_default(),
            ipv6_address: nic.spec.ipv6_address.clone().unwrap_or_default(),
            security_group_ids: nic.spec.security_group_ids.clone(),
            owner_vm_id: nic.owner_vm_id.clone().unwrap_or_default(),
            vm_id: vm_id.clone(),
            routed_prefixes: nic.spec.routed_prefixes.clone(),
        });
    }

    let networks = network_ids
        .iter()
        .filter_map(|id| state.networks.get(id))
        .map(|n| {
            bump(n.meta.spec_revision);
            proto::NetworkSpec {
                id: n.meta.id.clone(),
                name: n.meta.name.clone(),
                project_id: project_id(state, &n.meta.project),
                ipv4_prefix: n.spec.ipv4_prefix.clone().unwrap_or_default(),
                ipv6_prefix: n.spec.ipv6_prefix.clone().unwrap_or_default(),
                dns_servers: n.spec.dns_servers.clone(),
                ntp_servers: n.spec.ntp_servers.clone(),
                is_public: n.spec.is_public,
                tunnel_key: n.spec.tunnel_key.unwrap_or(0),
            }
        })
        .collect();

    // Groups named by the rules of those groups come along (mvirt-ebpf needs a rule's remote
    // group to exist locally, even when none of its members lives here).
    let mut queue: Vec<String> = sg_ids.iter().cloned().collect();
    while let Some(id) = queue.pop() {
        let Some(g) = state.security_groups.get(&id) else {
            continue;
        };
        for r in &g.spec.rules {
            if let Some(remote) = &r.remote_group_id {
                if sg_ids.insert(remote.clone()) {
                    queue.push(remote.clone());
                }
            }
        }
    }
    let security_groups = sg_ids
        .iter()
        .filter_map(|id| state.security_groups.get(id))
        .map(|g| {
            bump(g.meta.spec_revision);
            proto::SecurityGroupSpec {
                id: g.meta.id.clone(),
                name: g.meta.name.clone(),
                project_id: project_id(state, &g.meta.project),
                rules: g
                    .spec
                    .rules
                    .iter()
                    .map(|r| proto::SecurityGroupRuleSpec {
                        id: r.id.clone().unwrap_or_default(),
                        direction: if r.direction == "egress" {
                            proto::Direction::Egress as i32
                        } else {
                            proto::Direction::Ingress as i32
                        },
                        protocol: match r.protocol.as_str() {
                            "tcp" => proto::Protocol::Tcp,
                            "udp" => proto::Protocol::Udp,
                            "icmp" => proto::Protocol::Icmp,
                            "icmpv6" => proto::Protocol::Icmpv6,
                            _ => proto::Protocol::Any,
                        } as i32,
                        port_min: r.port_min.into(),
                        port_max: r.port_max.into(),
                        cidr: r.cidr.clone().unwrap_or_default(),
                        remote_group_id: r.remote_group_id.clone().unwrap_or_default(),
                        remote_addresses: r
                            .remote_group_id
                            .as_deref()
                            .map(|g| remote_members(state, node_id, g, &mut bump))
                            .unwrap_or_default(),
                    })
                    .collect(),
            }
        })
        .collect();

    // Templates are imported on every node, so a clone anywhere is O(1); a template promoted
    // from a snapshot exists only on its volume's node.
    let templates = state
        .templates
        .values()
        .filter(|t| t.node_id.as_deref().is_none_or(|n| n == node_id))
        .map(|t| {
            bump(t.meta.spec_revision);
            template_ids.remove(&t.meta.id);
            proto::TemplateSpec {
                id: t.meta.id.clone(),
                name: t.meta.name.clone(),
                source_url: t.spec.source_url.clone(),
                format: if t.spec.format == "qcow2" {
                    proto::ImageFormat::Qcow2 as i32
                } else {
                    proto::ImageFormat::Raw as i32
                },
                sha256: t.spec.sha256.clone().unwrap_or_default(),
                kernel_url: t.spec.kernel_url.clone().unwrap_or_default(),
                initramfs_url: t.spec.initramfs_url.clone().unwrap_or_default(),
                kernel_sha256: t.spec.kernel_sha256.clone().unwrap_or_default(),
                initramfs_sha256: t.spec.initramfs_sha256.clone().unwrap_or_default(),
                cmdline: t.spec.cmdline.clone().unwrap_or_default(),
                import_cancelled: t.import_cancelled,
                source_volume_id: t
                    .spec
                    .source_snapshot
                    .as_ref()
                    .map(|s| s.volume_id.clone())
                    .unwrap_or_default(),
                source_snapshot_id: t
                    .spec
                    .source_snapshot
                    .as_ref()
                    .map(|s| s.snapshot_id.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();

    // Routes: NICs of the same networks attached to VMs on other nodes.
    let mut routes = Vec::new();
    for nic in state.nics.values() {
        if !network_ids.contains(&nic.spec.network_id) {
            continue;
        }
        let Some(vm) = nic.vm_id.as_ref().and_then(|v| state.vms.get(v)) else {
            continue;
        };
        let Some(other) = vm.node_id.as_deref() else {
            continue;
        };
        if other == node_id {
            continue;
        }
        let Some(other_node) = state.nodes.get(other) else {
            continue;
        };
        bump(nic.meta.spec_revision);
        bump(vm.meta.spec_revision);
        bump(other_node.meta.spec_revision);
        let mut destinations = Vec::new();
        if let Some(a) = &nic.spec.ipv4_address {
            destinations.push(format!("{a}/32"));
        }
        if let Some(a) = &nic.spec.ipv6_address {
            destinations.push(format!("{a}/128"));
        }
        destinations.extend(nic.spec.routed_prefixes.iter().cloned());
        routes.push(route(
            nic.meta.id.clone(),
            nic.spec.network_id.clone(),
            destinations,
            other_node,
        ));
    }

    proto::NodeSpec {
        node_id: node_id.to_string(),
        revision,
        networks,
        security_groups,
        templates,
        volumes,
        nics,
        routes,
        vms,
    }
}

fn route(
    id: String,
    network_id: String,
    destinations: Vec<String>,
    node: &Node,
) -> proto::RouteSpec {
    proto::RouteSpec {
        id,
        network_id,
        destinations,
        node_id: node.meta.id.clone(),
        node_address: node.status.address.clone(),
    }
}

/// The host addresses (no prefix length, as mvirt-ebpf returns them) of `group`'s member NICs that are attached to VMs placed on nodes other than
/// `node_id` (sorted, so the set is stable), bumping the revision with everything they depend on.
fn remote_members(
    state: &State,
    node_id: &str,
    group: &str,
    bump: &mut impl FnMut(u64),
) -> Vec<String> {
    let mut addresses = BTreeSet::new();
    for nic in state
        .nics
        .values()
        .filter(|n| n.spec.security_group_ids.iter().any(|g| g == group))
    {
        let Some(vm) = nic.vm_id.as_ref().and_then(|v| state.vms.get(v)) else {
            continue;
        };
        match vm.node_id.as_deref() {
            Some(other) if other != node_id => {}
            _ => continue,
        }
        bump(nic.meta.spec_revision);
        bump(vm.meta.spec_revision);
        addresses.extend(nic.spec.ipv4_address.iter().cloned());
        addresses.extend(nic.spec.ipv6_address.iter().cloned());
    }
    addresses.into_iter().collect()
}

fn project_id(state: &State, name: &str) -> String {
    state
        .project_by_name(name)
        .map(|p| p.meta.id.clone())
        .unwrap_or_default()
}
