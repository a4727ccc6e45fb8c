//! Placement of pending VMs and pods on nodes (a pod counts its microVM's vCPUs and memory
//! against a node's capacity like a VM; it has no volumes). A pure function of the state: the leader runs it whenever
//! the state changes and proposes the result as one `Schedule` command (which `apply` re-checks,
//! so a decision that became stale is simply not applied and is retried next round).
//!
//! Rules: a candidate node is online and schedulable, matches the VM's node selector (node id,
//! node name, or `k=v,k2=v2` labels), holds the VM's volumes if any of them already live on a
//! node (volume locality), and has enough free vCPU, memory and storage *after everything already
//! placed, including the placements made earlier in the same round*. Among the candidates,
//! `spread` picks the least loaded node, `binpack` the most loaded one that still fits; ties go to
//! the smaller node id so the result is deterministic. A VM that fits nowhere stays pending with a
//! reason that says why.
//!
//! What holds capacity ([`holds_capacity`]): a placed VM or pod holds its vCPUs and memory unless
//! it failed, or stopped and is to stay stopped — like Proxmox and Incus, which count running
//! guests only. Its place may then go to another workload; starting it again later runs it on its
//! node regardless (the node may then be overcommitted; the scheduler itself never overcommits).
//! Volumes always hold their storage. vCPU overcommit is the node's choice: mvirt-node reports
//! its host threads times its `--cpu-overcommit` as its vCPU capacity.

use std::collections::HashMap;

use crate::model::{Capacity, DesiredState, Kind, Node, NodeState, Phase, Pod, Vm};
use crate::state::{Placement, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Spread,
    Binpack,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(Strategy::Spread),
            "binpack" => Ok(Strategy::Binpack),
            other => Err(format!("unknown strategy {other:?} (spread or binpack)")),
        }
    }
}

/// The scheduler's decision for one round.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decision {
    pub placements: Vec<Placement>,
    /// VMs that stay pending, with the reason (only those whose reason changed).
    pub pending: Vec<(String, String)>,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.placements.is_empty() && self.pending.is_empty()
    }
}

/// Whether `node` matches a selector: its id, its name, or all of `k=v` labels.
pub fn matches_selector(node: &Node, selector: &str) -> bool {
    if selector.contains('=') {
        selector.split(',').all(|term| {
            let mut kv = term.splitn(2, '=');
            let (k, v) = (kv.next().unwrap_or(""), kv.next().unwrap_or(""));
            node.meta.labels.get(k.trim()).map(|x| x.as_str()) == Some(v.trim())
        })
    } else {
        node.meta.id == selector || node.meta.name == selector
    }
}

/// Whether a placed VM or pod holds its vCPUs and memory on its node, by what it is asked to
/// be (`desired`) and what its node last reported (`phase`): everything does except what has
/// failed, or has stopped and is to stay stopped. (A stopped one that is to run is about to
/// start; one not reported yet is starting.)
pub fn holds_capacity(desired: DesiredState, phase: Phase) -> bool {
    match phase {
        Phase::Failed => false,
        Phase::Stopped => desired != DesiredState::Stopped,
        _ => true,
    }
}

fn vm_holds(vm: &Vm) -> bool {
    holds_capacity(vm.spec.desired_state, vm.status.phase)
}

fn pod_holds(pod: &Pod) -> bool {
    holds_capacity(pod.spec.desired_state, pod.status.phase)
}

/// What the VMs, pods and volumes placed on `node_id` hold of it ([`holds_capacity`]); the
/// apply-time re-check of a placement uses it like the scheduler. (`State::allocated_on`, the
/// node's `allocated`, counts everything placed.)
pub fn held_on(state: &State, node_id: &str) -> Capacity {
    let mut cap = Capacity::default();
    for vm in state.vms.values() {
        if vm.node_id.as_deref() == Some(node_id) && vm_holds(vm) {
            cap.vcpus += vm.spec.vcpus;
            cap.memory_bytes += vm.spec.memory_bytes;
        }
    }
    for pod in state.pods.values() {
        if pod.node_id.as_deref() == Some(node_id) && pod_holds(pod) {
            cap.vcpus += pod.spec.vcpus;
            cap.memory_bytes += pod.spec.memory_bytes;
        }
    }
    for vol in state.volumes.values() {
        if vol.node_id.as_deref() == Some(node_id) {
            cap.storage_bytes += vol.spec.size_bytes;
        }
    }
    cap
}

/// Placed VMs and pods that hold no capacity: how many, and the newest revision among them. A
/// workload failing or stopping for good moves it (its status report is a new revision), so
/// the [`CapacityKey`] moves and pending work is looked at again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Released {
    count: usize,
    revision: u64,
}

impl Released {
    fn add(&mut self, revision: u64) {
        self.count += 1;
        self.revision = self.revision.max(revision);
    }
}

fn load(alloc: &Capacity, cap: &Capacity) -> f64 {
    let frac = |a: u64, c: u64| if c == 0 { 1.0 } else { a as f64 / c as f64 };
    frac(alloc.vcpus as u64, cap.vcpus as u64)
        .max(frac(alloc.memory_bytes, cap.memory_bytes))
        .max(frac(alloc.storage_bytes, cap.storage_bytes))
}

/// Something the scheduler places: a VM or a pod.
struct Work<'a> {
    kind: Kind,
    id: &'a str,
    vcpus: u32,
    memory_bytes: u64,
    node_selector: Option<&'a String>,
    volume_ids: &'a [String],
    /// Oldest first: (the lower of revision and spec revision, id).
    age: (u64, &'a str),
    /// Why it is pending now.
    reason: &'a str,
}

impl<'a> Work<'a> {
    fn vm(vm: &'a Vm) -> Self {
        Work {
            kind: Kind::Vm,
            id: &vm.meta.id,
            vcpus: vm.spec.vcpus,
            memory_bytes: vm.spec.memory_bytes,
            node_selector: vm.spec.node_selector.as_ref(),
            volume_ids: &vm.spec.volume_ids,
            age: (vm.meta.revision.min(vm.meta.spec_revision), &vm.meta.id),
            reason: &vm.scheduling.reason,
        }
    }

    fn pod(pod: &'a Pod) -> Self {
        Work {
            kind: Kind::Pod,
            id: &pod.meta.id,
            vcpus: pod.spec.vcpus,
            memory_bytes: pod.spec.memory_bytes,
            node_selector: pod.spec.node_selector.as_ref(),
            volume_ids: &[],
            age: (pod.meta.revision.min(pod.meta.spec_revision), &pod.meta.id),
            reason: &pod.scheduling.reason,
        }
    }

    fn label(&self) -> &'static str {
        if self.kind == Kind::Pod {
            "pod"
        } else {
            "VM"
        }
    }
}

/// Computes placements for every pending VM.
pub fn schedule(state: &State, strategy: Strategy) -> Decision {
    schedule_since(state, strategy, None)
}

/// What a pending VM's chances depend on besides itself: the nodes (any change: registration,
/// state, capacity, labels), anything removed (a deleted VM or volume frees capacity), the
/// placed VMs' specs (a placement or a resize changes what is free) and the placed workloads
/// that released their capacity (failed, stopped for good). While this key stays the same, a
/// VM that fit nowhere still fits nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityKey {
    nodes: usize,
    node_revision: u64,
    removal_revision: u64,
    placed_revision: u64,
    released: Released,
}

/// The key as its own pass over the VMs; the leader gets it from [`round`], and the tests check
/// `round` against this.
#[cfg(test)]
pub fn capacity_key(state: &State) -> CapacityKey {
    let placed_vms = state.vms.values().filter(|v| v.node_id.is_some());
    let placed_pods = state.pods.values().filter(|p| p.node_id.is_some());
    let mut released = Released::default();
    placed_vms
        .clone()
        .filter(|v| !vm_holds(v))
        .for_each(|v| released.add(v.meta.revision));
    placed_pods
        .clone()
        .filter(|p| !pod_holds(p))
        .for_each(|p| released.add(p.meta.revision));
    CapacityKey {
        placed_revision: placed_vms
            .map(|v| v.meta.spec_revision)
            .chain(placed_pods.map(|p| p.meta.spec_revision))
            .max()
            .unwrap_or(0),
        released,
        ..node_key(state)
    }
}

/// The parts of the [`CapacityKey`] that do not depend on the VMs.
fn node_key(state: &State) -> CapacityKey {
    CapacityKey {
        nodes: state.nodes.len(),
        node_revision: state
            .nodes
            .values()
            .map(|n| n.meta.revision)
            .max()
            .unwrap_or(0),
        removal_revision: state.counters.last_removal_revision,
        placed_revision: 0,
        released: Released::default(),
    }
}

/// The newest VM spec in the state: a later round with the same [`CapacityKey`] only needs to
/// look at VMs whose `spec_revision` is above it. Its own pass, like [`capacity_key`] (tests).
#[cfg(test)]
pub fn newest_vm_spec(state: &State) -> u64 {
    state
        .vms
        .values()
        .map(|v| v.meta.spec_revision)
        .max()
        .unwrap_or(0)
}

/// [`schedule`], considering only the pending VMs whose spec changed after `since` (all when
/// `None`). Placement accounting always covers every placed VM.
pub fn schedule_since(state: &State, strategy: Strategy, since: Option<u64>) -> Decision {
    let pending: Vec<Work> = state
        .vms
        .values()
        .filter(|v| v.node_id.is_none())
        .filter(|v| since.is_none_or(|s| v.meta.spec_revision > s))
        .map(Work::vm)
        .chain(
            state
                .pods
                .values()
                .filter(|p| p.node_id.is_none())
                .filter(|p| since.is_none_or(|s| p.meta.spec_revision > s))
                .map(Work::pod),
        )
        .collect();
    if pending.is_empty() {
        return Decision::default();
    }
    let nodes = candidate_nodes(state);
    let mut allocated = empty_allocation(&nodes);
    for vm in state.vms.values().filter(|v| vm_holds(v)) {
        if let Some(a) = vm.node_id.as_deref().and_then(|n| allocated.get_mut(n)) {
            a.vcpus += vm.spec.vcpus;
            a.memory_bytes += vm.spec.memory_bytes;
        }
    }
    for pod in state.pods.values().filter(|p| pod_holds(p)) {
        if let Some(a) = pod.node_id.as_deref().and_then(|n| allocated.get_mut(n)) {
            a.vcpus += pod.spec.vcpus;
            a.memory_bytes += pod.spec.memory_bytes;
        }
    }
    add_volumes(state, &mut allocated);
    place(state, strategy, pending, &nodes, allocated)
}

/// One scheduler round as the leader runs it: the capacity key, the newest VM spec and
/// [`schedule_since`] in a single pass over the VMs. (Four passes took milliseconds per round
/// once the state held ~10,000 VMs, under the state's read lock that every apply waits
/// behind.) `last` is the previous round's key and newest VM spec: while the key is the same,
/// only VMs whose spec is newer are looked at. Returns this round's key and newest spec.
pub fn round(
    state: &State,
    strategy: Strategy,
    last: Option<(CapacityKey, u64)>,
) -> (CapacityKey, u64, Decision) {
    let nodes = candidate_nodes(state);
    let mut allocated = empty_allocation(&nodes);
    let (mut newest, mut placed_revision) = (0, 0);
    let mut released = Released::default();
    // Only VMs whose spec is newer than `since` are collected while the pass runs, as if the
    // key were unchanged (it almost always is); should it have moved, a second pass collects
    // every pending VM. Collecting all of them each round (tens of thousands under a stream of
    // creates) cost more in allocation and page faults than the pass itself.
    let since = last.map(|(_, since)| since);
    let wanted = |spec_revision: u64| since.is_none_or(|s| spec_revision > s);
    let mut skipped = false;
    let mut pending = Vec::new();
    for vm in state.vms.values() {
        newest = newest.max(vm.meta.spec_revision);
        match vm.node_id.as_deref() {
            Some(node) => {
                placed_revision = placed_revision.max(vm.meta.spec_revision);
                if !vm_holds(vm) {
                    released.add(vm.meta.revision);
                } else if let Some(a) = allocated.get_mut(node) {
                    a.vcpus += vm.spec.vcpus;
                    a.memory_bytes += vm.spec.memory_bytes;
                }
            }
            None if wanted(vm.meta.spec_revision) => pending.push(Work::vm(vm)),
            None => skipped = true,
        }
    }
    for pod in state.pods.values() {
        newest = newest.max(pod.meta.spec_revision);
        match pod.node_id.as_deref() {
            Some(node) => {
                placed_revision = placed_revision.max(pod.meta.spec_revision);
                if !pod_holds(pod) {
                    released.add(pod.meta.revision);
                } else if let Some(a) = allocated.get_mut(node) {
                    a.vcpus += pod.spec.vcpus;
                    a.memory_bytes += pod.spec.memory_bytes;
                }
            }
            None if wanted(pod.meta.spec_revision) => pending.push(Work::pod(pod)),
            None => skipped = true,
        }
    }
    let key = CapacityKey {
        placed_revision,
        released,
        ..node_key(state)
    };
    if skipped && last.is_none_or(|(k, _)| k != key) {
        pending = state
            .vms
            .values()
            .filter(|v| v.node_id.is_none())
            .map(Work::vm)
            .chain(
                state
                    .pods
                    .values()
                    .filter(|p| p.node_id.is_none())
                    .map(Work::pod),
            )
            .collect();
    }
    if pending.is_empty() {
        return (key, newest, Decision::default());
    }
    add_volumes(state, &mut allocated);
    (
        key,
        newest,
        place(state, strategy, pending, &nodes, allocated),
    )
}

/// The online, schedulable nodes.
fn candidate_nodes(state: &State) -> Vec<&Node> {
    state
        .nodes
        .values()
        .filter(|n| n.status.state == NodeState::Online && n.spec.schedulable)
        .collect()
}

fn empty_allocation<'a>(nodes: &[&'a Node]) -> HashMap<&'a str, Capacity> {
    nodes
        .iter()
        .map(|n| (n.meta.id.as_str(), Capacity::default()))
        .collect()
}

fn add_volumes<'a>(state: &'a State, allocated: &mut HashMap<&'a str, Capacity>) {
    for vol in state.volumes.values() {
        if let Some(a) = vol.node_id.as_deref().and_then(|n| allocated.get_mut(n)) {
            a.storage_bytes += vol.spec.size_bytes;
        }
    }
}

const SPLIT_VOLUMES: &str = "the VM's volumes live on different nodes";

/// What `volume_ids` ask of a node: the storage of those not placed yet, the node those placed
/// already live on, and whether they live on different nodes.
fn volume_placement<'a>(state: &'a State, volume_ids: &[String]) -> (u64, Option<&'a str>, bool) {
    let mut storage = 0u64;
    let mut locality: Option<&str> = None;
    let mut split = false;
    for vid in volume_ids {
        if let Some(vol) = state.volumes.get(vid) {
            match vol.node_id.as_deref() {
                None => storage += vol.spec.size_bytes,
                Some(n) => {
                    if locality.is_some_and(|l| l != n) {
                        split = true;
                    }
                    locality = Some(n);
                }
            }
        }
    }
    (storage, locality, split)
}

/// Why a VM or pod is pending when no node is a candidate for it (whatever the capacity).
fn no_candidate_reason(
    no_nodes: bool,
    selector: Option<&String>,
    locality: Option<&str>,
) -> String {
    if no_nodes {
        return "no online, schedulable node".to_string();
    }
    match (selector, locality) {
        (_, Some(l)) => format!("the VM's volumes live on node {l}, which is offline, cordoned or does not match the selector"),
        (Some(sel), None) => format!("no online node matches node_selector {sel:?}"),
        (None, None) => "no online, schedulable node".to_string(),
    }
}

/// Why a new VM or pod (not placed) cannot be placed now whatever the capacity — its volumes
/// live on different nodes, or no online, schedulable node is a candidate (none at all, or none
/// that matches its selector and its volumes' node) — in the words a round would use; `None`
/// when some node is a candidate (a round decides). `apply` sets it at create, so the next
/// round finds the reason already given and proposes nothing for the VM: before, every such
/// create cost a second command's change (an event and a row on every member).
pub fn reason_without_candidates(
    state: &State,
    node_selector: Option<&String>,
    volume_ids: &[String],
) -> Option<String> {
    let (_, locality, split) = volume_placement(state, volume_ids);
    if split {
        return Some(SPLIT_VOLUMES.to_string());
    }
    let mut nodes = state
        .nodes
        .values()
        .filter(|n| n.status.state == NodeState::Online && n.spec.schedulable)
        .peekable();
    let no_nodes = nodes.peek().is_none();
    let matched = nodes.any(|n| {
        node_selector.is_none_or(|sel| matches_selector(n, sel))
            && locality.is_none_or(|l| l == n.meta.id)
    });
    (!matched).then(|| no_candidate_reason(no_nodes, node_selector, locality))
}

/// Places `pending` (oldest first) on `nodes`, given what is `allocated` on them already.
fn place<'a>(
    state: &'a State,
    strategy: Strategy,
    mut pending: Vec<Work<'a>>,
    nodes: &[&'a Node],
    mut allocated: HashMap<&'a str, Capacity>,
) -> Decision {
    let mut decision = Decision::default();
    // Oldest first, so a stream of new VMs never starves an old one.
    pending.sort_by(|a, b| a.age.cmp(&b.age));

    for vm in pending {
        let (storage, locality, split) = volume_placement(state, vm.volume_ids);
        let reason = if split {
            Some(SPLIT_VOLUMES.to_string())
        } else {
            let mut best: Option<(&Node, f64)> = None;
            let (mut matched, mut fitting) = (0usize, 0usize);
            for node in nodes {
                if let Some(sel) = vm.node_selector {
                    if !matches_selector(node, sel) {
                        continue;
                    }
                }
                if locality.is_some_and(|l| l != node.meta.id) {
                    continue;
                }
                matched += 1;
                let cap = node.status.capacity;
                let Some(alloc) = allocated.get(node.meta.id.as_str()) else {
                    continue;
                };
                let after = Capacity {
                    vcpus: alloc.vcpus + vm.vcpus,
                    memory_bytes: alloc.memory_bytes + vm.memory_bytes,
                    storage_bytes: alloc.storage_bytes + storage,
                };
                if after.vcpus > cap.vcpus
                    || after.memory_bytes > cap.memory_bytes
                    || after.storage_bytes > cap.storage_bytes
                {
                    continue;
                }
                fitting += 1;
                let score = load(&after, &cap);
                let better = match best {
                    None => true,
                    Some((_, s)) => match strategy {
                        Strategy::Spread => score < s,
                        Strategy::Binpack => score > s,
                    },
                };
                if better {
                    best = Some((node, score));
                }
            }
            match best {
                Some((node, _)) => {
                    if let Some(a) = allocated.get_mut(node.meta.id.as_str()) {
                        a.vcpus += vm.vcpus;
                        a.memory_bytes += vm.memory_bytes;
                        a.storage_bytes += storage;
                    }
                    decision.placements.push(Placement {
                        vm_id: vm.id.to_string(),
                        node_id: node.meta.id.clone(),
                        kind: vm.kind,
                    });
                    None
                }
                None if nodes.is_empty() || matched == 0 => Some(no_candidate_reason(
                    nodes.is_empty(),
                    vm.node_selector,
                    locality,
                )),
                None => {
                    debug_assert_eq!(fitting, 0);
                    Some(format!(
                        "insufficient capacity: none of {matched} candidate node(s) has {} vCPU, {} bytes memory and {} bytes storage free for the {}",
                        vm.vcpus, vm.memory_bytes, storage, vm.label()
                    ))
                }
            }
        };
        if let Some(reason) = reason {
            if vm.reason != reason {
                decision.pending.push((vm.id.to_string(), reason));
            }
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::Strategy;
    use super::*;
    use crate::model::*;
    use crate::state::{Command, Proposal};

    const GIB: u64 = 1 << 30;

    fn meta(id: &str, name: &str) -> Meta {
        Meta {
            id: id.into(),
            name: name.into(),
            project: "default".into(),
            labels: BTreeMap::new(),
            revision: 0,
            spec_revision: 0,
            created_at: "t".into(),
            updated_at: "t".into(),
            trace_id: None,
        }
    }

    fn node(id: &str, vcpus: u32, mem_gib: u64, labels: &[(&str, &str)]) -> Node {
        let mut m = meta(id, &format!("node-{id}"));
        m.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Node {
            meta: m,
            spec: NodeSpec { schedulable: true },
            status: NodeStatus {
                state: NodeState::Online,
                address: "127.0.0.1".into(),
                capacity: Capacity {
                    vcpus,
                    memory_bytes: mem_gib * GIB,
                    storage_bytes: 1000 * GIB,
                },
                agent_version: "t".into(),
                last_state_change_at: None,
                console_endpoint: String::new(),
                pod_artefacts_version: String::new(),
                drain: None,
            },
            allocated: Capacity::default(),
            console_secret: String::new(),
        }
    }

    fn vm(id: &str, vcpus: u32, mem_gib: u64) -> Vm {
        Vm {
            meta: meta(id, &format!("vm-{id}")),
            spec: serde_json::from_value(
                serde_json::json!({"vcpus": vcpus, "memory_bytes": mem_gib * GIB}),
            )
            .unwrap(),
            status: Status::default(),
            node_id: None,
            node_state: None,
            scheduling: Scheduling::default(),
            stop_mode: StopMode::Graceful,
            restart_generation: 0,
            migration: None,
            ha_status: None,
        }
    }

    fn state(nodes: Vec<Node>, vms: Vec<Vm>) -> State {
        let mut s = State::initial();
        for n in nodes {
            s.nodes.insert(n.meta.id.clone(), n);
        }
        for v in vms {
            s.vms.insert(v.meta.id.clone(), v);
        }
        s
    }

    #[test]
    fn a_round_since_a_revision_looks_only_at_newer_vms_and_the_key_tracks_capacity() {
        let mut old = vm("old", 16, 1);
        old.meta.spec_revision = 5;
        let mut new = vm("new", 16, 1);
        new.meta.spec_revision = 9;
        let mut s = state(vec![node("a", 4, 8, &[])], vec![old, new]);
        assert_eq!(newest_vm_spec(&s), 9);
        let all = schedule_since(&s, Strategy::Spread, None);
        assert_eq!(all.pending.len(), 2);
        let newer = schedule_since(&s, Strategy::Spread, Some(5));
        let ids: Vec<&str> = newer.pending.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["new"]);
        assert!(schedule_since(&s, Strategy::Spread, Some(9)).is_empty());

        // Anything that could make room moves the key: a node, a removal, a placed VM's spec.
        let key = capacity_key(&s);
        s.nodes.insert("b".into(), node("b", 32, 8, &[]));
        let with_node = capacity_key(&s);
        assert_ne!(key, with_node);
        s.counters.last_removal_revision = 12;
        let after_removal = capacity_key(&s);
        assert_ne!(with_node, after_removal);
        let mut placed = vm("placed", 1, 1);
        placed.node_id = Some("a".into());
        placed.meta.spec_revision = 13;
        s.vms.insert("placed".into(), placed);
        assert_ne!(after_removal, capacity_key(&s));
        // A pending VM's reason changing moves nothing.
        let before = capacity_key(&s);
        s.vms.get_mut("old").unwrap().meta.revision = 20;
        assert_eq!(before, capacity_key(&s));
    }

    fn pod(id: &str, vcpus: u32, mem_gib: u64) -> Pod {
        let spec = serde_json::from_value(serde_json::json!({
            "vcpus": vcpus, "memory_bytes": mem_gib * GIB,
            "containers": [{"name": "c", "image": "r/busybox"}],
        }))
        .unwrap();
        Pod::new(meta(id, &format!("pod-{id}")), spec)
    }

    /// A 2-vCPU node full of 1-vCPU workloads: what failed, or stopped and is to stay
    /// stopped, gives its place to a pending pod (also through the apply-time re-check); a
    /// stopped one that is to run again, and one not reported yet, keep theirs.
    #[test]
    fn failed_and_stopped_workloads_hold_no_capacity() {
        assert!(holds_capacity(DesiredState::Running, Phase::Unknown));
        assert!(holds_capacity(DesiredState::Running, Phase::Creating));
        assert!(holds_capacity(DesiredState::Running, Phase::Running));
        assert!(holds_capacity(DesiredState::Running, Phase::Stopped));
        assert!(holds_capacity(DesiredState::Stopped, Phase::Stopping));
        assert!(!holds_capacity(DesiredState::Stopped, Phase::Stopped));
        assert!(!holds_capacity(DesiredState::Running, Phase::Failed));
        assert!(!holds_capacity(DesiredState::Stopped, Phase::Failed));

        let mut s = state(vec![node("a", 2, 8, &[])], vec![]);
        for id in ["p1", "p2"] {
            let mut p = pod(id, 1, 1);
            p.node_id = Some("a".into());
            p.meta.spec_revision = 3;
            s.pods.insert(id.into(), p);
        }
        s.pods.insert("p3".into(), pod("p3", 1, 1));
        let (full_key, newest, d) = round(&s, Strategy::Spread, None);
        assert!(d.placements.is_empty(), "{d:?}");
        assert!(d.pending[0].1.contains("insufficient capacity"), "{d:?}");
        apply_decision(&mut s, &d);
        assert_eq!(held_on(&s, "a").vcpus, 2);

        // p1 fails: its status report (a new revision) moves the key, so even a round that
        // only looks at newer specs sees the pending pod again, and places it.
        let p1 = s.pods.get_mut("p1").unwrap();
        p1.status.phase = Phase::Failed;
        p1.meta.revision = 7;
        assert_eq!(held_on(&s, "a").vcpus, 1);
        assert_eq!(
            s.allocated_on("a").vcpus,
            2,
            "allocated still lists everything placed"
        );
        let (key, _, d) = round(&s, Strategy::Spread, Some((full_key, newest)));
        assert_ne!(key, full_key);
        assert_eq!(key, capacity_key(&s));
        assert_eq!(d.placements.len(), 1, "{d:?}");
        assert_eq!(d.placements[0].vm_id, "p3");
        apply_decision(&mut s, &d);
        assert_eq!(s.pods["p3"].node_id.as_deref(), Some("a"));

        // A pod stopped for good releases its vCPU; a VM stopped but to run again takes it
        // (placed by hand here), and releases it once it is to stay stopped.
        let p2 = s.pods.get_mut("p2").unwrap();
        p2.spec.desired_state = DesiredState::Stopped;
        p2.status.phase = Phase::Stopped;
        assert_eq!(held_on(&s, "a").vcpus, 1);
        let mut stopped = vm("v1", 1, 1);
        stopped.node_id = Some("a".into());
        stopped.status.phase = Phase::Stopped;
        stopped.spec.desired_state = DesiredState::Running;
        s.vms.insert("v1".into(), stopped);
        s.pods.insert("p4".into(), pod("p4", 1, 1));
        let d = schedule(&s, Strategy::Spread);
        assert!(
            d.placements.is_empty(),
            "a VM about to start keeps its place: {d:?}"
        );
        s.vms.get_mut("v1").unwrap().spec.desired_state = DesiredState::Stopped;
        let d = schedule(&s, Strategy::Spread);
        assert_eq!(d.placements.len(), 1, "{d:?}");
        apply_decision(&mut s, &d);
        assert_eq!(s.pods["p4"].node_id.as_deref(), Some("a"));
        assert_eq!(held_on(&s, "a").vcpus, 2);
    }

    fn apply_decision(s: &mut State, d: &Decision) {
        let p = Proposal {
            command: Command::Schedule {
                placements: d.placements.clone(),
                pending: d.pending.clone(),
                now: "t".into(),
            },
            idempotency: None,
            trace_id: None,
        };
        let (outcome, _) = s.apply(1, &p);
        outcome.result.unwrap();
    }

    /// A VM that no node could take whatever the capacity gets the round's reason at create;
    /// the round then has nothing to change for it. One that some node could take waits for
    /// the round, which places it.
    #[test]
    fn a_create_without_candidates_carries_the_reason_the_round_would_give() {
        let create = |s: &mut State, index: u64, v: Vm| {
            let p = Proposal {
                command: Command::CreateVm {
                    vm: v,
                    owned_volumes: vec![],
                    owned_nics: vec![],
                },
                idempotency: None,
                trace_id: None,
            };
            s.apply(index, &p).0.result.unwrap();
        };
        let with_selector = |id: &str, sel: &str| {
            let mut v = vm(id, 1, 1);
            v.spec.node_selector = Some(sel.into());
            v
        };
        // No node at all.
        let mut s = State::initial();
        create(&mut s, 1, vm("1", 1, 1));
        assert_eq!(s.vms["1"].scheduling.reason, "no online, schedulable node");
        let d = schedule(&s, Strategy::Spread);
        assert!(d.is_empty(), "nothing left to change: {d:?}");
        // Nodes, but none matches the selector (by label, id or name).
        let mut s = state(vec![node("a", 8, 16, &[("zone", "x")])], vec![]);
        create(&mut s, 1, with_selector("2", "zone=y"));
        create(&mut s, 2, with_selector("3", "none-such"));
        assert_eq!(
            s.vms["2"].scheduling.reason,
            "no online node matches node_selector \"zone=y\""
        );
        assert_eq!(
            s.vms["3"].scheduling.reason,
            "no online node matches node_selector \"none-such\""
        );
        let d = schedule(&s, Strategy::Spread);
        assert!(d.is_empty(), "nothing left to change: {d:?}");
        // A candidate (even one too small): the round decides.
        create(&mut s, 3, with_selector("4", "zone=x"));
        create(&mut s, 4, vm("5", 64, 1));
        for id in ["4", "5"] {
            assert_eq!(s.vms[id].scheduling.reason, "waiting for the scheduler");
        }
        let d = schedule(&s, Strategy::Spread);
        assert_eq!(d.placements.len(), 1, "{d:?}");
        assert_eq!(d.pending.len(), 1, "{d:?}");
        assert!(d.pending[0].1.starts_with("insufficient capacity"), "{d:?}");
    }

    #[test]
    fn spread_puts_vms_on_the_least_loaded_node() {
        let s = state(
            vec![node("a", 8, 16, &[]), node("b", 8, 16, &[])],
            vec![vm("1", 2, 2), vm("2", 2, 2)],
        );
        let d = schedule(&s, Strategy::Spread);
        let nodes: Vec<_> = d.placements.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(nodes, vec!["a", "b"]);
    }

    #[test]
    fn binpack_fills_one_node_first() {
        let s = state(
            vec![node("a", 8, 16, &[]), node("b", 8, 16, &[])],
            vec![vm("1", 2, 2), vm("2", 2, 2)],
        );
        let d = schedule(&s, Strategy::Binpack);
        assert!(d
            .placements
            .iter()
            .all(|p| p.node_id == d.placements[0].node_id));
    }

    #[test]
    fn capacity_counts_vms_already_placed() {
        let mut placed = vm("0", 6, 2);
        placed.node_id = Some("a".into());
        let s = state(vec![node("a", 8, 16, &[])], vec![placed, vm("1", 4, 2)]);
        let d = schedule(&s, Strategy::Spread);
        assert!(d.placements.is_empty());
        assert!(
            d.pending[0].1.contains("insufficient capacity"),
            "{:?}",
            d.pending
        );
    }

    #[test]
    fn selector_by_label_name_and_id() {
        let s = state(
            vec![
                node("a", 8, 16, &[("zone", "x")]),
                node("b", 8, 16, &[("zone", "y")]),
            ],
            vec![],
        );
        assert!(matches_selector(&s.nodes["a"], "zone=x"));
        assert!(!matches_selector(&s.nodes["b"], "zone=x"));
        assert!(matches_selector(&s.nodes["b"], "node-b"));
        assert!(matches_selector(&s.nodes["b"], "b"));
        let mut v = vm("1", 1, 1);
        v.spec.node_selector = Some("zone=y".into());
        let s = state(
            vec![
                node("a", 8, 16, &[("zone", "x")]),
                node("b", 8, 16, &[("zone", "y")]),
            ],
            vec![v],
        );
        assert_eq!(schedule(&s, Strategy::Spread).placements[0].node_id, "b");
    }

    #[test]
    fn volume_locality_keeps_the_vm_with_its_volume() {
        let mut s = state(vec![node("a", 8, 16, &[]), node("b", 8, 16, &[])], vec![]);
        let vol = Volume {
            meta: meta("vol", "vol"),
            spec: VolumeSpec {
                size_bytes: GIB,
                node_id: Some("b".into()),
                ..VolumeSpec::default()
            },
            status: Status::default(),
            node_id: Some("b".into()),
            owner_vm_id: None,
            vm_id: None,
            snapshots: vec![],
            rollback: None,
            promote_replica: false,
        };
        s.volumes.insert("vol".into(), vol);
        let mut v = vm("1", 1, 1);
        v.spec.volume_ids = vec!["vol".into()];
        s.vms.insert("1".into(), v);
        assert_eq!(schedule(&s, Strategy::Spread).placements[0].node_id, "b");
        s.nodes.get_mut("b").unwrap().status.state = NodeState::Offline;
        let d = schedule(&s, Strategy::Spread);
        assert!(d.placements.is_empty());
        assert!(d.pending[0].1.contains("volumes live on node b"));
    }

    #[test]
    fn a_pending_vm_is_placed_when_capacity_appears() {
        let mut s = state(vec![node("a", 1, 1, &[])], vec![vm("1", 2, 2)]);
        let d = schedule(&s, Strategy::Spread);
        assert!(d.placements.is_empty());
        apply_decision(&mut s, &d);
        assert_eq!(s.vms["1"].scheduling.state, SchedulingState::Pending);
        // The same reason is not proposed again.
        assert!(schedule(&s, Strategy::Spread).is_empty());
        s.nodes.insert("b".into(), node("b", 4, 4, &[]));
        let d = schedule(&s, Strategy::Spread);
        assert_eq!(d.placements[0].node_id, "b");
        apply_decision(&mut s, &d);
        assert_eq!(s.vms["1"].node_id.as_deref(), Some("b"));
        assert_eq!(s.vms["1"].scheduling.state, SchedulingState::Scheduled);
    }

    proptest! {
        /// Whatever the cluster and the VMs, after applying the decision no node is over
        /// capacity, and a VM stays pending only if no node could have taken it at that point.
        #[test]
        fn placements_never_exceed_capacity(
            nodes in prop::collection::vec((1u32..16, 1u64..32), 1..6),
            vms in prop::collection::vec((1u32..8, 1u64..8), 0..40),
            binpack in any::<bool>(),
        ) {
            let nodes: Vec<Node> = nodes.iter().enumerate().map(|(i, (c, m))| node(&format!("n{i}"), *c, *m, &[])).collect();
            let vms: Vec<Vm> = vms.iter().enumerate().map(|(i, (c, m))| vm(&format!("v{i:03}"), *c, *m)).collect();
            let mut s = state(nodes, vms);
            let strategy = if binpack { Strategy::Binpack } else { Strategy::Spread };
            let d = schedule(&s, strategy);
            apply_decision(&mut s, &d);
            // Every decided placement was applied (apply re-checks capacity).
            prop_assert_eq!(s.vms.values().filter(|v| v.node_id.is_some()).count(), d.placements.len());
            for n in s.nodes.values() {
                let a = s.allocated_on(&n.meta.id);
                prop_assert!(a.vcpus <= n.status.capacity.vcpus);
                prop_assert!(a.memory_bytes <= n.status.capacity.memory_bytes);
            }
            for v in s.vms.values().filter(|v| v.node_id.is_none()) {
                prop_assert!(!v.scheduling.reason.is_empty());
            }
            // Running the scheduler again places nothing new on a cluster that cannot take more:
            // any VM still pending must not fit on any node now.
            let again = schedule(&s, strategy);
            prop_assert!(again.placements.is_empty());
        }

        /// The leader's one-pass `round` decides exactly what the separate passes decide: the
        /// same key, newest spec and decision, for a full round and for one since a revision.
        #[test]
        fn a_one_pass_round_matches_the_separate_passes(
            nodes in prop::collection::vec((1u32..16, 1u64..32), 0..5),
            vms in prop::collection::vec((1u32..8, 1u64..8, 0u64..20, any::<bool>()), 0..30),
            since in 0u64..20,
            binpack in any::<bool>(),
        ) {
            let nodes: Vec<Node> = nodes.iter().enumerate().map(|(i, (c, m))| node(&format!("n{i}"), *c, *m, &[])).collect();
            let placed_on = nodes.first().map(|n| n.meta.id.clone());
            let vms: Vec<Vm> = vms.iter().enumerate().map(|(i, (c, m, rev, placed))| {
                let mut v = vm(&format!("v{i:03}"), *c, *m);
                v.meta.spec_revision = *rev;
                if *placed {
                    v.node_id = placed_on.clone();
                }
                v
            }).collect();
            let s = state(nodes, vms);
            let strategy = if binpack { Strategy::Binpack } else { Strategy::Spread };
            let key = capacity_key(&s);
            let (k, newest, full) = round(&s, strategy, None);
            prop_assert_eq!(k, key);
            prop_assert_eq!(newest, newest_vm_spec(&s));
            prop_assert_eq!(&full, &schedule(&s, strategy));
            let (_, _, partial) = round(&s, strategy, Some((key, since)));
            prop_assert_eq!(&partial, &schedule_since(&s, strategy, Some(since)));
            // A key that moved means a full round.
            let other = CapacityKey { removal_revision: key.removal_revision + 1, ..key };
            let (_, _, moved) = round(&s, strategy, Some((other, since)));
            prop_assert_eq!(&moved, &full);
        }
    }
}
