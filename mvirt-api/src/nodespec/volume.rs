//! The volumes that live on the node, with their snapshots and pending rollback.

use super::Desired;
use crate::model::Volume;
use crate::proto;

pub(super) fn volumes(cx: &mut Desired) -> Vec<proto::VolumeSpec> {
    let (state, node_id) = (cx.state, cx.node_id);
    let mut volumes = Vec::new();
    for vol in state
        .volumes
        .values()
        .filter(|v| v.node_id.as_deref() == Some(node_id))
    {
        cx.bump(vol.meta.spec_revision);
        volumes.push(volume_spec(vol));
    }
    // The volumes of a VM migrating here: made like the source's (same size, cloned from the
    // same template, so a root volume has its kernel here too); the migration stream then
    // overwrites every block. Snapshots, rollbacks and restores stay with the source's copy.
    for vm in state.vms.values() {
        if super::vm::incoming(vm, node_id).is_none() {
            continue;
        }
        for vol in vm
            .spec
            .volume_ids
            .iter()
            .filter_map(|v| state.volumes.get(v))
        {
            cx.bump(vol.meta.spec_revision);
            let mut spec = volume_spec(vol);
            spec.snapshots.clear();
            spec.rollback_snapshot_id.clear();
            spec.rollback_generation = 0;
            spec.restore_backup_id.clear();
            spec.promote_replica = false;
            volumes.push(spec);
        }
    }
    volumes
}

fn volume_spec(vol: &Volume) -> proto::VolumeSpec {
    proto::VolumeSpec {
        id: vol.meta.id.clone(),
        trace_id: vol.meta.trace_id.clone().unwrap_or_default(),
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
        restore_backup_id: vol.spec.backup_id.clone().unwrap_or_default(),
        promote_replica: vol.promote_replica,
    }
}
