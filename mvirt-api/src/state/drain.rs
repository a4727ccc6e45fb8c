//! Node drain (`POST /v1/nodes/{id}/drain`): the node is cordoned and every running VM on it
//! migrates live to another node (chosen like an unnamed `POST /v1/vms/{id}/migrate`), one at
//! a time ([`DRAIN_PARALLEL`]); then every stopped VM moves cold the same way (one at a time,
//! `state/cold_move.rs`: its volumes as replicas); then the pods are moved, all in one apply
//! (stateless: evicted from the node and created on another, [`State::move_pod`]). The next migration starts inside the apply of the status
//! report that ends the previous one (completed or failed), so every member starts the same
//! one: its migration id and grant token derive from the drain's id and secret (minted once by
//! the REST handler, carried in the `DrainNode` command) and the log index — no clock or
//! randomness outside a command.
//!
//! What does not move is listed in `status.drain.failed` with the reason and the node keeps
//! it: VMs and pods no node can take (cordoned, full, selector, a node-local template), a
//! stopped VM not reported stopped yet or with volume snapshots, and failed migrations or cold
//! moves (the VM stays on the source). The drain ends `drained` when nothing failed and the
//! node holds no VM or pod, else `failed`; `DELETE /v1/nodes/{id}/drain` ends it `cancelled` (no new migration
//! starts, one in flight finishes) and uncordons the node. A drain never waits on anything but
//! a migration in flight, which its source ends; the node going offline ends it `failed`.

use sha2::{Digest, Sha256};

use super::{stamp, ApiError, Applied, Change, State};
use crate::model::*;

/// How many of a drain's migrations run at once. One: a migration streams the VM's memory and
/// disks through both agents, and the 2-core hosts this runs on have no room for more.
pub const DRAIN_PARALLEL: usize = 1;

/// The migration id of VM `vm_id`'s migration started by drain `drain_id` at log index `at`:
/// UUID-shaped, the same on every member.
fn migration_id(drain_id: &str, vm_id: &str, at: u64) -> String {
    let mut h = Sha256::new();
    for part in [drain_id.as_bytes(), vm_id.as_bytes(), &at.to_be_bytes()] {
        h.update(part);
        h.update([0]);
    }
    let x = hex::encode(&h.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// The grant token of migration `migration_id`: derived from the drain's secret (never shown).
fn grant_token(secret: &str, migration_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update([0]);
    h.update(migration_id.as_bytes());
    hex::encode(h.finalize())
}

fn failure(kind: Kind, id: &str, reason: impl Into<String>) -> DrainFailure {
    DrainFailure {
        kind: kind.as_str().to_string(),
        id: id.to_string(),
        reason: reason.into(),
    }
}

impl State {
    fn active_drain_mut(&mut self, node_id: &str) -> Option<&mut NodeDrain> {
        self.nodes
            .get_mut(node_id)?
            .status
            .drain
            .as_mut()
            .filter(|d| d.state == DrainState::Draining)
    }

    /// Starts draining node `id`: cordons it, lists what is on it and starts the first
    /// migration(s).
    pub(super) fn drain_node(
        &mut self,
        at: u64,
        id: &str,
        drain_id: &str,
        secret: &str,
        now: &str,
    ) -> Applied {
        let node = self.get::<Node>(id)?;
        let name = node.meta.name.clone();
        if node
            .status
            .drain
            .as_ref()
            .is_some_and(|d| d.state == DrainState::Draining)
        {
            return Err(ApiError::conflict(format!(
                "node {name} is draining already"
            )));
        }
        if node.status.state != NodeState::Online {
            return Err(ApiError::conflict(format!(
                "node {name} is offline: its VMs cannot migrate live"
            )));
        }
        let mut drain = NodeDrain {
            id: drain_id.to_string(),
            state: DrainState::Draining,
            started_at: now.to_string(),
            secret: secret.to_string(),
            ..NodeDrain::default()
        };
        // Running VMs first (live), then stopped ones (cold); pods when no VM is left.
        let mut stopped = Vec::new();
        for vm in self.vms.values() {
            if vm.node_id.as_deref() != Some(id) {
                continue;
            }
            let vm_id = vm.meta.id.clone();
            if vm.migration.as_ref().is_some_and(|m| m.phase.is_active()) {
                // Migrating already (asked by hand): the drain counts it when it ends.
                drain.migrating.push(vm_id);
            } else if vm.spec.desired_state == DesiredState::Running {
                drain.remaining.push(vm_id);
            } else {
                stopped.push(vm_id);
            }
        }
        drain.remaining.extend(stopped);
        let node = self.get_mut::<Node>(id)?;
        node.spec.schedulable = false;
        node.status.drain = Some(drain);
        stamp(&mut node.meta, at, now, false);
        let changes = self.drain_advance(at, id, now, "drain_started");
        let value = changes
            .last()
            .and_then(|c| c.object.clone())
            .unwrap_or_else(Json::null);
        Ok((value, changes))
    }

    /// Ends node `id`'s drain and uncordons it: a running drain ends `cancelled` (no new
    /// migration starts; one in flight finishes), an ended one's status is cleared.
    pub(super) fn undrain_node(
        &mut self,
        at: u64,
        id: &str,
        if_match: Option<u64>,
        now: &str,
    ) -> Applied {
        super::check_if_match(if_match, self.get::<Node>(id)?.meta.revision)?;
        let node = self.get_mut::<Node>(id)?;
        node.spec.schedulable = true;
        let verb = match node.status.drain.as_mut() {
            Some(d) if d.state == DrainState::Draining => {
                d.state = DrainState::Cancelled;
                d.finished_at = Some(now.to_string());
                d.secret.clear();
                "drain_cancelled"
            }
            _ => {
                node.status.drain = None;
                "uncordoned"
            }
        };
        stamp(&mut node.meta, at, now, false);
        self.answer(Kind::Node, id, verb)
    }

    /// A migration of VM `vm_id` off node `source` ended: when `source` is draining and was
    /// waiting on it, the VM counts as moved (or failed) and the next migration starts.
    pub(super) fn drain_migration_ended(
        &mut self,
        at: u64,
        source: &str,
        vm_id: &str,
        error: Option<&str>,
        now: &str,
    ) -> Vec<Change> {
        let Some(d) = self.active_drain_mut(source) else {
            return Vec::new();
        };
        let Some(pos) = d.migrating.iter().position(|v| v == vm_id) else {
            return Vec::new();
        };
        d.migrating.remove(pos);
        let cold = self
            .vms
            .get(vm_id)
            .and_then(|v| v.migration.as_ref())
            .is_some_and(|m| m.cold);
        let Some(d) = self.active_drain_mut(source) else {
            return Vec::new();
        };
        match error {
            None => d.moved.push(vm_id.to_string()),
            Some(e) if cold => d.failed.push(failure(
                Kind::Vm,
                vm_id,
                format!("the cold move failed (the VM stays here): {e}"),
            )),
            Some(e) => d.failed.push(failure(
                Kind::Vm,
                vm_id,
                format!("the migration failed (the VM runs here again): {e}"),
            )),
        }
        if let Some(node) = self.nodes.get_mut(source) {
            stamp(&mut node.meta, at, now, false);
        }
        self.drain_advance(at, source, now, "drain_progress")
    }

    /// Node `id` went offline: its drain ends `failed` (nothing more can migrate off it).
    pub(super) fn drain_node_lost(&mut self, at: u64, id: &str, now: &str) -> Vec<Change> {
        let Some(d) = self.active_drain_mut(id) else {
            return Vec::new();
        };
        let mut failed: Vec<DrainFailure> = d
            .migrating
            .drain(..)
            .map(|v| {
                failure(
                    Kind::Vm,
                    &v,
                    "the node went offline during the VM's migration",
                )
            })
            .collect();
        failed.extend(
            d.remaining
                .drain(..)
                .map(|v| failure(Kind::Vm, &v, "the node went offline before the VM moved")),
        );
        d.failed.extend(failed);
        if let Some(node) = self.nodes.get_mut(id) {
            stamp(&mut node.meta, at, now, false);
        }
        self.drain_advance(at, id, now, "drain_progress")
    }

    /// Starts migrations of the drain's remaining VMs while fewer than [`DRAIN_PARALLEL`] run,
    /// and ends the drain when nothing is left; the node's change (`verb` while it runs) comes
    /// last, after the VMs' `migration_started`.
    fn drain_advance(
        &mut self,
        at: u64,
        node_id: &str,
        now: &str,
        verb: &'static str,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        while let Some(d) = self.active_drain_mut(node_id) {
            if d.migrating.len() >= DRAIN_PARALLEL || d.remaining.is_empty() {
                break;
            }
            let vm_id = d.remaining.remove(0);
            let mid = migration_id(&d.id, &vm_id, at);
            let token = grant_token(&d.secret, &mid);
            let result = match self.vms.get(&vm_id).map(|v| v.node_id.as_deref()) {
                // Deleted meanwhile: nothing of it is left on the node.
                None => continue,
                // Moved by hand meanwhile.
                Some(on) if on != Some(node_id) => Ok(false),
                Some(_) => self
                    .migrate_vm(at, &vm_id, None, &mid, &token, now)
                    .map(|(_, c)| {
                        changes.extend(c);
                        true
                    }),
            };
            let Some(d) = self.active_drain_mut(node_id) else {
                break;
            };
            match result {
                Ok(true) => d.migrating.push(vm_id),
                Ok(false) => d.moved.push(vm_id),
                Err(e) => d.failed.push(failure(Kind::Vm, &vm_id, e.message)),
            }
        }
        let mut verb = verb;
        let vms_done = self
            .active_drain_mut(node_id)
            .is_some_and(|d| d.remaining.is_empty() && d.migrating.is_empty());
        if vms_done {
            changes.extend(self.drain_pods(at, node_id, now));
            self.drain_leftovers(node_id);
        }
        if let Some(d) = self.active_drain_mut(node_id) {
            if d.remaining.is_empty() && d.migrating.is_empty() {
                (d.state, verb) = if d.failed.is_empty() {
                    (DrainState::Drained, "drained")
                } else {
                    (DrainState::Failed, "drain_failed")
                };
                d.finished_at = Some(now.to_string());
                d.secret.clear();
            }
        }
        changes.push(self.change(Kind::Node, node_id, verb));
        changes
    }

    /// Moves every pod off draining node `node_id` (`State::move_pod`), each listed in
    /// `moved_pods` or `failed`.
    fn drain_pods(&mut self, at: u64, node_id: &str, now: &str) -> Vec<Change> {
        let pods: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.node_id.as_deref() == Some(node_id))
            .map(|p| p.meta.id.clone())
            .collect();
        let mut changes = Vec::new();
        for pod_id in pods {
            let result = self.move_pod(at, &pod_id, node_id, now);
            let Some(d) = self.active_drain_mut(node_id) else {
                break;
            };
            match result {
                Ok(change) => {
                    d.moved_pods.push(pod_id);
                    changes.push(change);
                }
                Err(why) => d.failed.push(failure(Kind::Pod, &pod_id, why)),
            }
        }
        changes
    }

    /// `drained` means the node holds nothing: a VM or pod still on it that the drain did
    /// not list (none should be: the node is cordoned) is listed as failed.
    fn drain_leftovers(&mut self, node_id: &str) {
        let here = |n: &Option<String>| n.as_deref() == Some(node_id);
        let mut left: Vec<(Kind, String)> = self
            .vms
            .values()
            .filter(|v| here(&v.node_id))
            .map(|v| (Kind::Vm, v.meta.id.clone()))
            .collect();
        left.extend(
            self.pods
                .values()
                .filter(|p| here(&p.node_id))
                .map(|p| (Kind::Pod, p.meta.id.clone())),
        );
        if let Some(d) = self.active_drain_mut(node_id) {
            for (kind, id) in left {
                if !d.failed.iter().any(|f| f.id == id) {
                    d.failed
                        .push(failure(kind, &id, "still on the node after the drain"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::migration::{MigrationUpdate, ReportedPhase};
    use super::super::tests::*;
    use super::super::*;
    use super::*;

    fn drain(s: &mut State, at: u64, id: &str) -> Result<serde_json::Value, ApiError> {
        s.apply(
            at,
            &p(Command::DrainNode {
                id: id.into(),
                drain_id: "d1".into(),
                secret: "seed".into(),
                now: format!("t{at}"),
            }),
        )
        .0
        .result
        .map(|v| v.to_value())
    }

    fn status(s: &State, id: &str) -> NodeDrain {
        s.nodes[id].status.drain.clone().expect("a drain")
    }

    /// The source's report that VM `vm`'s migration ended (`error`: failed).
    fn ended(s: &mut State, at: u64, source: &str, vm: &str, error: Option<&str>) -> Vec<Change> {
        let m = s.vms[vm].migration.clone().expect("migrating");
        let update = MigrationUpdate {
            migration_id: m.id,
            phase: if error.is_some() {
                ReportedPhase::Failed
            } else {
                ReportedPhase::Completed
            },
            bytes_transferred: 1,
            bytes_remaining: 0,
            downtime_ms: 1,
            error: error.unwrap_or_default().into(),
        };
        s.migration_reported(at, source, vm, &update, &format!("t{at}"))
    }

    /// A 1-vCPU, 256 MiB pod placed on node `on` (`selector`: its node_selector).
    fn placed_pod(s: &mut State, id: &str, on: &str, selector: Option<&str>) {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "vcpus": 1, "memory_bytes": 268435456,
            "containers": [{"name": "web", "image": "r.example:5000/httpd:1"}],
            "node_selector": selector,
        }))
        .unwrap();
        let mut pod = Pod::new(meta(id, id), spec);
        pod.node_id = Some(on.into());
        pod.status.phase = Phase::Running;
        s.pods.insert(id.into(), pod);
    }

    /// The source's report that stopped VM `vm`'s cold move sent every volume (it has none
    /// in these tests: the switch needs no replica).
    fn cold_sent(s: &mut State, at: u64, source: &str, vm: &str) -> Vec<Change> {
        let m = s.vms[vm].migration.clone().expect("moving");
        assert!(m.cold, "{m:?}");
        let status = Status {
            phase: Phase::Ready,
            ..Status::default()
        };
        s.cold_move_reported(at, source, &m.id, &status, &format!("t{at}"))
            .expect("a cold move from the source")
    }

    #[test]
    fn a_drain_moves_running_vms_then_stopped_ones_cold_then_pods() {
        let mut s = State::initial();
        s.nodes.insert("a".into(), sized_node("a", "alpha", 8));
        s.nodes.insert("b".into(), sized_node("b", "beta", 8));
        s.nodes
            .get_mut("b")
            .unwrap()
            .meta
            .labels
            .insert("disk".into(), "ssd".into());
        s.nodes.insert("c".into(), sized_node("c", "gamma", 8));
        s.nodes.get_mut("c").unwrap().status.capacity.vcpus = 0;
        s.nodes
            .get_mut("c")
            .unwrap()
            .meta
            .labels
            .insert("disk".into(), "hdd".into());
        // Ids sort the stopped VM first: the order is still running, then stopped.
        placed_vm(&mut s, "vm0", "a", false);
        placed_vm(&mut s, "vm1", "a", true);
        placed_pod(&mut s, "pod1", "a", Some("disk=ssd"));
        placed_pod(&mut s, "pod2", "a", Some("disk=hdd"));
        drain(&mut s, 10, "a").unwrap();
        let d = status(&s, "a");
        assert_eq!(
            (d.migrating.clone(), d.remaining.clone()),
            (vec!["vm1".to_string()], vec!["vm0".to_string()])
        );
        assert!(!s.vms["vm1"].migration.as_ref().unwrap().cold);
        assert!(s.vms["vm0"].migration.is_none(), "one at a time");
        assert!(
            s.pods.values().all(|p| p.node_id.as_deref() == Some("a")),
            "pods wait for the VMs"
        );
        // vm1 live on b: vm0's cold move starts in the same apply.
        ended(&mut s, 11, "a", "vm1", None);
        let m0 = s.vms["vm0"].migration.clone().unwrap();
        assert!(m0.cold && m0.target_node_id == "b", "{m0:?}");
        assert_eq!(m0.id, migration_id("d1", "vm0", 11));
        assert!(s.pods.values().all(|p| p.node_id.as_deref() == Some("a")));
        // vm0 sent: it switches to b, then the pods move in the same apply; one has no node.
        let changes = cold_sent(&mut s, 12, "a", "vm0");
        let verbs: Vec<_> = changes.iter().map(|c| (c.kind, c.verb)).collect();
        assert!(verbs.contains(&(Kind::Pod, "moved")), "{verbs:?}");
        assert_eq!(verbs.last(), Some(&(Kind::Node, "drain_failed")));
        assert_eq!(s.vms["vm0"].node_id.as_deref(), Some("b"));
        assert_eq!(s.vms["vm0"].spec.desired_state, DesiredState::Stopped);
        let pod1 = &s.pods["pod1"];
        assert_eq!(pod1.node_id.as_deref(), Some("b"));
        assert_eq!(pod1.status, Status::default(), "b reports it afresh");
        assert_eq!(s.pods["pod2"].node_id.as_deref(), Some("a"));
        let d = status(&s, "a");
        assert_eq!(
            (d.moved, d.moved_pods),
            (
                vec!["vm1".to_string(), "vm0".into()],
                vec!["pod1".to_string()]
            )
        );
        assert_eq!(d.failed.len(), 1, "{:?}", d.failed);
        assert_eq!(
            (d.failed[0].kind.as_str(), d.failed[0].id.as_str()),
            ("pod", "pod2")
        );
        let why = &d.failed[0].reason;
        assert!(
            why.contains("beta does not match") && why.contains("gamma has no capacity"),
            "{why}"
        );
        // Without pod2 the node would have been drained: it holds nothing else.
        assert!(s.vms.values().all(|v| v.node_id.as_deref() == Some("b")));
    }

    #[test]
    fn a_drain_moves_running_vms_one_at_a_time_and_lists_what_stays() {
        let mut s = State::initial();
        s.nodes.insert("a".into(), sized_node("a", "alpha", 8));
        s.nodes.insert("b".into(), sized_node("b", "beta", 8));
        placed_vm(&mut s, "vm1", "a", true);
        placed_vm(&mut s, "vm2", "a", true);
        placed_vm(&mut s, "vm3", "a", false);
        placed_vm(&mut s, "other", "b", true);
        let value = drain(&mut s, 10, "alpha").unwrap_err();
        assert_eq!(value.code, ErrorCode::NotFound, "the command takes the id");
        let value = drain(&mut s, 10, "a").unwrap();
        assert_eq!(value["status"]["drain"]["state"], "draining");
        assert!(
            value["status"]["drain"].get("secret").is_none(),
            "the secret is never shown: {value}"
        );
        assert_eq!(value["spec"]["schedulable"], false);
        let d = status(&s, "a");
        assert_eq!(
            (d.migrating.clone(), d.remaining.clone()),
            (
                vec!["vm1".to_string()],
                vec!["vm2".to_string(), "vm3".to_string()]
            )
        );
        assert!(d.failed.is_empty(), "{:?}", d.failed);
        let m1 = s.vms["vm1"].migration.clone().unwrap();
        assert_eq!(m1.target_node_id, "b");
        assert_eq!(m1.id, migration_id("d1", "vm1", 10));
        assert_eq!(m1.grant_token, grant_token("seed", &m1.id));
        assert!(s.vms["vm2"].migration.is_none(), "one at a time");
        assert_eq!(
            drain(&mut s, 11, "a").unwrap_err().code,
            ErrorCode::Conflict,
            "draining already"
        );

        // vm1 arrives on b: vm2 starts in the same apply.
        let changes = ended(&mut s, 12, "a", "vm1", None);
        let verbs: Vec<_> = changes.iter().map(|c| (c.kind, c.verb)).collect();
        assert!(
            verbs.contains(&(Kind::Vm, "migration_started")),
            "{verbs:?}"
        );
        assert_eq!(verbs.last(), Some(&(Kind::Node, "drain_progress")));
        assert_eq!(s.vms["vm1"].node_id.as_deref(), Some("b"));
        let m2 = s.vms["vm2"].migration.clone().unwrap();
        assert_eq!(m2.id, migration_id("d1", "vm2", 12));
        assert_ne!(m2.grant_token, m1.grant_token);
        assert_eq!(status(&s, "a").moved, vec!["vm1".to_string()]);

        // vm2's migration fails: the stopped vm3 moves cold next; a start of it cancels the
        // move (it starts here) and the drain ends failed, listing both.
        ended(&mut s, 13, "a", "vm2", Some("vmm gone"));
        assert!(s.vms["vm3"].migration.as_ref().is_some_and(|m| m.cold));
        let start = Command::VmAction {
            id: "vm3".into(),
            action: VmAction::Start,
            now: "t13".into(),
        };
        let changes = s.apply(13, &p(start)).1;
        let verbs: Vec<_> = changes.iter().map(|c| (c.kind, c.verb)).collect();
        assert!(verbs.contains(&(Kind::Node, "drain_failed")), "{verbs:?}");
        let d = status(&s, "a");
        assert_eq!(d.state, DrainState::Failed);
        assert_eq!(d.finished_at.as_deref(), Some("t13"));
        assert!(d.secret.is_empty());
        assert_eq!(d.failed[0].id, "vm2");
        assert!(d.failed[0].reason.contains("vmm gone"), "{:?}", d.failed);
        assert_eq!(d.failed[1].id, "vm3");
        assert!(
            d.failed[1].reason.contains("cold move failed"),
            "{:?}",
            d.failed
        );
        assert_eq!(s.vms["vm3"].node_id.as_deref(), Some("a"));
        assert_eq!(s.vms["vm2"].node_id.as_deref(), Some("a"));
        assert!(
            !s.nodes["a"].spec.schedulable,
            "a failed drain leaves it cordoned"
        );

        // Undrain: back in service, the ended drain's status cleared.
        let value = s
            .apply(
                14,
                &p(Command::UndrainNode {
                    id: "a".into(),
                    if_match: None,
                    now: "t14".into(),
                }),
            )
            .0
            .result
            .unwrap()
            .to_value();
        assert_eq!(value["spec"]["schedulable"], true);
        assert!(s.nodes["a"].status.drain.is_none());
    }

    #[test]
    fn a_drain_with_nowhere_to_go_fails_at_once_and_one_that_completes_is_drained() {
        let mut s = State::initial();
        s.nodes.insert("a".into(), sized_node("a", "alpha", 8));
        let mut b = sized_node("b", "beta", 8);
        b.spec.schedulable = false;
        s.nodes.insert("b".into(), b);
        placed_vm(&mut s, "vm1", "a", true);
        placed_vm(&mut s, "vm2", "a", true);
        drain(&mut s, 5, "a").unwrap();
        let d = status(&s, "a");
        assert_eq!(d.state, DrainState::Failed);
        assert_eq!(d.failed.len(), 2);
        assert!(d.failed[0].reason.contains("cordoned"), "{:?}", d.failed);
        assert!(s
            .vms
            .values()
            .all(|v| v.migration.is_none() && v.node_id.as_deref() == Some("a")));

        // b uncordoned, drained again: both move, the drain ends drained.
        s.nodes.get_mut("b").unwrap().spec.schedulable = true;
        drain(&mut s, 6, "a").unwrap();
        ended(&mut s, 7, "a", "vm1", None);
        let changes = ended(&mut s, 8, "a", "vm2", None);
        assert_eq!(changes.last().map(|c| c.verb), Some("drained"));
        let d = status(&s, "a");
        assert_eq!(
            (d.state, d.moved.len(), d.failed.len()),
            (DrainState::Drained, 2, 0)
        );
        assert!(s.vms.values().all(|v| v.node_id.as_deref() == Some("b")));
        // An empty node drains at once.
        drain(&mut s, 9, "a").unwrap();
        assert_eq!(status(&s, "a").state, DrainState::Drained);
    }

    #[test]
    fn a_cancelled_drain_starts_nothing_more_and_an_offline_node_ends_it() {
        let mut s = State::initial();
        s.nodes.insert("a".into(), sized_node("a", "alpha", 8));
        s.nodes.insert("b".into(), sized_node("b", "beta", 8));
        placed_vm(&mut s, "vm1", "a", true);
        placed_vm(&mut s, "vm2", "a", true);
        drain(&mut s, 5, "a").unwrap();
        s.apply(
            6,
            &p(Command::UndrainNode {
                id: "a".into(),
                if_match: None,
                now: "t6".into(),
            }),
        )
        .0
        .result
        .unwrap();
        assert_eq!(status(&s, "a").state, DrainState::Cancelled);
        assert!(s.nodes["a"].spec.schedulable);
        // The migration in flight finishes; nothing new starts.
        ended(&mut s, 7, "a", "vm1", None);
        assert_eq!(s.vms["vm1"].node_id.as_deref(), Some("b"));
        assert!(s.vms["vm2"].migration.is_none());
        assert_eq!(status(&s, "a").remaining, vec!["vm2".to_string()]);

        // Again, and the node goes offline: failed, with the reasons.
        s.apply(
            8,
            &p(Command::UndrainNode {
                id: "a".into(),
                if_match: None,
                now: "t8".into(),
            }),
        )
        .0
        .result
        .unwrap();
        placed_vm(&mut s, "vm3", "a", true);
        drain(&mut s, 9, "a").unwrap();
        let offline = Command::SetNodeState {
            id: "a".into(),
            state: NodeState::Offline,
            capacity: None,
            pod_artefacts_version: None,
            now: "t10".into(),
        };
        s.apply(10, &p(offline)).0.result.unwrap();
        let d = status(&s, "a");
        assert_eq!(d.state, DrainState::Failed);
        assert_eq!(d.failed.len(), 2, "{:?}", d.failed);
        assert!(
            d.failed.iter().all(|f| f.reason.contains("offline")),
            "{:?}",
            d.failed
        );
        let err = drain(&mut s, 11, "a").unwrap_err();
        assert!(err.message.contains("offline"), "{}", err.message);
    }

    #[test]
    fn the_drain_is_the_same_on_every_member() {
        let build = || {
            let mut s = State::initial();
            s.nodes.insert("a".into(), sized_node("a", "alpha", 8));
            s.nodes.insert("b".into(), sized_node("b", "beta", 8));
            placed_vm(&mut s, "vm1", "a", true);
            placed_vm(&mut s, "vm2", "a", true);
            drain(&mut s, 3, "a").unwrap();
            ended(&mut s, 4, "a", "vm1", None);
            s
        };
        let (one, two) = (build(), build());
        assert_eq!(one.vms["vm2"].migration, two.vms["vm2"].migration);
        assert_eq!(one.nodes["a"], two.nodes["a"]);
    }
}
