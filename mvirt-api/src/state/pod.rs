//! Pods: OCI containers in a microVM on one node. What they ask for (vCPUs, memory, containers,
//! NICs, registry credentials, desired state), their owned NICs (created and deleted with them,
//! like a VM's), actions, and placement by the scheduler beside VMs.
//!
//! Registry credentials are stored with their secrets (the node needs them to pull) but every
//! view of a pod (REST, events, idempotent replays) is [`Pod::view`], which drops them.

use std::collections::BTreeSet;

use serde_json::json;

use super::{
    name_exists, stamp, stamp_new, ApiError, Applied, Change, Removed, Resource, SpecChanged, State,
};
use crate::model::*;

impl Resource for Pod {
    type Spec = PodSpec;

    fn update_spec(s: &mut State, _: u64, id: &str, new: PodSpec) -> SpecChanged {
        let changed = s.update_pod_spec(id, new)?;
        Ok((changed, Vec::new()))
    }

    /// Its owned NICs go with it; attached ones are detached.
    fn delete(s: &mut State, at: u64, id: &str, _: bool) -> Removed {
        Ok(s.remove_pod(at, id))
    }
}

impl State {
    /// Creates a pod with the NICs it owns, attaching the existing ones it names. Everything
    /// is checked before anything is stored: a refused create leaves no NIC behind.
    pub(super) fn create_pod(&mut self, index: u64, pod: &Pod, owned_nics: &[Nic]) -> Applied {
        if self.pods.contains_key(&pod.meta.id) {
            return self.same_or_exists(Kind::Pod, &pod.meta.id);
        }
        self.check_new(Kind::Pod, &pod.meta)?;
        for cred in &pod.spec.registry_credentials {
            if cred.password.is_none() && cred.token.is_none() {
                return Err(ApiError::invalid(format!(
                    "registry_credentials for {:?}: a password (with username) or a token is required",
                    cred.registry
                )));
            }
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
        let owned: BTreeSet<String> = nics.iter().map(|n| n.meta.id.clone()).collect();
        for nid in &pod.spec.nic_ids {
            if owned.contains(nid.as_str()) {
                continue;
            }
            let nic = self.get::<Nic>(nid)?;
            self.check_pod_attachable(nic, &pod.meta)?;
        }
        // Mutate.
        let mut changes = Vec::new();
        for mut nic in nics {
            nic.pod_id = Some(pod.meta.id.clone());
            nic.owner_pod_id = Some(pod.meta.id.clone());
            stamp_new(&mut nic.meta, index);
            let id = nic.meta.id.clone();
            self.nics.insert(id.clone(), nic);
            changes.push(self.change(Kind::Nic, &id, "created"));
        }
        for nid in &pod.spec.nic_ids {
            if owned.contains(nid.as_str()) {
                continue;
            }
            if let Some(nic) = self.nics.get_mut(nid) {
                nic.pod_id = Some(pod.meta.id.clone());
                nic.meta.revision = index;
                nic.meta.spec_revision = index;
                changes.push(self.change(Kind::Nic, nid, "attached"));
            }
        }
        let mut pod = pod.clone();
        stamp_new(&mut pod.meta, index);
        pod.node_id = None;
        // When no node could take it whatever the capacity, the reason the scheduler would give
        // (so its next round has nothing to change).
        let reason =
            crate::scheduler::reason_without_candidates(self, pod.spec.node_selector.as_ref(), &[]);
        pod.scheduling = Scheduling {
            state: SchedulingState::Pending,
            reason: reason.unwrap_or_else(|| "waiting for the scheduler".into()),
        };
        let id = pod.meta.id.clone();
        self.pods.insert(id.clone(), pod);
        let change = self.change(Kind::Pod, &id, "created");
        let value = change.object.clone().unwrap_or_else(Json::null);
        changes.push(change);
        Ok((value, changes))
    }

    /// `nic` can be attached to the pod `pod`: same project, attached to nothing else.
    fn check_pod_attachable(&self, nic: &Nic, pod: &Meta) -> Result<(), ApiError> {
        let id = &nic.meta.id;
        if nic.meta.project != pod.project {
            return Err(ApiError::invalid(format!("NIC {id} is in another project")));
        }
        if let Some(vm) = &nic.vm_id {
            return Err(
                ApiError::conflict(format!("NIC {id} is attached to VM {vm}"))
                    .with_details(json!({"nic_id": id, "vm_id": vm})),
            );
        }
        match &nic.pod_id {
            Some(other) if other != &pod.id => Err(ApiError::conflict(format!(
                "NIC {id} is attached to pod {other}"
            ))
            .with_details(json!({"nic_id": id, "pod_id": other}))),
            _ => Ok(()),
        }
    }

    /// A `PUT` of a pod's spec: `desired_state` and the registry credentials change (a
    /// credential without a secret keeps the stored one of the same registry and username);
    /// everything else is fixed after create and a different value is refused, naming it.
    fn update_pod_spec(&mut self, id: &str, mut new: PodSpec) -> Result<bool, ApiError> {
        let pod = self.get::<Pod>(id)?;
        let old = &pod.spec;
        if !new.network_interfaces.is_empty() && new.network_interfaces != old.network_interfaces {
            return Err(ApiError::invalid(
                "network_interfaces are create-only; a pod's NICs are fixed after create",
            ));
        }
        new.network_interfaces = old.network_interfaces.clone();
        let fixed = [
            ("containers", new.containers != old.containers),
            ("vcpus", new.vcpus != old.vcpus),
            ("memory_bytes", new.memory_bytes != old.memory_bytes),
            ("hostname", new.hostname != old.hostname),
            ("nic_ids", new.nic_ids != old.nic_ids),
            ("node_selector", new.node_selector != old.node_selector),
        ];
        let changed: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(f, _)| *f).collect();
        if !changed.is_empty() {
            return Err(ApiError::conflict(format!(
                "{} of a pod cannot change after create (only desired_state, registry_credentials and labels do); delete and re-create the pod",
                changed.join(", ")
            ))
            .with_details(json!({"fixed_fields": changed})));
        }
        for cred in &mut new.registry_credentials {
            if cred.password.is_some() || cred.token.is_some() {
                continue;
            }
            let kept = old
                .registry_credentials
                .iter()
                .find(|o| o.registry == cred.registry && o.username == cred.username);
            match kept {
                Some(o) => {
                    cred.password = o.password.clone();
                    cred.token = o.token.clone();
                }
                None => {
                    return Err(ApiError::invalid(format!(
                        "registry_credentials for {:?}: a password (with username) or a token is required (only an unchanged registry and username keep the stored secret)",
                        cred.registry
                    )))
                }
            }
        }
        let changed = *old != new;
        if let Some(p) = self.pods.get_mut(id) {
            p.spec = new;
        }
        Ok(changed)
    }

    /// Removes a pod's owned NICs and detaches the attached ones; then the pod.
    fn remove_pod(&mut self, index: u64, pod_id: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(pod) = self.pods.remove(pod_id) else {
            return changes;
        };
        for nid in &pod.spec.nic_ids {
            let Some(nic) = self.nics.get(nid) else {
                continue;
            };
            if nic.owner_pod_id.as_deref() == Some(pod_id) {
                if let Some(nic) = self.nics.remove(nid) {
                    changes.push(State::removed(Kind::Nic, nid, &nic.meta.project));
                }
            } else if let Some(nic) = self.nics.get_mut(nid) {
                nic.pod_id = None;
                nic.meta.revision = index;
                nic.meta.spec_revision = index;
                changes.push(self.change(Kind::Nic, nid, "detached"));
            }
        }
        changes
    }

    /// Start, stop (`force`: kill) or restart: changes what the pod's node is asked for.
    pub(super) fn pod_action(
        &mut self,
        index: u64,
        id: &str,
        action: PodAction,
        force: bool,
        now: &str,
    ) -> Applied {
        let pod = self.get_mut::<Pod>(id)?;
        let verb = match action {
            PodAction::Start => {
                pod.spec.desired_state = DesiredState::Running;
                "start_requested"
            }
            PodAction::Stop => {
                pod.spec.desired_state = DesiredState::Stopped;
                pod.stop_mode = if force {
                    StopMode::Force
                } else {
                    StopMode::Graceful
                };
                "stop_requested"
            }
            PodAction::Restart => {
                pod.spec.desired_state = DesiredState::Running;
                pod.restart_generation += 1;
                "restart_requested"
            }
        };
        stamp(&mut pod.meta, index, now, true);
        self.answer(Kind::Pod, id, verb)
    }

    /// Places pod `id` on `node_id` if it still fits there (the scheduler's decision is
    /// re-checked at apply time); the change, if placed.
    pub(super) fn place_pod(
        &mut self,
        index: u64,
        id: &str,
        node_id: &str,
        now: &str,
    ) -> Option<Change> {
        let pod = self.pods.get(id)?;
        if pod.node_id.is_some() {
            return None;
        }
        let node = self.nodes.get(node_id)?;
        let alloc = crate::scheduler::held_on(self, node_id);
        let cap = node.status.capacity;
        if node.status.state != NodeState::Online
            || alloc.vcpus + pod.spec.vcpus > cap.vcpus
            || alloc.memory_bytes + pod.spec.memory_bytes > cap.memory_bytes
        {
            return None;
        }
        let node_state = node.status.state;
        let pod = self.pods.get_mut(id)?;
        pod.node_id = Some(node_id.to_string());
        pod.node_state = Some(node_state);
        pod.scheduling = Scheduling {
            state: SchedulingState::Scheduled,
            reason: String::new(),
        };
        stamp(&mut pod.meta, index, now, true);
        Some(self.change(Kind::Pod, id, "scheduled"))
    }

    /// Records why pod `id` stays pending (if the reason changed).
    pub(super) fn pod_pending(
        &mut self,
        index: u64,
        id: &str,
        reason: &str,
        now: &str,
    ) -> Option<Change> {
        let pod = self.pods.get_mut(id)?;
        if pod.node_id.is_some() || pod.scheduling.reason == reason {
            return None;
        }
        pod.scheduling = Scheduling {
            state: SchedulingState::Pending,
            reason: reason.to_string(),
        };
        pod.meta.revision = index;
        pod.meta.updated_at = now.to_string();
        Some(self.change(Kind::Pod, id, "pending"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn pod(id: &str, name: &str, nic_ids: Vec<String>, secret: &str) -> Command {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "vcpus": 1, "memory_bytes": 268435456,
            "containers": [{"name": "web", "image": "r.example:5000/httpd:1"}],
            "nic_ids": nic_ids,
            "registry_credentials": [{"registry": "r.example:5000", "username": "u", "password": secret}],
        }))
        .unwrap();
        Command::CreatePod {
            pod: Pod::new(meta(id, name), spec),
            owned_nics: Vec::new(),
        }
    }

    #[test]
    fn a_pod_attaches_a_free_nic_keeps_its_secret_out_of_views_and_detaches_it_when_deleted() {
        let mut s = state_after(&[network("n1", "net"), nic("c1", "a", "n1")]);
        s.apply(3, &p(pod("p1", "one", vec!["c1".into()], "s3cr3t")))
            .0
            .result
            .unwrap();
        assert_eq!(s.nics["c1"].pod_id.as_deref(), Some("p1"));
        let view = s.object_json(Kind::Pod, "p1").unwrap();
        assert!(!view.get().contains("s3cr3t"), "{view:?}");
        assert!(s.stored_json(Kind::Pod, "p1").unwrap().contains("s3cr3t"));
        // A second pod cannot take the NIC, and the NIC cannot be deleted under the pod.
        let err = refused(&mut s, 4, &p(pod("p2", "two", vec!["c1".into()], "x")));
        assert_eq!(err.code, ErrorCode::Conflict);
        let err = refused(&mut s, 5, &delete(Kind::Nic, "c1"));
        assert_eq!(err.code, ErrorCode::Conflict);
        s.apply(6, &delete(Kind::Pod, "p1")).0.result.unwrap();
        assert_eq!(s.nics["c1"].pod_id, None, "detached, not deleted");
    }
}
