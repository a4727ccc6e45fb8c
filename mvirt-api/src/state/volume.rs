//! Volumes: a disk on one node (pinned, or where its first VM is placed, or where its
//! template lives), with snapshots, rollbacks and growth. Attached volumes are not deleted.

use serde_json::json;

use super::{
    refuse_if_used, stamp, ApiError, Applied, ErrorCode, Removed, Resource, SpecChanged, State,
};
use crate::model::*;

impl Resource for Volume {
    type Spec = VolumeSpec;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_new(Kind::Volume, &new.meta)?;
        new.node_id = s.volume_home(new)?;
        if let Some(home) = s.restore_source(new)? {
            new.node_id = Some(home);
        }
        Ok(())
    }

    fn update_spec(s: &mut State, _: u64, id: &str, new: VolumeSpec) -> SpecChanged {
        let vol = &s.volumes[id];
        if new.template_id != vol.spec.template_id || new.node_id != vol.spec.node_id {
            return Err(ApiError::invalid(
                "a volume's template and node cannot change",
            ));
        }
        if new.backup_id != vol.spec.backup_id {
            return Err(ApiError::invalid(
                "a volume's backup_id cannot change (it names the backup the volume was restored from)",
            ));
        }
        if new.size_bytes < vol.spec.size_bytes {
            return Err(ApiError::invalid("volumes only grow"));
        }
        let changed = s.store_spec(id, new, |v: &mut Volume| &mut v.spec);
        Ok((changed, Vec::new()))
    }

    fn delete(s: &mut State, _: u64, id: &str, _: bool) -> Removed {
        let vm = s.volumes.get(id).and_then(|v| v.vm_id.as_ref());
        let holders = vm.map(|vm| format!("vm/{vm}")).into_iter().collect();
        refuse_if_used(holders, || {
            format!("volume {id} is attached to VM {}", vm.map_or("", |v| v))
        })?;
        s.volumes.remove(id);
        Ok(Vec::new())
    }
}

impl State {
    /// Grows a volume.
    pub(super) fn resize_volume(
        &mut self,
        index: u64,
        id: &str,
        size_bytes: u64,
        if_match: Option<u64>,
        now: &str,
    ) -> Applied {
        let vol = self.get_mut::<Volume>(id)?;
        super::check_if_match(if_match, vol.meta.revision)?;
        if size_bytes < vol.spec.size_bytes {
            return Err(ApiError::invalid(format!(
                "volumes only grow: {} < current size {}",
                size_bytes, vol.spec.size_bytes
            )));
        }
        vol.spec.size_bytes = size_bytes;
        stamp(&mut vol.meta, index, now, true);
        self.updated(Kind::Volume, id)
    }

    /// Adds a snapshot (pending until the volume's node reports it).
    pub(super) fn create_snapshot(
        &mut self,
        index: u64,
        volume_id: &str,
        snapshot: &VolumeSnapshot,
    ) -> Applied {
        let vol = self.get_mut::<Volume>(volume_id)?;
        if vol.snapshots.iter().any(|s| s.name == snapshot.name) {
            return Err(ApiError::exists(format!(
                "volume {volume_id} already has a snapshot named {:?}",
                snapshot.name
            )));
        }
        let mut snapshot = snapshot.clone();
        snapshot.status = SnapshotStatus::default();
        vol.snapshots.push(snapshot.clone());
        stamp(&mut vol.meta, index, &snapshot.created_at, true);
        let change = self.change(Kind::Volume, volume_id, "snapshot_created");
        Ok((Json::of(&snapshot), vec![change]))
    }

    /// Removes a snapshot, unless a pending rollback targets it.
    pub(super) fn delete_snapshot(
        &mut self,
        index: u64,
        volume_id: &str,
        snap: &str,
        now: &str,
    ) -> Applied {
        let snapshot_id = snap;
        let vol = self.get_mut::<Volume>(volume_id)?;
        let pending_target = vol.rollback.as_ref().filter(|r| {
            r.snapshot_id == snapshot_id
                && vol.status.rollback_generation.unwrap_or(0) < r.generation
        });
        if pending_target.is_some() {
            return Err(ApiError::conflict(format!(
                "snapshot {snapshot_id} is the target of a rollback the volume's node has not carried out yet"
            )));
        }
        let before = vol.snapshots.len();
        vol.snapshots.retain(|s| s.id != snapshot_id);
        if vol.snapshots.len() == before {
            return Err(snapshot_not_found(volume_id, snapshot_id));
        }
        stamp(&mut vol.meta, index, now, true);
        self.counters.last_removal_revision = index;
        let change = self.change(Kind::Volume, volume_id, "snapshot_deleted");
        Ok((Json::null(), vec![change]))
    }

    /// A volume's snapshot that its node holds (`ready`): only those can be rolled back to or
    /// promoted.
    pub(super) fn ready_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
    ) -> Result<&Volume, ApiError> {
        let vol = self.get::<Volume>(volume_id)?;
        let snap = vol
            .snapshots
            .iter()
            .find(|s| s.id == snapshot_id)
            .ok_or_else(|| snapshot_not_found(volume_id, snapshot_id))?;
        if snap.status.phase != Phase::Ready {
            return Err(ApiError::conflict(format!(
                "snapshot {} is {} on its node, not ready{}",
                snap.name,
                snap.status.phase,
                if snap.status.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", snap.status.message)
                }
            )));
        }
        Ok(vol)
    }

    /// Rolls a volume back to one of its snapshots: refused while a VM that uses the volume
    /// runs or is asked to; snapshots newer than the target go (as `zfs rollback -r` destroys
    /// them on the node).
    pub(super) fn rollback_snapshot(
        &mut self,
        index: u64,
        volume_id: &str,
        snapshot_id: &str,
        now: &str,
    ) -> Applied {
        let vol = self.ready_snapshot(volume_id, snapshot_id)?;
        if let Some(vm) = vol.vm_id.as_deref().and_then(|id| self.vms.get(id)) {
            let phase = vm.status.phase;
            let stopped = matches!(phase, Phase::Unknown | Phase::Stopped | Phase::Failed);
            if vm.spec.desired_state == DesiredState::Running || !stopped {
                return Err(ApiError::conflict(format!(
                    "volume {} is used by VM {} ({}, desired {}): stop the VM before a rollback",
                    vol.meta.name,
                    vm.meta.name,
                    if phase == Phase::Unknown {
                        Phase::Pending
                    } else {
                        phase
                    },
                    vm.spec.desired_state
                ))
                .with_details(json!({"vm_id": vm.meta.id})));
            }
        }
        let generation = vol.rollback.as_ref().map_or(0, |r| r.generation) + 1;
        let vol = self.get_mut::<Volume>(volume_id)?;
        if let Some(pos) = vol.snapshots.iter().position(|s| s.id == snapshot_id) {
            vol.snapshots.truncate(pos + 1);
        }
        vol.rollback = Some(VolumeRollback {
            snapshot_id: snapshot_id.to_string(),
            generation,
            requested_at: now.to_string(),
        });
        stamp(&mut vol.meta, index, now, true);
        self.counters.last_removal_revision = index;
        let change = self.change(Kind::Volume, volume_id, "rollback");
        Ok((
            self.object_json(Kind::Volume, volume_id)
                .unwrap_or_else(Json::null),
            vec![change],
        ))
    }

    /// Checks a new volume's references and returns the node it must live on: the node it is
    /// pinned to, or the one node a template promoted from a snapshot exists on.
    pub(super) fn volume_home(&self, volume: &Volume) -> Result<Option<String>, ApiError> {
        let mut home = None;
        if let Some(template_id) = &volume.spec.template_id {
            let template = self.get::<Template>(template_id)?;
            home = template.node_id.clone();
        }
        if let Some(node_id) = &volume.spec.node_id {
            if !self.nodes.contains_key(node_id) {
                return Err(ApiError::not_found(Kind::Node, node_id));
            }
            if let Some(h) = home.as_ref().filter(|h| *h != node_id) {
                return Err(ApiError::conflict(format!(
                    "the template exists only on node {h}; a volume cloned from it cannot be pinned to node {node_id}"
                )));
            }
            home = Some(node_id.clone());
        }
        Ok(home)
    }
}

fn snapshot_not_found(volume_id: &str, snapshot_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("snapshot {snapshot_id} not found on volume {volume_id}"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn volumes_only_grow_and_an_attached_volume_is_not_deleted() {
        let mut s = state_after(&[volume("v1", "data")]);
        let resize = |size_bytes| {
            p(Command::ResizeVolume {
                id: "v1".into(),
                size_bytes,
                if_match: None,
                now: "t1".into(),
            })
        };
        assert_eq!(
            s.apply(2, &resize(1)).0.result.unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        s.apply(3, &resize(2 << 30)).0.result.unwrap();
        assert_eq!(s.volumes["v1"].spec.size_bytes, 2 << 30);
        let mut pinned = volume("v2", "pinned");
        if let Command::CreateVolume { volume } = &mut pinned.command {
            volume.spec.node_id = Some("nowhere".into());
        }
        assert_eq!(
            s.apply(4, &pinned).0.result.unwrap_err().code,
            ErrorCode::NotFound
        );
        s.volumes.get_mut("v1").unwrap().vm_id = Some("vm".into());
        let err = refused(&mut s, 5, &delete(Kind::Volume, "v1"));
        assert_eq!(err.details["in_use_by"][0], "vm/vm");
    }
}
