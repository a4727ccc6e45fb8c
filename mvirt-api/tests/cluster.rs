//! A real multi-process control plane on 127.0.0.x: late joiners catch up by snapshot,
//! replication and forwarding from followers, `kill -9` of the leader under concurrent writes
//! with a check of the client history (no acknowledged write lost), restart with data kept,
//! and member removal; the AppendEntries stream. Partitions and restarts right after writes are
//! `cluster_recovery.rs`; the process helpers are `common/processes.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mvirt_api::proto;
use mvirt_testsupport::process::wait_until_async;
use serde_json::{json, Value};

mod common;

use common::processes::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_replicates_forwards_and_survives_kill_9_of_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnFailure(root.path().to_path_buf());
    let suffix = std::process::id() % 200 + 20;
    let ips: Vec<String> = (0..3)
        .map(|i| format!("127.0.{suffix}.{}", 11 + i))
        .collect();

    // --- bootstrap A and write enough to make it snapshot and purge its log.
    let a = start(&ips[0], root.path(), "a", None);
    let c = admin_client(&a).await;
    wait_until_async("A serves", Duration::from_secs(30), || async {
        c.get(&format!("{}/v1/projects", a.url)).await
    })
    .await;
    for i in 0..PRE_WRITES {
        let (s, v) = c
            .req(
                reqwest::Method::POST,
                &format!("{}/v1/networks", a.url),
                Some(network_body(&format!("pre-{i}"), i)),
                None,
            )
            .await
            .unwrap();
        assert_eq!(s, 201, "{v}");
    }
    // Joiners must not find the first entries in A's log: wait until A purged them (the
    // snapshot is built in the background, the purge follows it).
    wait_until_async(
        "A snapshots and purges",
        Duration::from_secs(30),
        || async {
            c.controlplane(&a)
                .await
                .filter(|v| v["snapshot_index"].as_u64().is_some())
                .filter(|v| v["purged_index"].as_u64().is_some_and(|p| p > 0))
        },
    )
    .await;

    // --- B and C join late: their logs start after A's purge, so they install the snapshot.
    let t1 = join_token(&c, &a).await;
    let mut b = start(&ips[1], root.path(), "b", Some((&a.url, &t1)));
    let t2 = join_token(&c, &a).await;
    let cc = start(&ips[2], root.path(), "c", Some((&a.url, &t2)));
    wait_until_async("3 voters", Duration::from_secs(60), || async {
        (voters(&c, &a).await == 3).then_some(())
    })
    .await;
    // A join token is single-use.
    let (s, v) = c
        .req(
            reqwest::Method::POST,
            &format!("{}/v1/controlplane/join", a.url),
            Some(
                json!({"token": t1, "api_url": "https://127.0.0.1:1", "raft_addr": "127.0.0.1:1"}),
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 403, "{v}");
    for p in [&b, &cc] {
        let names = wait_until_async("joiner caught up", Duration::from_secs(60), || async {
            c.network_names(p).await.filter(|n| n.len() == PRE_WRITES)
        })
        .await;
        assert!(names.contains(&"pre-0".to_string()));
        let cp = c.controlplane(p).await.unwrap();
        assert!(
            cp["snapshot_index"].as_u64().is_some(),
            "joiner has no snapshot: {cp}"
        );
    }

    // --- writes through a follower are forwarded; reads on any member see them.
    let (s, v) = c
        .req(
            reqwest::Method::POST,
            &format!("{}/v1/networks", b.url),
            Some(network_body("via-b", 300)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let (s, _) = c
        .req(
            reqwest::Method::GET,
            &format!("{}/v1/networks/via-b", cc.url),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        s, 200,
        "a read on C after an acknowledged write through B must see it (read index)"
    );

    // --- concurrent writers on every member; kill -9 the leader in the middle.
    let leader_id = c.controlplane(&a).await.unwrap()["leader_id"]
        .as_u64()
        .unwrap();
    assert_eq!(leader_id, 1, "A bootstrapped and leads");
    let urls = vec![a.url.clone(), b.url.clone(), cc.url.clone()];
    let history: Arc<Mutex<History>> = Arc::new(Mutex::new(Vec::new()));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let stop_at = Arc::new(Mutex::new(None::<Instant>));
    let mut writers = Vec::new();
    for w in 0..4usize {
        let c = Client {
            http: c.http.clone(),
            token: c.token.clone(),
        };
        let urls = urls.clone();
        let history = history.clone();
        let acked = acked.clone();
        let stop_at = stop_at.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..400usize {
                if stop_at.lock().unwrap().is_some_and(|t| Instant::now() > t) {
                    break;
                }
                let name = format!("w{w}-{i}");
                let key = format!("key-{name}");
                // Retry the same write (same Idempotency-Key) on other members until it is
                // acknowledged or refused: exactly-once from the client's view.
                for attempt in 0..40usize {
                    let url = &urls[(w + i + attempt) % urls.len()];
                    let r = c
                        .req(
                            reqwest::Method::POST,
                            &format!("{url}/v1/networks"),
                            Some(network_body(&name, 1000 + w * 400 + i)),
                            Some(&key),
                        )
                        .await;
                    history.lock().unwrap().push((
                        name.clone(),
                        r.as_ref().map(|(s, _)| *s).map_err(|e| e.clone()),
                    ));
                    match r {
                        Ok((201, v)) => {
                            acked.lock().unwrap().insert(
                                name.clone(),
                                v["id"].as_str().unwrap_or_default().to_string(),
                            );
                            break;
                        }
                        Ok((s, v)) if s < 500 && s != 409 => {
                            panic!("write {name} refused: {s} {v}")
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }));
    }
    wait_until_async("writes in flight", Duration::from_secs(60), || async {
        (acked.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    let mut a = a;
    a.guard.kill(); // SIGKILL
    let acked_before_kill = acked.lock().unwrap().len();
    wait_until_async("new leader", Duration::from_secs(30), || async {
        let cp = c.controlplane(&b).await?;
        let l = cp["leader_id"].as_u64()?;
        (l != 1).then_some(())
    })
    .await;
    wait_until_async("writes after failover", Duration::from_secs(60), || async {
        (acked.lock().unwrap().len() >= acked_before_kill + 20).then_some(())
    })
    .await;
    *stop_at.lock().unwrap() = Some(Instant::now());
    for w in writers {
        w.await.unwrap();
    }

    // --- history check: every acknowledged write is present exactly once, with the id that
    // was acknowledged, on every surviving member; nothing unacknowledged and unattempted.
    let acked = acked.lock().unwrap().clone();
    let history = history.lock().unwrap().clone();
    assert!(
        history
            .iter()
            .any(|(_, r)| r.is_err() || r.as_ref().is_ok_and(|s| *s >= 500)),
        "the kill was not observed by any client"
    );
    for p in [&b, &cc] {
        let list = wait_until_async("full list", Duration::from_secs(30), || async {
            c.get(&format!("{}/v1/networks?limit=1000", p.url)).await
        })
        .await;
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in list["items"].as_array().unwrap() {
            by_name
                .entry(n["name"].as_str().unwrap().to_string())
                .or_default()
                .push(n["id"].as_str().unwrap().to_string());
        }
        for (name, id) in &acked {
            let ids = by_name
                .get(name)
                .unwrap_or_else(|| panic!("acknowledged write {name} lost on {}", p.url));
            assert_eq!(ids, &vec![id.clone()], "{name} on {}", p.url);
        }
        let attempted: std::collections::BTreeSet<&String> =
            history.iter().map(|(n, _)| n).collect();
        for name in by_name.keys().filter(|n| n.starts_with('w')) {
            assert!(
                attempted.contains(name),
                "{name} was never written by a client"
            );
        }
    }

    // --- the killed member restarts from its data dir and catches up.
    a.guard = spawn(&a.ip, &a.dir, a.ports, None);
    let expected = c.network_names(&b).await.unwrap().len();
    wait_until_async(
        "restarted member catches up",
        Duration::from_secs(60),
        || async { c.network_names(&a).await.filter(|n| n.len() == expected) },
    )
    .await;

    // --- NodeService on followers: register and heartbeat through one follower, watch the
    // specs on another; the VM created through REST reaches the node's stream.
    let leader_now = c.controlplane(&b).await.unwrap()["leader_id"]
        .as_u64()
        .unwrap();
    let members = [&a, &b, &cc];
    let mut followers = Vec::new();
    for p in members {
        if c.controlplane(p).await.unwrap()["member_id"].as_u64() != Some(leader_now) {
            followers.push(p);
        }
    }
    assert!(followers.len() >= 2, "expected two followers");
    let grpc = |p: &Proc| format!("https://{}:{}", p.ip, p.ports.1);
    let ca = std::fs::read_to_string(a.dir.join("tls/ca.pem")).unwrap();
    let authed = |msg| {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", c.token).parse().unwrap(),
        );
        r
    };
    let mut n1 = common::node_service(&grpc(followers[0]), &ca, None).await;
    let node_id = n1
        .register(authed(proto::RegisterRequest {
            name: "host-f".into(),
            address: "192.0.2.1".into(),
            capacity: Some(proto::NodeCapacity {
                vcpus: 4,
                memory_bytes: 4 << 30,
                storage_bytes: 100 << 30,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .node_id;
    let mut hb = tonic::Request::new(proto::HeartbeatRequest {
        node_id: node_id.clone(),
        ..Default::default()
    });
    hb.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", c.token).parse().unwrap(),
    );
    n1.heartbeat(hb).await.unwrap();
    let (s, vm) = c
        .req(
            reqwest::Method::POST,
            &format!("{}/v1/vms", followers[0].url),
            Some(json!({"name": "on-f", "spec": {"vcpus": 1, "memory_bytes": 1 << 30}})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{vm}");
    let mut n2 = common::node_service(&grpc(followers[1]), &ca, None).await;
    let mut w = tonic::Request::new(proto::WatchSpecsRequest {
        node_id: node_id.clone(),
        from_revision: 0,
    });
    w.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", c.token).parse().unwrap(),
    );
    let mut stream = n2.watch_specs(w).await.unwrap().into_inner();
    let spec = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let spec = stream.message().await.unwrap().unwrap();
            if spec.vms.iter().any(|v| v.id == vm["id"].as_str().unwrap()) {
                return spec;
            }
        }
    })
    .await
    .expect("the VM reaches the watching node through a follower");
    assert_eq!(spec.node_id, node_id);
    drop(stream);
    let (s, _) = c
        .req(
            reqwest::Method::DELETE,
            &format!("{}/v1/vms/on-f", followers[1].url),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 204);
    let mut dr = tonic::Request::new(proto::DeregisterRequest { node_id });
    dr.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", c.token).parse().unwrap(),
    );
    n2.deregister(dr).await.unwrap();

    // --- removal: B leaves the voters; the cluster keeps working with A and C.
    let b_id = c.controlplane(&b).await.unwrap()["member_id"]
        .as_u64()
        .unwrap();
    let (s, v) = c
        .req(
            reqwest::Method::DELETE,
            &format!("{}/v1/controlplane/members/{b_id}", cc.url),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 204, "{v}");
    wait_until_async("B removed", Duration::from_secs(30), || async {
        let cp = c.controlplane(&cc).await?;
        let ids: Vec<u64> = cp["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["id"].as_u64())
            .collect();
        (!ids.contains(&b_id)).then_some(())
    })
    .await;
    b.guard.kill();
    let (s, v) = wait_until_async("write after removal", Duration::from_secs(30), || async {
        c.req(
            reqwest::Method::POST,
            &format!("{}/v1/networks", cc.url),
            Some(network_body("after-removal", 5000)),
            Some("after-removal"),
        )
        .await
        .ok()
        .filter(|(s, _)| *s == 201)
    })
    .await;
    assert_eq!(s, 201, "{v}");
    // Member ids are never reused: a new joiner gets a fresh one.
    let t3 = join_token(&c, &cc).await;
    let d = start(
        &format!("127.0.{suffix}.14"),
        root.path(),
        "d",
        Some((&cc.url, &t3)),
    );
    let d_id = wait_until_async("D joined", Duration::from_secs(60), || async {
        c.controlplane(&d).await?["member_id"].as_u64()
    })
    .await;
    assert!(d_id > 3, "member id {d_id} reused");
    wait_until_async("A, C and D voters", Duration::from_secs(60), || async {
        (voters(&c, &cc).await == 3).then_some(())
    })
    .await;

    // --- membership can't be broken. A join naming a member's own addresses is refused and
    // says which member has them.
    let c_id = c.controlplane(&cc).await.unwrap()["member_id"]
        .as_u64()
        .unwrap();
    let t4 = join_token(&c, &cc).await;
    let (s, v) = c
        .req(
            reqwest::Method::POST,
            &format!("{}/v1/controlplane/join", cc.url),
            Some(json!({"token": t4, "api_url": cc.url, "raft_addr": format!("{}:{}", cc.ip, cc.ports.2)})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("member {c_id}")),
        "{v}"
    );
    // With D dead, removing C would leave A alone of {A, D}: refused (etcd's strict
    // reconfiguration check), and nothing changes.
    let mut d = d;
    d.guard.kill();
    let (s, v) = c
        .req(
            reqwest::Method::DELETE,
            &format!("{}/v1/controlplane/members/{c_id}", cc.url),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reachable and caught up"),
        "{v}"
    );
    assert_eq!(voters(&c, &cc).await, 3);
    // Removing the dead D leaves A and C, both reachable: allowed, and the cluster still writes.
    let (s, v) = c
        .req(
            reqwest::Method::DELETE,
            &format!("{}/v1/controlplane/members/{d_id}", cc.url),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 204, "{v}");
    let (s, v) = wait_until_async(
        "write after removing D",
        Duration::from_secs(30),
        || async {
            c.req(
                reqwest::Method::POST,
                &format!("{}/v1/networks", cc.url),
                Some(network_body("after-d", 5001)),
                Some("after-d"),
            )
            .await
            .ok()
            .filter(|(s, _)| *s == 201)
        },
    )
    .await;
    assert_eq!(s, 201, "{v}");
    drop(d);
}

/// The leader sends AppendEntries to each follower as frames on one upgraded connection
/// (`GET /raft/stream`). Replication in the tests above runs on it; this checks the protocol
/// itself and that strangers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_entries_stream_answers_frames_and_refuses_strangers() {
    use mvirt_api::raft::{read_frame, write_frame, TypeConfig, STREAM_PROTOCOL};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let root = tempfile::tempdir().unwrap();
    let a = start("127.0.0.1", root.path(), "a", None);
    let http = admin_client(&a).await.http;
    wait_until_async("member up", Duration::from_secs(30), || {
        let url = format!("{}/v1/health", a.url);
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    let identity: Value =
        serde_json::from_str(&std::fs::read_to_string(a.dir.join("member.json")).unwrap()).unwrap();
    let secret = identity["cluster_secret"].as_str().unwrap().to_string();
    let raft_addr = format!("{}:{}", a.ip, a.ports.2);

    // Opens the stream by hand; returns the status line and the connection.
    async fn open(
        addr: &str,
        dir: &std::path::Path,
        secret: &str,
        upgrade: bool,
    ) -> (String, mvirt_common::tls::ClientStream) {
        let mut s = common::raft_connect(addr, dir, 1).await;
        let mut req = format!(
            "GET /raft/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {secret}\r\n"
        );
        if upgrade {
            req.push_str(&format!(
                "Connection: upgrade\r\nUpgrade: {STREAM_PROTOCOL}\r\n"
            ));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(
                s.read(&mut byte).await.unwrap(),
                1,
                "connection closed early"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        (head.lines().next().unwrap_or_default().to_string(), s)
    }

    let (status, _) = open(&raft_addr, &a.dir, "not-the-secret", true).await;
    assert!(status.contains(" 401"), "{status}");
    let (status, _) = open(&raft_addr, &a.dir, &secret, false).await;
    assert!(status.contains(" 400"), "{status}");
    let (status, mut s) = open(&raft_addr, &a.dir, &secret, true).await;
    assert!(status.contains(" 101"), "{status}");

    // A stale leader's AppendEntries (term 0): the member answers with its higher vote, on
    // the same connection, twice.
    for _ in 0..2 {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(0, 99),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        write_frame(&mut s, &serde_json::to_vec(&req).unwrap())
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s))
            .await
            .expect("no answer on the stream")
            .unwrap()
            .expect("stream closed");
        let resp: Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>> =
            serde_json::from_slice(&frame).unwrap();
        assert!(
            matches!(resp, Ok(AppendEntriesResponse::HigherVote(_))),
            "{resp:?}"
        );
    }
    // A frame longer than the limit is refused by closing the stream.
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the stream stayed open after an oversized frame"
    );
    drop(a);
}
