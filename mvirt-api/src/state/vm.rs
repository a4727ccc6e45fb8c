//! VMs: what they ask for (vCPUs, memory, volumes, NICs, desired state), their owned root
//! volume and NICs (created and deleted with them), actions, and placement by the scheduler.

use std::collections::BTreeSet;

use serde_json::json;

use super::{
    name_exists, stamp, stamp_new, ApiError, Applied, Change, Placement, Removed, Resource,
    SpecChanged, State,
};
use crate::model::*;

impl Resource for Vm {
    type Spec = VmSpec;

    fn update_spec(s: &mut State, at: u64, id: &str, new: VmSpec) -> SpecChanged {
        Ok((true, s.update_vm_spec(at, id, new)?))
    }

    /// Its owned volumes and NICs go with it; attached ones are detached.
    fn delete(s: &mut State, at: u64, id: &str, _: bool) -> Removed {
        Ok(s.remove_vm(at, id))
    }
}

impl State {
    /// Creates a VM with the volumes and NICs it owns, attaching the existing ones it names.
    pub(super) fn create_vm(
        &mut self,
        index: u64,
        vm: &Vm,
        owned_volumes: &[Volume],
        owned_nics: &[Nic],
    ) -> Applied {
        if self.vms.contains_key(&vm.meta.id) {
            return self.same_or_exists(Kind::Vm, &vm.meta.id);
        }
        self.check_new(Kind::Vm, &vm.meta)?;
        // Owned volumes and NICs: validate and allocate before touching anything.
        let mut volumes = Vec::new();
        for vol in owned_volumes {
            self.check_new(Kind::Volume, &vol.meta)?;
            if volumes
                .iter()
                .any(|v: &Volume| v.meta.name == vol.meta.name)
            {
                return Err(name_exists(Kind::Volume, &vol.meta.name));
            }
            let mut vol = vol.clone();
            vol.node_id = self.volume_home(&vol)?;
            volumes.push(vol);
        }
        let mut nics = Vec::new();
        let mut macs = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for nic in owned_nics {
            self.check_new(Kind::Nic, &nic.meta)?;
            if nics.iter().any(|n: &Nic| n.meta.name == nic.meta.name) {
                return Err(name_exists(Kind::Nic, &nic.meta.name));
            }
            let mut nic = nic.clone();
            self.allocate_nic(&mut nic, &macs, &ips)?;
            macs.extend(nic.spec.mac_address.clone());
            for addr in [&nic.spec.ipv4_address, &nic.spec.ipv6_address]
                .into_iter()
                .flatten()
            {
                if let Ok(ip) = addr.parse() {
                    ips.insert(ip);
                }
            }
            nics.push(nic);
        }
        let owned_nic_ids: BTreeSet<&str> = nics.iter().map(|n| n.meta.id.as_str()).collect();
        let mut pinned_node: Option<String> = None;
        for vid in &vm.spec.volume_ids {
            let vol = match volumes.iter().find(|v| &v.meta.id == vid) {
                Some(owned) => owned,
                None => {
                    let vol = self.get::<Volume>(vid)?;
                    self.check_attachable_volume(vol, &vm.meta)?;
                    vol
                }
            };
            if let Some(node) = &vol.node_id {
                if pinned_node.as_ref().is_some_and(|p| p != node) {
                    return Err(ApiError::conflict(
                        "the VM's volumes live on different nodes",
                    ));
                }
                pinned_node = Some(node.clone());
            }
        }
        for nid in &vm.spec.nic_ids {
            if owned_nic_ids.contains(nid.as_str()) {
                continue;
            }
            let nic = self.get::<Nic>(nid)?;
            self.check_attachable_nic(nic, &vm.meta)?;
        }
        // Mutate.
        let mut changes = Vec::new();
        for mut vol in volumes {
            vol.vm_id = Some(vm.meta.id.clone());
            stamp_new(&mut vol.meta, index);
            let id = vol.meta.id.clone();
            self.volumes.insert(id.clone(), vol);
            changes.push(self.change(Kind::Volume, &id, "created"));
        }
        for mut nic in nics {
            nic.vm_id = Some(vm.meta.id.clone());
            stamp_new(&mut nic.meta, index);
            let id = nic.meta.id.clone();
            self.nics.insert(id.clone(), nic);
            changes.push(self.change(Kind::Nic, &id, "created"));
        }
        for vid in &vm.spec.volume_ids {
            if let Some(vol) = self.volumes.get_mut(vid) {
                if vol.vm_id.is_none() {
                    vol.vm_id = Some(vm.meta.id.clone());
                    vol.meta.revision = index;
                    changes.push(self.change(Kind::Volume, vid, "attached"));
                }
            }
        }
        for nid in &vm.spec.nic_ids {
            if let Some(nic) = self.nics.get_mut(nid) {
                if nic.vm_id.is_none() {
                    nic.vm_id = Some(vm.meta.id.clone());
                    nic.meta.revision = index;
                    changes.push(self.change(Kind::Nic, nid, "attached"));
                }
            }
        }
        let mut vm = vm.clone();
        stamp_new(&mut vm.meta, index);
        vm.node_id = None;
        vm.scheduling = Scheduling {
            state: SchedulingState::Pending,
            reason: "waiting for the scheduler".into(),
        };
        let id = vm.meta.id.clone();
        self.vms.insert(id.clone(), vm);
        let change = self.change(Kind::Vm, &id, "created");
        let value = change.object.clone().unwrap_or_else(Json::null);
        changes.push(change);
        Ok((value, changes))
    }

    fn update_vm_spec(
        &mut self,
        index: u64,
        id: &str,
        mut new: VmSpec,
    ) -> Result<Vec<Change>, ApiError> {
        let vm = self.vms[id].clone();
        let asks_owned = new.root_volume.is_some() || !new.network_interfaces.is_empty();
        let changed_owned = new.root_volume != vm.spec.root_volume
            || new.network_interfaces != vm.spec.network_interfaces;
        if asks_owned && changed_owned {
            return Err(ApiError::invalid(
                "root_volume and network_interfaces are create-only; attach existing volumes and NICs with volume_ids and nic_ids",
            ));
        }
        new.root_volume = vm.spec.root_volume.clone();
        new.network_interfaces = vm.spec.network_interfaces.clone();
        if new.hugepages != vm.spec.hugepages
            || new.nested_virtualization != vm.spec.nested_virtualization
        {
            return Err(ApiError::invalid(
                "hugepages and nested_virtualization are fixed after create",
            ));
        }
        let placed = vm.node_id.is_some();
        if placed && (new.vcpus != vm.spec.vcpus || new.memory_bytes != vm.spec.memory_bytes) {
            // Resizing a placed VM would need a capacity re-check on its node.
            let node = vm.node_id.clone().unwrap_or_default();
            let mut alloc = self.allocated_on(&node);
            alloc.vcpus = alloc.vcpus - vm.spec.vcpus + new.vcpus;
            alloc.memory_bytes = alloc.memory_bytes - vm.spec.memory_bytes + new.memory_bytes;
            if let Some(n) = self.nodes.get(&node) {
                if alloc.vcpus > n.status.capacity.vcpus
                    || alloc.memory_bytes > n.status.capacity.memory_bytes
                {
                    return Err(ApiError::conflict(format!(
                        "node {node} has no capacity for the new size"
                    )));
                }
            }
        }
        let old_vols: BTreeSet<&String> = vm.spec.volume_ids.iter().collect();
        let new_vols: BTreeSet<&String> = new.volume_ids.iter().collect();
        let old_nics: BTreeSet<&String> = vm.spec.nic_ids.iter().collect();
        let new_nics: BTreeSet<&String> = new.nic_ids.iter().collect();
        for vid in new_vols.difference(&old_vols) {
            let vol = self.get::<Volume>(vid)?;
            self.check_attachable_volume(vol, &vm.meta)?;
            if let (Some(vn), Some(n)) = (&vol.node_id, &vm.node_id) {
                if vn != n {
                    return Err(ApiError::conflict(format!(
                        "volume {vid} lives on node {vn}, the VM runs on {n}"
                    )));
                }
            }
        }
        for vid in old_vols.difference(&new_vols) {
            if self.volumes.get(*vid).and_then(|v| v.owner_vm_id.as_ref()) == Some(&vm.meta.id) {
                return Err(ApiError::conflict(format!(
                    "volume {vid} belongs to the VM and cannot be detached"
                )));
            }
        }
        for nid in new_nics.difference(&old_nics) {
            let nic = self.get::<Nic>(nid)?;
            self.check_attachable_nic(nic, &vm.meta)?;
        }
        for nid in old_nics.difference(&new_nics) {
            if self.nics.get(*nid).and_then(|n| n.owner_vm_id.as_ref()) == Some(&vm.meta.id) {
                return Err(ApiError::conflict(format!(
                    "NIC {nid} belongs to the VM and cannot be detached"
                )));
            }
        }
        let mut changes = Vec::new();
        for vid in new_vols.difference(&old_vols) {
            if let Some(vol) = self.volumes.get_mut(*vid) {
                vol.vm_id = Some(vm.meta.id.clone());
                if vol.node_id.is_none() {
                    vol.node_id = vm.node_id.clone();
                }
                vol.meta.revision = index;
                vol.meta.spec_revision = index;
            }
            changes.push(self.change(Kind::Volume, vid, "attached"));
        }
        for vid in old_vols.difference(&new_vols) {
            if let Some(vol) = self.volumes.get_mut(*vid) {
                vol.vm_id = None;
                vol.meta.revision = index;
                vol.meta.spec_revision = index;
            }
            changes.push(self.change(Kind::Volume, vid, "detached"));
        }
        for nid in new_nics.difference(&old_nics) {
            if let Some(nic) = self.nics.get_mut(*nid) {
                nic.vm_id = Some(vm.meta.id.clone());
                nic.meta.revision = index;
                nic.meta.spec_revision = index;
            }
            changes.push(self.change(Kind::Nic, nid, "attached"));
        }
        for nid in old_nics.difference(&new_nics) {
            if let Some(nic) = self.nics.get_mut(*nid) {
                nic.vm_id = None;
                nic.meta.revision = index;
                nic.meta.spec_revision = index;
            }
            changes.push(self.change(Kind::Nic, nid, "detached"));
            self.counters.last_removal_revision = index;
        }
        if !old_vols.is_subset(&new_vols) {
            self.counters.last_removal_revision = index;
        }
        if let Some(v) = self.vms.get_mut(id) {
            v.spec = new;
        }
        Ok(changes)
    }

    /// Removes a VM's owned volumes and NICs and detaches the attached ones; then the VM.
    fn remove_vm(&mut self, index: u64, vm_id: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(vm) = self.vms.remove(vm_id) else {
            return changes;
        };
        for vid in &vm.spec.volume_ids {
            let owned = self
                .volumes
                .get(vid)
                .and_then(|v| v.owner_vm_id.clone())
                .as_deref()
                == Some(vm_id);
            if owned {
                if let Some(vol) = self.volumes.remove(vid) {
                    changes.push(State::removed(Kind::Volume, vid, &vol.meta.project));
                }
            } else if let Some(vol) = self.volumes.get_mut(vid) {
                vol.vm_id = None;
                vol.meta.revision = index;
                vol.meta.spec_revision = index;
                changes.push(self.change(Kind::Volume, vid, "detached"));
            }
        }
        for nid in &vm.spec.nic_ids {
            let owned = self
                .nics
                .get(nid)
                .and_then(|n| n.owner_vm_id.clone())
                .as_deref()
                == Some(vm_id);
            if owned {
                if let Some(nic) = self.nics.remove(nid) {
                    changes.push(State::removed(Kind::Nic, nid, &nic.meta.project));
                }
            } else if let Some(nic) = self.nics.get_mut(nid) {
                nic.vm_id = None;
                nic.meta.revision = index;
                nic.meta.spec_revision = index;
                changes.push(self.change(Kind::Nic, nid, "detached"));
            }
        }
        changes
    }

    /// Start, stop, kill or restart: changes what the VM's node is asked for.
    pub(super) fn vm_action(
        &mut self,
        index: u64,
        id: &str,
        action: VmAction,
        now: &str,
    ) -> Applied {
        let vm = self.get_mut::<Vm>(id)?;
        match action {
            VmAction::Start => vm.spec.desired_state = DesiredState::Running,
            VmAction::Stop => {
                vm.spec.desired_state = DesiredState::Stopped;
                vm.stop_mode = StopMode::Graceful;
            }
            VmAction::Kill => {
                vm.spec.desired_state = DesiredState::Stopped;
                vm.stop_mode = StopMode::Force;
            }
            VmAction::Restart => {
                vm.spec.desired_state = DesiredState::Running;
                vm.restart_generation += 1;
            }
        }
        stamp(&mut vm.meta, index, now, true);
        self.answer(Kind::Vm, id, action_verb(action))
    }

    /// Applies the scheduler's decisions that still hold, and why the others wait.
    pub(super) fn schedule(
        &mut self,
        index: u64,
        placements: &[Placement],
        pending: &[(String, String)],
        now: &str,
    ) -> Applied {
        let mut changes = Vec::new();
        let mut placed = 0u32;
        for p in placements {
            let Some(vm) = self.vms.get(&p.vm_id) else {
                continue;
            };
            if vm.node_id.is_some() {
                continue;
            }
            let Some(node) = self.nodes.get(&p.node_id) else {
                continue;
            };
            // Re-check capacity against the state at apply time: the decision is only applied
            // if it is still valid.
            let alloc = self.allocated_on(&p.node_id);
            let storage: u64 = vm
                .spec
                .volume_ids
                .iter()
                .filter_map(|v| self.volumes.get(v))
                .filter(|v| v.node_id.is_none())
                .map(|v| v.spec.size_bytes)
                .sum();
            let cap = node.status.capacity;
            if node.status.state != NodeState::Online
                || alloc.vcpus + vm.spec.vcpus > cap.vcpus
                || alloc.memory_bytes + vm.spec.memory_bytes > cap.memory_bytes
                || alloc.storage_bytes + storage > cap.storage_bytes
            {
                continue;
            }
            let vol_ids = vm.spec.volume_ids.clone();
            let node_state = node.status.state;
            if let Some(vm) = self.vms.get_mut(&p.vm_id) {
                vm.node_id = Some(p.node_id.clone());
                vm.node_state = Some(node_state);
                vm.scheduling = Scheduling {
                    state: SchedulingState::Scheduled,
                    reason: String::new(),
                };
                stamp(&mut vm.meta, index, now, true);
            }
            for vid in vol_ids {
                if let Some(vol) = self.volumes.get_mut(&vid) {
                    if vol.node_id.is_none() {
                        vol.node_id = Some(p.node_id.clone());
                        stamp(&mut vol.meta, index, now, true);
                        changes.push(self.change(Kind::Volume, &vid, "placed"));
                    }
                }
            }
            placed += 1;
            changes.push(self.change(Kind::Vm, &p.vm_id, "scheduled"));
        }
        for (vm_id, reason) in pending {
            if let Some(vm) = self.vms.get_mut(vm_id) {
                if vm.node_id.is_none() && &vm.scheduling.reason != reason {
                    vm.scheduling = Scheduling {
                        state: SchedulingState::Pending,
                        reason: reason.clone(),
                    };
                    vm.meta.revision = index;
                    vm.meta.updated_at = now.to_string();
                    changes.push(self.change(Kind::Vm, vm_id, "pending"));
                }
            }
        }
        Ok((Json::of(&json!({"placed": placed})), changes))
    }
}

fn action_verb(action: VmAction) -> &'static str {
    match action {
        VmAction::Start => "start_requested",
        VmAction::Stop => "stop_requested",
        VmAction::Kill => "kill_requested",
        VmAction::Restart => "restart_requested",
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn vm(id: &str, name: &str, volume_ids: Vec<String>) -> Command {
        Command::CreateVm {
            vm: Vm {
                meta: meta(id, name),
                spec: VmSpec {
                    vcpus: 1,
                    memory_bytes: 1 << 30,
                    hostname: None,
                    boot_mode: None,
                    volume_ids,
                    nic_ids: Vec::new(),
                    user_data: None,
                    ssh_authorized_keys: Vec::new(),
                    desired_state: DesiredState::Running,
                    node_selector: None,
                    kernel_cmdline: None,
                    root_volume: None,
                    network_interfaces: Vec::new(),
                    hugepages: false,
                    nested_virtualization: false,
                },
                status: Status::default(),
                node_id: None,
                node_state: None,
                scheduling: Scheduling::default(),
                stop_mode: StopMode::Graceful,
                restart_generation: 0,
            },
            owned_volumes: Vec::new(),
            owned_nics: Vec::new(),
        }
    }

    #[test]
    fn a_vm_attaches_free_volumes_only_and_detaches_them_when_deleted() {
        let mut s = State::initial();
        s.apply(1, &volume("v1", "data")).0.result.unwrap();
        s.apply(2, &p(vm("m1", "one", vec!["v1".into()])))
            .0
            .result
            .unwrap();
        assert_eq!(s.volumes["v1"].vm_id.as_deref(), Some("m1"));
        assert_eq!(s.vms["m1"].scheduling.state, SchedulingState::Pending);
        let err = s
            .apply(3, &p(vm("m2", "two", vec!["v1".into()])))
            .0
            .result
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict, "attached elsewhere");
        let kill = Command::VmAction {
            id: "m1".into(),
            action: VmAction::Kill,
            now: "t1".into(),
        };
        s.apply(4, &p(kill)).0.result.unwrap();
        assert_eq!(s.vms["m1"].spec.desired_state, DesiredState::Stopped);
        assert_eq!(s.vms["m1"].stop_mode, StopMode::Force);
        let delete = Command::Delete {
            kind: Kind::Vm,
            id: "m1".into(),
            if_match: None,
            force: false,
        };
        s.apply(5, &p(delete)).0.result.unwrap();
        assert_eq!(s.volumes["v1"].vm_id, None, "detached, not deleted");
    }
}
