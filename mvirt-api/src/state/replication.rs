//! Replication schedules (`/v1/replications`): a VM's volumes are sent every `interval_secs`
//! from the VM's node to each target node, where they are kept as replicas. The source is the
//! VM's node at any time (a migrated or failed-over VM replicates from its new node); the
//! source node reports the status (one [`ReplicaReport`] per volume and target). One VM is
//! replicated to one target by at most one schedule (two would fight over one replica). A
//! deleted VM takes its schedules along (the replicas stay on their nodes).

use super::{ApiError, Change, Removed, Resource, SpecChanged, State};
use crate::model::*;

impl Resource for Replication {
    type Spec = ReplicationSpec;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_new(Kind::Replication, &new.meta)?;
        s.resolve_replication(&new.meta.project, &mut new.spec);
        s.check_replication(&new.meta.id, &new.meta.project, &new.spec)?;
        new.status = Status::default();
        Ok(())
    }

    fn update_spec(s: &mut State, _: u64, id: &str, mut new: ReplicationSpec) -> SpecChanged {
        let project = s.replications[id].meta.project.clone();
        s.resolve_replication(&project, &mut new);
        let old = &s.replications[id];
        if new == old.spec {
            return Ok((false, Vec::new()));
        }
        if new.vm_id != old.spec.vm_id {
            return Err(ApiError::invalid(
                "a replication's vm_id cannot change; create a new replication",
            ));
        }
        s.check_replication(id, &project, &new)?;
        if let Some(r) = s.replications.get_mut(id) {
            // Reports about targets no longer named go with the old spec.
            r.status
                .replicas
                .retain(|rep| new.targets.contains(&rep.target_node_id));
            r.spec = new;
        }
        Ok((true, Vec::new()))
    }

    fn delete(s: &mut State, _: u64, id: &str, _: bool) -> Removed {
        s.replications.remove(id);
        Ok(Vec::new())
    }
}

impl State {
    /// Names in a replication spec become ids: the VM's (in `project`) and the targets'.
    fn resolve_replication(&self, project: &str, spec: &mut ReplicationSpec) {
        if !self.vms.contains_key(&spec.vm_id) {
            if let Some(id) = self.id_by_name(Kind::Vm, project, &spec.vm_id) {
                spec.vm_id = id;
            }
        }
        for target in &mut spec.targets {
            if !self.nodes.contains_key(target) {
                if let Some(id) = self.id_by_name(Kind::Node, "", target) {
                    *target = id;
                }
            }
        }
    }

    /// The references of a replication spec hold: its VM is in its project, its targets are
    /// nodes, and no other schedule replicates the VM to one of them.
    fn check_replication(
        &self,
        id: &str,
        project: &str,
        spec: &ReplicationSpec,
    ) -> Result<(), ApiError> {
        let vm = self.get::<Vm>(&spec.vm_id)?;
        if vm.meta.project != project {
            return Err(ApiError::invalid(format!(
                "VM {} is in project {:?}, not {project:?}: a replication lives in its VM's project",
                vm.meta.name, vm.meta.project
            )));
        }
        for (i, target) in spec.targets.iter().enumerate() {
            if spec.targets[..i].contains(target) {
                return Err(ApiError::invalid(format!("target {target} is named twice")));
            }
            if !self.nodes.contains_key(target) {
                return Err(ApiError::not_found(Kind::Node, target));
            }
            if vm.node_id.as_deref() == Some(target.as_str()) {
                return Err(ApiError::invalid(format!(
                    "target {target} is the VM's own node: replicate to another node"
                )));
            }
            let other = self.replications.values().find(|r| {
                r.meta.id != id && r.spec.vm_id == spec.vm_id && r.spec.targets.contains(target)
            });
            if let Some(other) = other {
                return Err(ApiError::conflict(format!(
                    "replication {} already replicates VM {} to node {target}",
                    other.meta.name, vm.meta.name
                )));
            }
        }
        Ok(())
    }

    /// Removes the replications of the deleted VM `vm_id`.
    pub(super) fn remove_replications_of(&mut self, vm_id: &str) -> Vec<Change> {
        let ids: Vec<String> = self
            .replications
            .values()
            .filter(|r| r.spec.vm_id == vm_id)
            .map(|r| r.meta.id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let r = self.replications.remove(&id)?;
                Some(State::removed(Kind::Replication, &id, &r.meta.project))
            })
            .collect()
    }

    /// The node replication `id` is sent from now: its VM's node.
    pub fn replication_source(&self, id: &str) -> Option<&str> {
        let r = self.replications.get(id)?;
        self.vms.get(&r.spec.vm_id)?.node_id.as_deref()
    }
}
