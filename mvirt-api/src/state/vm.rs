//! VMs: what they ask for (vCPUs, memory, volumes, NICs, desired state), their owned root
//! volume and NICs (created and deleted with them), actions, and placement by the scheduler.

use std::collections::BTreeSet;

use serde_json::json;

use super::{
    name_exists, stamp, stamp_new, ApiError, Applied, Attachable, Change, Placement, Removed,
    Resource, SpecChanged, State,
};
use crate::model::*;

impl Resource for Vm {
    type Spec = VmSpec;

    fn update_spec(s: &mut State, at: u64, id: &str, new: VmSpec) -> SpecChanged {
        Ok((true, s.update_vm_spec(at, id, new)?))
    }

    /// Its owned volumes and NICs go with it; attached ones are detached.
    fn delete(s: &mut State, at: u64, id: &str, _: bool) -> Removed {
        let mut changes = s.remove_vm(at, id);
        changes.extend(s.remove_replications_of(id));
        Ok(changes)
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
                    self.check_attachable(vol, &vm.meta)?;
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
            self.check_attachable(nic, &vm.meta)?;
        }
        // Mutate.
        let mut changes = Vec::new();
        for vol in volumes {
            changes.push(self.insert_owned(index, vol, &vm.meta.id));
        }
        for nic in nics {
            changes.push(self.insert_owned(index, nic, &vm.meta.id));
        }
        for vid in &vm.spec.volume_ids {
            changes.extend(self.attach_free::<Volume>(index, vid, &vm.meta.id));
        }
        for nid in &vm.spec.nic_ids {
            changes.extend(self.attach_free::<Nic>(index, nid, &vm.meta.id));
        }
        let mut vm = vm.clone();
        self.stamp_created(&mut vm.meta, index);
        vm.node_id = None;
        // When no node could take it whatever the capacity, the reason the scheduler would give
        // (so its next round has nothing to change).
        let reason = crate::scheduler::reason_without_candidates(
            self,
            vm.spec.node_selector.as_ref(),
            &vm.spec.volume_ids,
        );
        vm.scheduling = Scheduling {
            state: SchedulingState::Pending,
            reason: reason.unwrap_or_else(|| "waiting for the scheduler".into()),
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
        if new.desired_state == DesiredState::Running
            && vm
                .migration
                .as_ref()
                .is_some_and(|m| m.cold && m.phase.is_active())
        {
            return Err(ApiError::conflict(format!(
                "VM {id} is moving cold: POST /v1/vms/{id}/start cancels the move and starts it"
            )));
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
            self.check_attachable(vol, &vm.meta)?;
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
            self.check_attachable(nic, &vm.meta)?;
        }
        for nid in old_nics.difference(&new_nics) {
            if self.nics.get(*nid).and_then(|n| n.owner_vm_id.as_ref()) == Some(&vm.meta.id) {
                return Err(ApiError::conflict(format!(
                    "NIC {nid} belongs to the VM and cannot be detached"
                )));
            }
        }
        let mut changes = Vec::new();
        let attach = Some(&vm.meta.id);
        for vid in new_vols.difference(&old_vols) {
            if let Some(vol) = self.volumes.get_mut(*vid) {
                vol.node_id = vol.node_id.take().or_else(|| vm.node_id.clone());
            }
            changes.push(self.set_attachment::<Volume>(index, vid, attach));
        }
        for vid in old_vols.difference(&new_vols) {
            changes.push(self.set_attachment::<Volume>(index, vid, None));
        }
        for nid in new_nics.difference(&old_nics) {
            changes.push(self.set_attachment::<Nic>(index, nid, attach));
        }
        for nid in old_nics.difference(&new_nics) {
            changes.push(self.set_attachment::<Nic>(index, nid, None));
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
            changes.extend(self.release::<Volume>(index, vm_id, vid));
        }
        for nid in &vm.spec.nic_ids {
            changes.extend(self.release::<Nic>(index, vm_id, nid));
        }
        changes
    }

    /// Takes object `id` from the deleted VM `vm_id`: deleted with it if the VM owns it,
    /// detached otherwise.
    fn release<A: Attachable>(&mut self, index: u64, vm_id: &str, id: &str) -> Option<Change> {
        let owner = A::map(self).get(id).and_then(|o| o.owner_vm_id());
        if owner.map(String::as_str) == Some(vm_id) {
            let object = A::map_mut(self).remove(id)?;
            return Some(State::removed(A::KIND, id, &object.meta().project));
        }
        A::map(self)
            .contains_key(id)
            .then(|| self.set_attachment::<A>(index, id, None))
    }

    /// Attaches an existing volume or NIC the new VM `vm_id` names, unless it is attached
    /// (the VM's own, minted with it).
    fn attach_free<A: Attachable>(&mut self, index: u64, id: &str, vm_id: &str) -> Option<Change> {
        let object = A::map_mut(self)
            .get_mut(id)
            .filter(|o| o.vm_id().is_none())?;
        *object.vm_id_mut() = Some(vm_id.to_string());
        object.meta_mut().revision = index;
        Some(self.change(A::KIND, id, "attached"))
    }

    /// Stores a volume or NIC created with (and attached to) the VM `vm_id`.
    fn insert_owned<A: Attachable>(&mut self, index: u64, mut object: A, vm_id: &str) -> Change {
        *object.vm_id_mut() = Some(vm_id.to_string());
        stamp_new(object.meta_mut(), index);
        let id = object.meta().id.clone();
        A::map_mut(self).insert(id.clone(), object);
        self.change(A::KIND, &id, "created")
    }

    /// Attaches object `id` to the VM `vm` (`None`: detaches it).
    fn set_attachment<A: Attachable>(
        &mut self,
        index: u64,
        id: &str,
        vm: Option<&String>,
    ) -> Change {
        if let Some(object) = A::map_mut(self).get_mut(id) {
            *object.vm_id_mut() = vm.cloned();
            object.meta_mut().revision = index;
            object.meta_mut().spec_revision = index;
        }
        self.change(
            A::KIND,
            id,
            if vm.is_some() { "attached" } else { "detached" },
        )
    }

    /// `object` can be attached to the VM `vm`: same project, attached to no other VM.
    pub(super) fn check_attachable<A: Attachable>(
        &self,
        object: &A,
        vm: &Meta,
    ) -> Result<(), ApiError> {
        let id = &object.meta().id;
        if object.meta().project != vm.project {
            return Err(ApiError::invalid(format!(
                "{} {id} is in another project",
                A::LABEL
            )));
        }
        if let Some(pod) = object.pod_id() {
            return Err(
                ApiError::conflict(format!("{} {id} is attached to pod {pod}", A::LABEL))
                    .with_details(json!({"nic_id": id, "pod_id": pod})),
            );
        }
        match object.vm_id() {
            Some(other) if other != &vm.id => {
                let mut details = serde_json::Map::new();
                details.insert(format!("{}_id", A::KIND.as_str()), json!(id));
                details.insert("vm_id".into(), json!(other));
                Err(
                    ApiError::conflict(format!("{} {id} is attached to VM {other}", A::LABEL))
                        .with_details(details.into()),
                )
            }
            _ => Ok(()),
        }
    }

    /// Start, stop, kill or restart: changes what the VM's node is asked for.
    pub(super) fn vm_action(
        &mut self,
        index: u64,
        id: &str,
        action: VmAction,
        now: &str,
    ) -> Applied {
        self.get::<Vm>(id)?;
        // Asked to run: a cold move of the VM ends (`state/cold_move.rs`).
        let cancelled = match action {
            VmAction::Start | VmAction::Restart => self.cancel_cold_move(index, id, now),
            _ => Vec::new(),
        };
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
        let (value, changes) = self.answer(Kind::Vm, id, action_verb(action))?;
        Ok((value, cancelled.into_iter().chain(changes).collect()))
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
            if p.kind == Kind::Pod {
                if let Some(change) = self.place_pod(index, &p.vm_id, &p.node_id, now) {
                    placed += 1;
                    changes.push(change);
                }
                continue;
            }
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
            let alloc = crate::scheduler::held_on(self, &p.node_id);
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
            if self.pods.contains_key(vm_id) {
                changes.extend(self.pod_pending(index, vm_id, reason, now));
                continue;
            }
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
            vm: Vm::new(
                meta(id, name),
                VmSpec {
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
                    ha: false,
                },
            ),
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
        s.apply(5, &delete(Kind::Vm, "m1")).0.result.unwrap();
        assert_eq!(s.volumes["v1"].vm_id, None, "detached, not deleted");
    }
}
