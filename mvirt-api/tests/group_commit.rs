//! Group commit: many concurrent writes on the leader share Raft entries (one log append and one
//! replication round per batch) and each still gets exactly its own outcome — uniqueness
//! conflicts, idempotent replays and successes decided in queue order — and everything
//! acknowledged survives a restart.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const UNIQUE: usize = 96;
const DUPLICATES: usize = 24;
const IDEMPOTENT: usize = 8;

fn vm_body(name: &str, vcpus: u32) -> Value {
    json!({"name": name, "spec": {"vcpus": vcpus, "memory_bytes": 1073741824u64}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_outcome() {
    let m = std::sync::Arc::new(start_member().await);
    let mut tasks = Vec::new();
    // Unique names, then a second create for some of them (one of each pair must lose with
    // 409), then pairs of identical requests under one Idempotency-Key (both get the same VM).
    for i in 0..UNIQUE + DUPLICATES + 2 * IDEMPOTENT {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let (label, body, key) = if i < UNIQUE {
                (format!("vm-{i}"), vm_body(&format!("vm-{i}"), 1), None)
            } else if i < UNIQUE + DUPLICATES {
                let n = i - UNIQUE;
                (format!("vm-{n}"), vm_body(&format!("vm-{n}"), 2), None)
            } else {
                let n = (i - UNIQUE - DUPLICATES) / 2;
                let name = format!("idem-{n}");
                (name.clone(), vm_body(&name, 1), Some(format!("key-{n}")))
            };
            let headers: Vec<(&str, &str)> = match &key {
                Some(k) => vec![("idempotency-key", k.as_str())],
                None => vec![],
            };
            let (status, value) = m
                .call_with(reqwest::Method::POST, "/v1/vms", Some(body), &headers)
                .await;
            (label, status, value)
        }));
    }
    let mut created: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut conflicts: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        let (label, status, value) = t.await.expect("task");
        match status {
            StatusCode::CREATED => created.entry(label).or_default().push(value),
            StatusCode::CONFLICT => {
                assert_eq!(value["error"]["code"], "already_exists", "{label}: {value}");
                *conflicts.entry(label).or_default() += 1;
            }
            other => panic!("{label}: unexpected {other}: {value}"),
        }
    }
    // Each duplicated name: exactly one create won, the other lost.
    for n in 0..UNIQUE {
        let name = format!("vm-{n}");
        let won = created.get(&name).map(Vec::len).unwrap_or(0);
        let lost = conflicts.get(&name).copied().unwrap_or(0);
        if n < DUPLICATES {
            assert_eq!((won, lost), (1, 1), "{name}");
        } else {
            assert_eq!((won, lost), (1, 0), "{name}");
        }
    }
    // Idempotent pairs: both acknowledged with the same VM.
    for n in 0..IDEMPOTENT {
        let got = &created[&format!("idem-{n}")];
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["id"], got[1]["id"]);
    }
    // Batching happened: the acknowledged creates used fewer Raft entries than writes.
    let revisions: BTreeSet<u64> = created
        .values()
        .flatten()
        .map(|v| v["revision"].as_u64().expect("revision"))
        .collect();
    let writes = UNIQUE + IDEMPOTENT;
    assert!(
        revisions.len() < writes,
        "{writes} concurrent creates used {} distinct revisions: no group commit",
        revisions.len()
    );
    // The state holds exactly what was acknowledged, each once.
    let acked: BTreeSet<String> = created
        .values()
        .flatten()
        .map(|v| v["id"].as_str().expect("id").to_string())
        .collect();
    let listed = |v: &Value| -> BTreeSet<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_string())
            .collect()
    };
    let (s, list) = m.get("/v1/vms?limit=1000").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(acked.len()));
    assert_eq!(listed(&list), acked);

    // Everything survives a restart from the data dir.
    let mut m = std::sync::Arc::into_inner(m).expect("sole owner");
    m.stop().await;
    let config = mvirt_api::server::ServerConfig::for_tests(
        std::net::IpAddr::from([127, 0, 0, 1]),
        m.dir.path(),
    );
    let running = mvirt_api::server::start(config, mvirt_common::Shutdown::new())
        .await
        .expect("restart");
    let url = running.api_url();
    let http = common::client_for(&running);
    let after: Value = mvirt_testsupport::process::wait_until_async(
        "VMs readable after restart",
        std::time::Duration::from_secs(20),
        || async {
            let r = http
                .get(format!("{url}/v1/vms?limit=1000"))
                .bearer_auth(&m.token)
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            r.json().await.ok()
        },
    )
    .await;
    assert_eq!(listed(&after), acked);
    running.stop().await;
}
