//! Tests of `apply` across kinds; each kind module tests its own rules.

use std::collections::{BTreeMap, BTreeSet};

use super::status::aggregate_node_reports;
use super::*;

pub(crate) fn meta(id: &str, name: &str) -> Meta {
    Meta {
        id: id.into(),
        name: name.into(),
        project: DEFAULT_PROJECT.into(),
        labels: BTreeMap::new(),
        revision: 0,
        spec_revision: 0,
        created_at: "t0".into(),
        updated_at: "t0".into(),
        trace_id: None,
    }
}

/// An online, schedulable node without capacity, reachable at `https://{name}:50057`, with the
/// console secret `secret-of-{id}`; tests set what they need on top.
pub(crate) fn online_node(id: &str, name: &str) -> Node {
    Node {
        meta: meta(id, name),
        spec: NodeSpec { schedulable: true },
        status: NodeStatus {
            state: NodeState::Online,
            address: "10.0.0.1".into(),
            capacity: Capacity::default(),
            agent_version: "1".into(),
            last_state_change_at: None,
            console_endpoint: format!("https://{name}:50057"),
            pod_artefacts_version: String::new(),
            drain: None,
        },
        allocated: Capacity::default(),
        console_secret: format!("secret-of-{id}"),
    }
}

/// [`online_node`] with room for `vcpus` vCPUs, 8 GiB of memory and 1 TiB of storage.
pub(crate) fn sized_node(id: &str, name: &str, vcpus: u32) -> Node {
    let mut node = online_node(id, name);
    node.status.capacity = Capacity {
        vcpus,
        memory_bytes: 8 << 30,
        storage_bytes: 1 << 40,
    };
    node
}

/// A 2-vCPU, 1 GiB VM placed on node `on`, running (desired and reported) or stopped.
pub(crate) fn placed_vm(s: &mut State, id: &str, on: &str, running: bool) {
    let mut vm = Vm::new(
        meta(id, id),
        VmSpec {
            vcpus: 2,
            memory_bytes: 1 << 30,
            hostname: None,
            boot_mode: None,
            volume_ids: Vec::new(),
            nic_ids: Vec::new(),
            user_data: None,
            ssh_authorized_keys: Vec::new(),
            desired_state: if running {
                DesiredState::Running
            } else {
                DesiredState::Stopped
            },
            node_selector: None,
            kernel_cmdline: None,
            root_volume: None,
            network_interfaces: Vec::new(),
            hugepages: false,
            nested_virtualization: false,
            ha: false,
        },
    );
    vm.node_id = Some(on.into());
    vm.status.phase = if running {
        Phase::Running
    } else {
        Phase::Stopped
    };
    s.vms.insert(id.into(), vm);
}

/// A delete of `id` without `If-Match` or `force`.
pub(crate) fn delete(kind: Kind, id: &str) -> Proposal {
    p(Command::Delete {
        kind,
        id: id.into(),
        if_match: None,
        force: false,
    })
}

/// Why `apply` refused `proposal` at `index`.
pub(crate) fn refused(s: &mut State, index: u64, proposal: &Proposal) -> ApiError {
    match s.apply(index, proposal).0.result {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => e,
    }
}

/// An update of `id`'s spec (no labels, no `If-Match`).
pub(crate) fn update(id: &str, spec: Spec) -> Proposal {
    p(Command::Update(Update {
        kind: spec.kind(),
        id: id.into(),
        if_match: None,
        labels: None,
        spec: Some(spec),
        now: "t1".into(),
    }))
}

/// A fresh state after `proposals`, applied at indexes 1, 2, … (each must be accepted).
pub(crate) fn state_after(proposals: &[Proposal]) -> State {
    let mut s = State::initial();
    for (i, proposal) in proposals.iter().enumerate() {
        if let Err(e) = s.apply(i as u64 + 1, proposal).0.result {
            panic!("proposal {i} refused: {e}");
        }
    }
    s
}

pub(crate) fn p(command: Command) -> Proposal {
    Proposal {
        command,
        idempotency: None,
        trace_id: None,
    }
}

pub(crate) fn network(id: &str, name: &str) -> Proposal {
    p(Command::CreateNetwork {
        network: Network {
            meta: meta(id, name),
            spec: NetworkSpec {
                ipv4_prefix: Some("10.0.0.0/24".into()),
                ..Default::default()
            },
            status: Status::default(),
        },
    })
}

pub(crate) fn nic(id: &str, name: &str, net: &str) -> Proposal {
    p(Command::CreateNic {
        nic: Nic {
            meta: meta(id, name),
            spec: NicSpec {
                network_id: net.into(),
                ..Default::default()
            },
            status: Status::default(),
            vm_id: None,
            owner_vm_id: None,
            pod_id: None,
            owner_pod_id: None,
        },
    })
}

#[test]
fn the_name_index_follows_creates_deletes_and_loads() {
    let mut s = State::initial();
    // Built before anything exists, so every later answer comes from its upkeep.
    assert_eq!(s.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"), None);
    let ok = |s: &mut State, i: u64, prop: Proposal| {
        let (o, _) = s.apply(i, &prop);
        o.result.map(|_| ())
    };
    ok(&mut s, 1, network("n1", "net")).unwrap();
    assert_eq!(
        s.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"),
        Some("n1".into())
    );
    assert_eq!(s.id_by_name(Kind::Network, "other", "net"), None);
    assert_eq!(s.id_by_name(Kind::Nic, DEFAULT_PROJECT, "net"), None);
    assert!(ok(&mut s, 2, network("n2", "net")).is_err(), "name taken");
    let delete = p(Command::Delete {
        kind: Kind::Network,
        id: "n1".into(),
        if_match: None,
        force: false,
    });
    ok(&mut s, 3, delete).unwrap();
    assert_eq!(s.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"), None);
    ok(&mut s, 4, network("n3", "net")).unwrap();
    assert_eq!(
        s.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"),
        Some("n3".into())
    );
    // Projects are cluster-wide: found from any project.
    assert_eq!(
        s.id_by_name(Kind::Project, "whatever", DEFAULT_PROJECT),
        Some(DEFAULT_PROJECT_ID.into())
    );
    // A snapshot (serde) and a load from rows rebuild it.
    let json = serde_json::to_string(&s).unwrap();
    let restored: State = serde_json::from_str(&json).unwrap();
    assert_eq!(
        restored.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"),
        Some("n3".into())
    );
    let mut loaded = State::initial();
    for (kind, id, json) in s.rows() {
        loaded.load_row(kind, &id, &json).unwrap();
    }
    assert_eq!(
        loaded.id_by_name(Kind::Network, DEFAULT_PROJECT, "net"),
        Some("n3".into())
    );
}

#[test]
fn tunnel_keys_are_allocated_unique_fixed_and_survive_snapshots_and_loads() {
    let mut s = State::initial();
    let key = |s: &State, id: &str| s.networks[id].spec.tunnel_key;
    for i in 0..50 {
        let (o, _) = s.apply(i + 1, &network(&format!("n{i}"), &format!("net{i}")));
        o.result.unwrap();
    }
    let keys: BTreeSet<u32> = (0..50).filter_map(|i| key(&s, &format!("n{i}"))).collect();
    assert_eq!(keys.len(), 50, "every network has its own key");
    // A requested key is honoured when free and refused (409) when taken.
    let mut asked = network("asked", "asked");
    let mut taken = network("taken", "taken");
    if let Command::CreateNetwork { network } = &mut asked.command {
        network.spec.tunnel_key = Some(4242);
    }
    if let Command::CreateNetwork { network } = &mut taken.command {
        network.spec.tunnel_key = key(&s, "n7");
    }
    s.apply(60, &asked).0.result.unwrap();
    assert_eq!(key(&s, "asked"), Some(4242));
    let err = s.apply(61, &taken).0.result.unwrap_err();
    assert_eq!(err.http_status(), 409, "{err:?}");
    // Updates keep the key (omitted) and refuse a different one.
    let update = |k: Option<u32>| {
        p(Command::Update(Update {
            kind: Kind::Network,
            id: "n3".into(),
            if_match: None,
            labels: None,
            spec: Some(Spec::Network(NetworkSpec {
                ipv4_prefix: Some("10.0.0.0/24".into()),
                tunnel_key: k,
                ..Default::default()
            })),
            now: "t1".into(),
        }))
    };
    let before = key(&s, "n3");
    s.apply(62, &update(None)).0.result.unwrap();
    assert_eq!(key(&s, "n3"), before);
    assert!(s.apply(63, &update(Some(99_999))).0.result.is_err());
    // The next key never repeats one in use, and the keys come back from rows.
    s.apply(64, &network("n50", "net50")).0.result.unwrap();
    let k50 = key(&s, "n50").unwrap();
    assert!(
        s.networks
            .values()
            .filter(|n| n.spec.tunnel_key == Some(k50))
            .count()
            == 1
    );
    let mut loaded = State::initial();
    for (kind, id, json) in s.rows() {
        loaded.load_row(kind, &id, &json).unwrap();
    }
    assert_eq!(key(&loaded, "n50"), Some(k50));
}

pub(crate) fn volume(id: &str, name: &str) -> Proposal {
    let spec = VolumeSpec {
        size_bytes: 1 << 30,
        ..Default::default()
    };
    p(Command::CreateVolume {
        volume: Volume::new(meta(id, name), spec),
    })
}

fn snapshot(volume_id: &str, id: &str, name: &str) -> Proposal {
    p(Command::CreateSnapshot {
        volume_id: volume_id.into(),
        snapshot: VolumeSnapshot {
            id: id.into(),
            name: name.into(),
            created_at: "t1".into(),
            status: SnapshotStatus::default(),
        },
    })
}

#[test]
fn rollbacks_need_a_ready_snapshot_drop_newer_ones_and_count_generations() {
    let mut s = State::initial();
    s.apply(1, &volume("v1", "data")).0.result.unwrap();
    s.volumes.get_mut("v1").unwrap().node_id = Some("node".into());
    s.apply(2, &snapshot("v1", "s1", "one")).0.result.unwrap();
    s.apply(3, &snapshot("v1", "s2", "two")).0.result.unwrap();
    let rollback = |sid: &str| {
        p(Command::RollbackSnapshot {
            volume_id: "v1".into(),
            snapshot_id: sid.into(),
            now: "t2".into(),
        })
    };
    let err = s.apply(4, &rollback("s1")).0.result.unwrap_err();
    assert_eq!(err.http_status(), 409, "a pending snapshot: {err:?}");
    for sid in ["s1", "s2"] {
        s.volumes
            .get_mut("v1")
            .unwrap()
            .snapshots
            .iter_mut()
            .find(|x| x.id == sid)
            .unwrap()
            .status
            .phase = Phase::Ready;
    }
    s.apply(5, &rollback("s1")).0.result.unwrap();
    let v = &s.volumes["v1"];
    assert_eq!(v.rollback.as_ref().unwrap().generation, 1);
    assert_eq!(v.snapshots.len(), 1, "the newer snapshot is gone");
    // The target of a rollback the node has not carried out cannot be deleted.
    let delete = p(Command::DeleteSnapshot {
        volume_id: "v1".into(),
        snapshot_id: "s1".into(),
        now: "t3".into(),
    });
    assert_eq!(s.apply(6, &delete).0.result.unwrap_err().http_status(), 409);
    s.apply(7, &rollback("s1")).0.result.unwrap();
    assert_eq!(s.volumes["v1"].rollback.as_ref().unwrap().generation, 2);
    s.volumes.get_mut("v1").unwrap().status.rollback_generation = Some(2);
    s.apply(8, &delete).0.result.unwrap();

    // Promotion: the template lives on the volume's node; clones are pinned there.
    s.apply(9, &snapshot("v1", "s3", "three")).0.result.unwrap();
    s.volumes.get_mut("v1").unwrap().snapshots[0].status.phase = Phase::Ready;
    let promote = p(Command::PromoteSnapshot {
        volume_id: "v1".into(),
        snapshot_id: "s3".into(),
        template: Template {
            meta: meta("t1", "golden"),
            spec: TemplateSpec::default(),
            status: Status::default(),
            node_id: None,
            import_cancelled: false,
        },
    });
    s.apply(10, &promote).0.result.unwrap();
    assert_eq!(s.templates["t1"].node_id.as_deref(), Some("node"));
    let mut clone = volume("v2", "clone");
    if let Command::CreateVolume { volume } = &mut clone.command {
        volume.spec.template_id = Some("t1".into());
    }
    s.apply(11, &clone).0.result.unwrap();
    assert_eq!(s.volumes["v2"].node_id.as_deref(), Some("node"));
}

#[test]
fn a_failed_node_never_hides_the_ready_copy_of_another() {
    let node = |phase: &str, message: &str| PerNodeStatus {
        phase: phase.parse().unwrap(),
        message: message.into(),
        ..Default::default()
    };
    let nodes = BTreeMap::from([
        ("a".to_string(), node("ready", "")),
        ("b".to_string(), node("failed", "checksum mismatch")),
    ]);
    let s = aggregate_node_reports(nodes, 7);
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(s.message, "node b: checksum mismatch");
    assert_eq!(s.nodes["a"].phase, Phase::Ready);
    assert_eq!(s.conditions.len(), 1);
    assert_eq!(s.conditions[0].message, "ready on 1 of 2 nodes: a");
}

fn log() -> Vec<Proposal> {
    vec![
        network("n1", "net"),
        nic("c1", "a", "n1"),
        nic("c2", "b", "n1"),
        network("n2", "net"), // refused: name taken
        p(Command::Delete {
            kind: Kind::Network,
            id: "n1".into(),
            if_match: None,
            force: false,
        }), // refused: NICs
        p(Command::Delete {
            kind: Kind::Nic,
            id: "c1".into(),
            if_match: None,
            force: false,
        }),
        nic("c3", "c", "n1"),
    ]
}

#[test]
fn replaying_the_same_log_gives_the_same_state_and_outcomes() {
    let run = || {
        let mut s = State::initial();
        let outcomes: Vec<Outcome> = log()
            .iter()
            .enumerate()
            .map(|(i, p)| s.apply(i as u64 + 1, p).0)
            .collect();
        (s, outcomes)
    };
    let (a, oa) = run();
    let (b, ob) = run();
    assert_eq!(a, b);
    assert_eq!(oa, ob);
    // c1's address was freed and reused by c3 (first free).
    assert_eq!(a.nics["c3"].spec.ipv4_address.as_deref(), Some("10.0.0.1"));
    assert_eq!(
        oa[3].result.as_ref().unwrap_err().code,
        ErrorCode::AlreadyExists
    );
    assert_eq!(oa[4].result.as_ref().unwrap_err().code, ErrorCode::Conflict);
}

#[test]
fn prune_forgets_old_idempotency_records_and_spent_join_tokens_only() {
    let mut s = State::initial();
    let keyed = |key: &str, at: i64, prop: Proposal| Proposal {
        idempotency: Some(Idempotency {
            key: key.into(),
            fingerprint: key.into(),
            created_at_ms: at,
        }),
        ..prop
    };
    s.apply(1, &keyed("old", 1_000, network("n1", "a")))
        .0
        .result
        .unwrap();
    s.apply(2, &keyed("new", 5_000, network("n2", "b")))
        .0
        .result
        .unwrap();
    let join = |id: &str, expires_at_ms: i64| {
        p(Command::CreateJoinToken {
            token: JoinToken {
                id: id.into(),
                hash: format!("hash-{id}"),
                expires_at_ms,
                used: false,
            },
        })
    };
    s.apply(3, &join("used", 10_000)).0.result.unwrap();
    s.apply(4, &join("expired", 2_000)).0.result.unwrap();
    s.apply(5, &join("live", 10_000)).0.result.unwrap();
    s.apply(
        6,
        &p(Command::ConsumeJoinToken {
            hash: "hash-used".into(),
            now_ms: 3_000,
        }),
    )
    .0
    .result
    .unwrap();

    let (outcome, changes) = s.apply(
        7,
        &p(Command::Prune {
            idempotency_before_ms: 3_000,
            now_ms: 3_000,
        }),
    );
    assert_eq!(outcome.result.unwrap().to_value()["pruned"], 3);
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|c| c.verb == "deleted"));
    assert_eq!(s.idempotency.keys().collect::<Vec<_>>(), vec!["new"]);
    assert_eq!(s.join_tokens.keys().collect::<Vec<_>>(), vec!["live"]);
    // The resources the records pointed at stay.
    assert!(s.networks.contains_key("n1"));
    assert_eq!(s.prunable(3_000, 3_000), (vec![], vec![]));
}

#[test]
fn a_refused_command_changes_nothing_and_emits_no_event() {
    let mut s = State::initial();
    for (i, prop) in log().iter().take(3).enumerate() {
        s.apply(i as u64 + 1, prop).0.result.unwrap();
    }
    let before = s.clone();
    let (outcome, changes) = s.apply(
        10,
        &p(Command::Delete {
            kind: Kind::Network,
            id: "n1".into(),
            if_match: Some(99),
            force: true,
        }),
    );
    assert_eq!(
        outcome.result.unwrap_err().code,
        ErrorCode::PreconditionFailed
    );
    assert!(changes.is_empty());
    assert_eq!(s, before);
}

#[test]
fn every_change_carries_the_revision_of_its_command() {
    let mut s = State::initial();
    let (_, changes) = s.apply(7, &network("n1", "net"));
    let events: Vec<Event> = changes.iter().filter_map(|c| c.event(7)).collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "network.created");
    assert_eq!(s.networks["n1"].meta.revision, 7);
    assert_eq!(s.networks["n1"].meta.spec_revision, 7);
}

#[test]
fn a_commands_trace_id_is_stamped_on_what_it_changed_and_kept_by_untraced_ones() {
    let mut s = State::initial();
    let traced = |prop: Proposal, id: &str| Proposal {
        trace_id: Some(id.into()),
        ..prop
    };
    let (outcome, changes) = s.apply(1, &traced(network("n1", "net"), "req-1"));
    assert_eq!(s.networks["n1"].meta.trace_id.as_deref(), Some("req-1"));
    // The event payload and the answer carry it as the object's `trace_id`.
    let answer = outcome.result.unwrap().to_value();
    assert_eq!(answer["trace_id"], "req-1", "{answer}");
    let event = changes[0].object.as_ref().unwrap().to_value();
    assert_eq!(event["trace_id"], "req-1", "{event}");
    // A command without one (a node report, the scheduler) leaves the last request's id.
    s.apply(2, &nic("c1", "nic", "n1")).0.result.unwrap();
    assert_eq!(s.nics["c1"].meta.trace_id, None);
    assert_eq!(s.networks["n1"].meta.trace_id.as_deref(), Some("req-1"));
    // The next traced change replaces it; the same log replays to the same state.
    let relabel = traced(
        p(Command::Update(Update {
            kind: Kind::Network,
            id: "n1".into(),
            if_match: None,
            labels: Some([("a".to_string(), "b".to_string())].into()),
            spec: None,
            now: "t2".into(),
        })),
        "req-2",
    );
    s.apply(3, &relabel).0.result.unwrap();
    assert_eq!(s.networks["n1"].meta.trace_id.as_deref(), Some("req-2"));
    let replayed = state_after(&[
        traced(network("n1", "net"), "req-1"),
        nic("c1", "nic", "n1"),
        relabel,
    ]);
    assert_eq!(replayed.networks["n1"], s.networks["n1"]);
    // Without a trace id the proposal's log form is what it always was.
    let plain = serde_json::to_value(network("n2", "x")).unwrap();
    assert!(plain.get("trace_id").is_none(), "{plain}");
}

#[test]
fn a_created_vm_carries_its_trace_id_in_the_answer_its_event_and_its_row() {
    let mut s = State::initial();
    s.apply(1, &volume("v1", "disk")).0.result.unwrap();
    let mut vm = Vm::new(
        meta("vm1", "web"),
        VmSpec {
            vcpus: 1,
            memory_bytes: 1 << 30,
            volume_ids: vec!["v1".into()],
            ..placed_vm_spec()
        },
    );
    vm.meta.trace_id = None;
    let create = Proposal {
        trace_id: Some("req-vm".into()),
        ..p(Command::CreateVm {
            vm,
            owned_volumes: Vec::new(),
            owned_nics: Vec::new(),
        })
    };
    let (outcome, changes) = s.apply(2, &create);
    let answer = outcome.result.unwrap().to_value();
    assert_eq!(answer["trace_id"], "req-vm", "{answer}");
    // The VM (stamped as it is created) and the volume it attached (stamped afterwards).
    for (kind, id) in [(Kind::Vm, "vm1"), (Kind::Volume, "v1")] {
        let change = changes
            .iter()
            .rev()
            .find(|c| c.kind == kind && c.id == id)
            .unwrap_or_else(|| panic!("no change of {id}"));
        let object = change.object.as_ref().unwrap();
        assert_eq!(object.to_value()["trace_id"], "req-vm", "{}", object.get());
        assert_eq!(
            Some(String::from(object.clone())),
            s.stored_json(kind, id),
            "{id}"
        );
    }
    assert_eq!(s.vms["vm1"].meta.trace_id.as_deref(), Some("req-vm"));
}

fn placed_vm_spec() -> VmSpec {
    let mut s = State::initial();
    placed_vm(&mut s, "x", "n", false);
    s.vms["x"].spec.clone()
}
