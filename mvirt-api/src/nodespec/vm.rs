//! The VMs placed on the node, and those migrating to it (`incoming_migration_id`).

use std::collections::BTreeSet;

use super::Desired;
use crate::model::{BootMode, DesiredState, Migration, StopMode, Vm};
use crate::proto;

/// The node's VMs, and their ids.
pub(super) fn vms(cx: &mut Desired) -> (Vec<proto::VmSpec>, BTreeSet<String>) {
    let (state, node_id) = (cx.state, cx.node_id);
    let mut ids = BTreeSet::new();
    let mut vms = Vec::new();
    for vm in state
        .vms
        .values()
        .filter(|v| v.node_id.as_deref() == Some(node_id) || incoming(v, node_id).is_some())
    {
        cx.bump(vm.meta.spec_revision);
        ids.insert(vm.meta.id.clone());
        let mut spec = vm_spec(cx, vm);
        if let Some(migration) = incoming(vm, node_id) {
            spec.incoming_migration_id = migration.id.clone();
        }
        vms.push(spec);
    }
    (vms, ids)
}

/// The active live migration that brings `vm` to `node_id`, if any: the target's spec carries
/// the VM (and its NICs and volumes) for as long as it runs. Not a cold move: its target gets
/// the volumes as replicas and the VM only at the switch (`state/cold_move.rs`).
pub(super) fn incoming<'v>(vm: &'v Vm, node_id: &str) -> Option<&'v Migration> {
    vm.migration
        .as_ref()
        .filter(|m| m.phase.is_active() && !m.cold && m.target_node_id == node_id)
}

fn vm_spec(cx: &Desired, vm: &Vm) -> proto::VmSpec {
    proto::VmSpec {
        id: vm.meta.id.clone(),
        trace_id: vm.meta.trace_id.clone().unwrap_or_default(),
        name: vm.meta.name.clone(),
        project_id: cx.project_id(&vm.meta.project),
        hostname: vm
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| vm.meta.name.clone()),
        vcpus: vm.spec.vcpus,
        memory_bytes: vm.spec.memory_bytes,
        boot_mode: match vm.spec.boot_mode {
            Some(BootMode::Uefi) => proto::BootMode::Uefi as i32,
            Some(BootMode::DirectKernel) => proto::BootMode::DirectKernel as i32,
            None => proto::BootMode::Unspecified as i32,
        },
        volume_ids: vm.spec.volume_ids.clone(),
        nic_ids: vm.spec.nic_ids.clone(),
        user_data: vm.spec.user_data.clone().unwrap_or_default(),
        ssh_authorized_keys: vm.spec.ssh_authorized_keys.clone(),
        desired_state: match vm.spec.desired_state {
            DesiredState::Stopped => proto::DesiredState::Stopped as i32,
            DesiredState::Running => proto::DesiredState::Running as i32,
        },
        stop_mode: match vm.stop_mode {
            StopMode::Force => proto::StopMode::Force as i32,
            StopMode::Graceful => proto::StopMode::Graceful as i32,
        },
        restart_generation: vm.restart_generation,
        hugepages: vm.spec.hugepages,
        nested_virtualization: vm.spec.nested_virtualization,
        kernel_cmdline: vm.spec.kernel_cmdline.clone().unwrap_or_default(),
        incoming_migration_id: String::new(),
        ha: vm.spec.ha,
    }
}
