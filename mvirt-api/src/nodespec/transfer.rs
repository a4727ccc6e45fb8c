//! Node-to-node transfer grants (`NodeSpec.transfers`): what one node may push to another
//! through `NodePeer` (mvirt-node's peer channel). A grant goes into the specs of both its
//! nodes: the source learns where to push, the target what to accept.
//!
//! A kind of work that moves data between nodes (live migration, replication) adds its grants
//! here, derived from its state, so a grant exists exactly as long as that work does.
//!
//! Live migration: one grant per active migration (`state/migration.rs`), id = the
//! migration's id, `vm_id` = the VM (a relay of its migration stream and the final
//! `CompleteMigration`), no volumes (disks travel in the hypervisor's stream). A cold move
//! (`state/cold_move.rs`): the VM's volumes, no `vm_id`.

use super::Desired;
use crate::proto;

/// The grants naming the node as source or target.
pub(super) fn grants(cx: &mut Desired) -> Vec<proto::TransferGrant> {
    let mut all = Vec::new();
    migrations(cx, &mut all);
    super::replication::grants(cx, &mut all);
    all
}

/// The grants of the live migrations from or to the node.
fn migrations(cx: &mut Desired, out: &mut Vec<proto::TransferGrant>) {
    let (state, node_id) = (cx.state, cx.node_id);
    for vm in state.vms.values() {
        let Some(m) = vm.migration.as_ref().filter(|m| m.phase.is_active()) else {
            continue;
        };
        if m.source_node_id != node_id && m.target_node_id != node_id {
            continue;
        }
        let Some(target) = state.nodes.get(&m.target_node_id) else {
            continue;
        };
        cx.bump(vm.meta.spec_revision);
        cx.bump(target.meta.spec_revision);
        // A cold move pushes the volumes (replication path), no hypervisor stream.
        let (volume_ids, vm_id, purpose) = if m.cold {
            (vm.spec.volume_ids.clone(), String::new(), "cold move")
        } else {
            (Vec::new(), vm.meta.id.clone(), "migration")
        };
        out.push(proto::TransferGrant {
            id: m.id.clone(),
            source_node_id: m.source_node_id.clone(),
            target_node_id: m.target_node_id.clone(),
            target_endpoint: target.status.console_endpoint.clone(),
            volume_ids,
            vm_id,
            token: m.grant_token.clone(),
            purpose: format!("{purpose} {}", m.id),
        });
    }
}
