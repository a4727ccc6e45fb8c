//! Nodes: hypervisor hosts. An agent registers its node (again after each restart), the
//! control plane marks it online or offline, and a node is deleted only when nothing is placed
//! on it.

use super::{
    name_exists, refuse_if_used, stamp, ApiError, Applied, Removed, Resource, SpecChanged, State,
};
use crate::model::*;

impl Resource for Node {
    type Spec = NodeSpec;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_unique_name(Kind::Node, "", &new.meta.name)
    }

    /// Cordoning does not change what the node runs, so the spec revision stays. A draining
    /// node stays cordoned until its drain is ended (`DELETE /v1/nodes/{id}/drain`).
    fn update_spec(s: &mut State, _: u64, id: &str, new: NodeSpec) -> SpecChanged {
        let node = s.get::<Node>(id)?;
        let draining = node
            .status
            .drain
            .as_ref()
            .is_some_and(|d| d.state == DrainState::Draining);
        if draining && new.schedulable {
            return Err(ApiError::conflict(format!(
                "node {} is draining: DELETE /v1/nodes/{id}/drain ends the drain and uncordons it",
                node.meta.name
            )));
        }
        s.store_spec(id, new, |n: &mut Node| &mut n.spec);
        Ok((false, Vec::new()))
    }

    fn delete(s: &mut State, at: u64, id: &str, _: bool) -> Removed {
        let placed: Vec<String> = s
            .vms
            .values()
            .filter(|v| v.node_id.as_deref() == Some(id))
            .map(|v| format!("vm/{}", v.meta.id))
            .chain(
                s.pods
                    .values()
                    .filter(|p| p.node_id.as_deref() == Some(id))
                    .map(|p| format!("pod/{}", p.meta.id)),
            )
            .chain(
                s.volumes
                    .values()
                    .filter(|v| v.node_id.as_deref() == Some(id))
                    .map(|v| format!("volume/{}", v.meta.id)),
            )
            .chain(
                s.backups
                    .values()
                    .filter(|b| b.node_id.as_deref() == Some(id))
                    .map(|b| format!("backup/{}", b.meta.id)),
            )
            .collect();
        refuse_if_used(placed, || {
            format!("node {id} still has resources placed on it")
        })?;
        s.nodes.remove(id);
        Ok(s.forget_node_reports(at, id))
    }
}

impl State {
    pub(super) fn register_node(&mut self, index: u64, node: &Node) -> Applied {
        let id = node.meta.id.clone();
        if let Some(existing) = self.nodes.get(&id) {
            // Re-registration (agent restart): refresh what the agent says about itself.
            if existing.meta.name != node.meta.name
                && self.name_taken(Kind::Node, "", &node.meta.name)
            {
                return Err(name_exists(Kind::Node, &node.meta.name));
            }
            let mut updated = existing.clone();
            updated.meta.name = node.meta.name.clone();
            updated.meta.labels = node.meta.labels.clone();
            updated.status.address = node.status.address.clone();
            updated.status.capacity = node.status.capacity;
            updated.status.agent_version = node.status.agent_version.clone();
            updated.status.console_endpoint = node.status.console_endpoint.clone();
            updated.status.pod_artefacts_version = node.status.pod_artefacts_version.clone();
            updated.console_secret = node.console_secret.clone();
            if updated.status.state != NodeState::Online {
                updated.status.state = NodeState::Online;
                updated.status.last_state_change_at = Some(node.meta.updated_at.clone());
            }
            if updated == *existing {
                return Ok((
                    self.object_json(Kind::Node, &id).unwrap_or_else(Json::null),
                    Vec::new(),
                ));
            }
            let now = node.meta.updated_at.clone();
            stamp(&mut updated.meta, index, &now, true);
            self.nodes.insert(id.clone(), updated);
            return self.updated(Kind::Node, &id);
        }
        self.create(index, node)
    }

    /// Marks a node online or offline (and records its capacity and pod artefacts version when
    /// given); its VMs show the state too.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_node_state(
        &mut self,
        index: u64,
        id: &str,
        state: NodeState,
        capacity: Option<&Capacity>,
        pod_artefacts_version: Option<&str>,
        now: &str,
    ) -> Applied {
        let node = self.get_mut::<Node>(id)?;
        let mut changed = false;
        let mut state_changed = false;
        if node.status.state != state {
            node.status.state = state;
            node.status.last_state_change_at = Some(now.to_string());
            changed = true;
            state_changed = true;
        }
        if let Some(cap) = capacity {
            if &node.status.capacity != cap {
                node.status.capacity = *cap;
                changed = true;
            }
        }
        if let Some(version) = pod_artefacts_version {
            if node.status.pod_artefacts_version != version {
                node.status.pod_artefacts_version = version.to_string();
                changed = true;
            }
        }
        if !changed {
            return Ok((
                self.object_json(Kind::Node, id).unwrap_or_else(Json::null),
                Vec::new(),
            ));
        }
        stamp(&mut node.meta, index, now, false);
        let (value, mut changes) = self.updated(Kind::Node, id)?;
        if state_changed {
            // Its VMs say so too: their status is the node's last word until it is back.
            let vm_ids: Vec<String> = self
                .vms
                .values()
                .filter(|v| v.node_id.as_deref() == Some(id))
                .map(|v| v.meta.id.clone())
                .collect();
            for vm_id in vm_ids {
                if let Some(vm) = self.vms.get_mut(&vm_id) {
                    vm.node_state = Some(state);
                    vm.meta.revision = index;
                    vm.meta.updated_at = now.to_string();
                }
                changes.push(self.change(Kind::Vm, &vm_id, "node_state"));
            }
            let pod_ids: Vec<String> = self
                .pods
                .values()
                .filter(|p| p.node_id.as_deref() == Some(id))
                .map(|p| p.meta.id.clone())
                .collect();
            for pod_id in pod_ids {
                if let Some(pod) = self.pods.get_mut(&pod_id) {
                    pod.node_state = Some(state);
                    pod.meta.revision = index;
                    pod.meta.updated_at = now.to_string();
                }
                changes.push(self.change(Kind::Pod, &pod_id, "node_state"));
            }
            if state == NodeState::Offline {
                changes.extend(self.drain_node_lost(index, id, now));
            }
        }
        Ok((value, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn node(id: &str, name: &str) -> Node {
        online_node(id, name)
    }

    #[test]
    fn a_node_re_registers_under_its_id_and_is_deleted_only_when_empty() {
        let mut s = State::initial();
        s.apply(
            1,
            &p(Command::RegisterNode {
                node: node("a", "alpha"),
            }),
        )
        .0
        .result
        .unwrap();
        let taken = s.apply(
            2,
            &p(Command::RegisterNode {
                node: node("b", "alpha"),
            }),
        );
        assert_eq!(taken.0.result.unwrap_err().code, ErrorCode::AlreadyExists);
        // Offline, then back by re-registering: online again, same id.
        let offline = Command::SetNodeState {
            id: "a".into(),
            state: NodeState::Offline,
            capacity: None,
            pod_artefacts_version: None,
            now: "t1".into(),
        };
        s.apply(3, &p(offline)).0.result.unwrap();
        assert_eq!(s.nodes["a"].status.state, NodeState::Offline);
        s.apply(
            4,
            &p(Command::RegisterNode {
                node: node("a", "alpha"),
            }),
        )
        .0
        .result
        .unwrap();
        assert_eq!(s.nodes["a"].status.state, NodeState::Online);
        s.apply(5, &volume("v1", "data")).0.result.unwrap();
        s.volumes.get_mut("v1").unwrap().node_id = Some("a".into());
        let err = refused(&mut s, 6, &delete(Kind::Node, "a"));
        assert_eq!(err.details["in_use_by"][0], "volume/v1");
    }
}
