//! Membership can't be broken, on real processes (127.0.x.y): the leader hands over before it is
//! removed; the Raft listener refuses strangers and oversized bodies on their headers; bad
//! join tokens cost no Raft write and are rate-limited per source address.

use std::time::{Duration, Instant};

use mvirt_testsupport::process::wait_until_async;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::processes::*;

/// The member that leads, as its own `/v1/controlplane` says, among `procs`.
async fn leader_of(c: &Client, procs: &[&Proc]) -> Option<(u64, usize)> {
    for (i, p) in procs.iter().enumerate() {
        if let Some(v) = c.controlplane(p).await {
            if v["state"] == "leader" {
                return Some((v["member_id"].as_u64()?, i));
            }
        }
    }
    None
}

fn member_ids(v: &Value) -> Vec<u64> {
    v["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["id"].as_u64()).collect())
        .unwrap_or_default()
}

async fn create_project(c: &Client, p: &Proc, name: &str) -> Result<(u16, Value), String> {
    c.req(
        reqwest::Method::POST,
        &format!("{}/v1/projects", p.url),
        Some(json!({"name": name})),
        Some(name),
    )
    .await
}

/// `member.*` events from `p`'s `/v1/events` (from the start of its event log) until `done`
/// holds for those read so far; each as `(type, id, role)`.
async fn member_events_until(
    c: &Client,
    p: &Proc,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    use futures::StreamExt;
    let resp = c
        .http
        .get(format!("{}/v1/events?type=member&from_revision=0", p.url))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let (mut text, mut seen) = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&seen) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("member events in time; so far {seen:?}"))
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        seen = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str::<Value>(d.trim()).unwrap())
            .map(|e| {
                assert_eq!(e["kind"], "member", "{e}");
                let role = e["object"]["role"].as_str().unwrap_or("").to_string();
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["id"].as_str().unwrap().to_string(),
                    role,
                )
            })
            .collect();
    }
    seen
}

/// The sequence from the issue: a join naming member 1's own addresses (409), then members 1,
/// 2 and 3 removed one by one through REST. Each removal of the leader hands leadership over
/// first: a new leader within 5 s, the removed member gone, writes succeed. The last voter
/// stays (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_hands_over_first_and_the_last_voter_stays() {
    let root = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnFailure(root.path().to_path_buf());
    let suffix = std::process::id() % 200 + 20;
    let ip = |i: u8| format!("127.0.{suffix}.{}", 31 + i);

    let a = start(&ip(0), root.path(), "a", None);
    let c = admin_client(&a).await;
    wait_until_async("A serves", Duration::from_secs(30), || async {
        c.get(&format!("{}/v1/projects", a.url)).await
    })
    .await;
    let t = join_token(&c, &a).await;
    let b = start(&ip(1), root.path(), "b", Some((&a.url, &t)));
    wait_until_async("B voter", Duration::from_secs(60), || async {
        (voters(&c, &a).await == 2).then_some(())
    })
    .await;
    let t = join_token(&c, &a).await;
    let cc = start(&ip(2), root.path(), "c", Some((&a.url, &t)));
    wait_until_async("C voter", Duration::from_secs(60), || async {
        (voters(&c, &a).await == 3).then_some(())
    })
    .await;

    // A join naming member 1's own addresses is refused.
    let t = join_token(&c, &a).await;
    let (s, v) = c
        .req(
            reqwest::Method::POST,
            &format!("{}/v1/controlplane/join", b.url),
            Some(json!({"token": t, "api_url": a.url, "raft_addr": format!("{}:{}", a.ip, a.ports.2)})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 409, "{v}");

    let mut procs: Vec<(u64, Proc)> = Vec::new();
    for p in [a, b, cc] {
        let id = wait_until_async("the member's id", Duration::from_secs(30), || async {
            c.controlplane(&p).await?["member_id"].as_u64()
        })
        .await;
        procs.push((id, p));
    }
    // Each join made its events on the members: joined as a learner, then a voter.
    let ev = |t: &str, id: u64, role: &str| (t.to_string(), id.to_string(), role.to_string());
    let joins: Vec<_> = procs[1..]
        .iter()
        .flat_map(|(id, _)| {
            [
                ev("member.joined", *id, "learner"),
                ev("member.updated", *id, "voter"),
            ]
        })
        .collect();
    let seen = member_events_until(&c, &procs[0].1, |seen| {
        joins.iter().all(|j| seen.contains(j))
    })
    .await;
    eprintln!("member events on the bootstrap member: {seen:?}");
    let mut written = Vec::new();
    for round in 0..3 {
        let id = procs[0].0;
        let live: Vec<&Proc> = procs.iter().map(|(_, p)| p).collect();
        let leader_before = wait_until_async("a leader", Duration::from_secs(10), || async {
            leader_of(&c, &live).await
        })
        .await;
        if round == 0 {
            assert_eq!(leader_before.0, id, "A bootstrapped and leads");
        }
        // Ask the member that is removed itself (the leader in the first round).
        let (s, v) = c
            .req(
                reqwest::Method::DELETE,
                &format!("{}/v1/controlplane/members/{id}", procs[0].1.url),
                None,
                None,
            )
            .await
            .unwrap();
        if round == 2 {
            assert_eq!(s, 409, "removing the last voter: {v}");
            break;
        }
        assert_eq!(
            s, 204,
            "removing member {id} (leader {leader_before:?}): {v}"
        );
        let removed = procs.remove(0);
        let live: Vec<&Proc> = procs.iter().map(|(_, p)| p).collect();
        let started = Instant::now();
        let (new_leader, at) = wait_until_async("a new leader", Duration::from_secs(5), || async {
            leader_of(&c, &live).await
        })
        .await;
        assert_ne!(new_leader, id);
        eprintln!(
            "removed member {id} (leader was {}); member {new_leader} leads after {:?}",
            leader_before.0,
            started.elapsed()
        );
        let view = c.controlplane(live[at]).await.unwrap();
        assert!(
            !member_ids(&view).contains(&id),
            "member {id} still in {view}"
        );
        // The removal is an event on the members that stay.
        let removed_event = ev("member.removed", id, "");
        member_events_until(&c, live[at], |seen| seen.contains(&removed_event)).await;
        let name = format!("after-removing-{id}");
        let (s, v) = create_project(&c, live[live.len() - 1], &name)
            .await
            .unwrap();
        assert_eq!(s, 201, "{v}");
        written.push(name);
        drop(removed);
    }
    for name in &written {
        let v = c
            .get(&format!("{}/v1/projects?limit=1000", procs[0].1.url))
            .await
            .unwrap();
        assert!(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == name.as_str()),
            "{name} missing"
        );
    }
}

/// Sends a request head by hand and returns the status line once it arrives, without sending
/// any body.
async fn head_only(
    addr: &str,
    dir: &std::path::Path,
    member_id: u64,
    path: &str,
    headers: &[(&str, String)],
) -> String {
    let mut s = common::raft_connect(addr, dir, member_id).await;
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer while the body was still unsent"));
    String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The Raft listener answers on the headers: no secret → 401, a `Content-Length` over the
/// route's cap → 413, both before a byte of the body was sent; a chunked body over the cap is
/// cut off with 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_listener_authenticates_and_caps_bodies_before_reading_them() {
    use mvirt_api::raftapi::{APPEND_BODY_LIMIT, SMALL_BODY_LIMIT, SNAPSHOT_BODY_LIMIT};

    let root = tempfile::tempdir().unwrap();
    let a = start("127.0.0.1", root.path(), "a", None);
    let c = admin_client(&a).await;
    wait_until_async("member up", Duration::from_secs(30), || async {
        c.controlplane(&a).await
    })
    .await;
    let identity: Value =
        serde_json::from_str(&std::fs::read_to_string(a.dir.join("member.json")).unwrap()).unwrap();
    let bearer = format!("Bearer {}", identity["cluster_secret"].as_str().unwrap());
    let raft_addr = format!("{}:{}", a.ip, a.ports.2);

    for path in [
        "/raft/append",
        "/raft/vote",
        "/raft/snapshot",
        "/raft/write",
        "/raft/elect",
    ] {
        let status = head_only(
            &raft_addr,
            &a.dir,
            1,
            path,
            &[("Content-Length", "1000000".into())],
        )
        .await;
        assert!(status.contains(" 401"), "{path} without a secret: {status}");
        // A certificate of the cluster CA for a member that is not in the cluster: 403, even
        // with the right secret, before the body.
        let status = head_only(
            &raft_addr,
            &a.dir,
            99,
            path,
            &[
                ("Authorization", bearer.clone()),
                ("Content-Length", "1000000".into()),
            ],
        )
        .await;
        assert!(status.contains(" 403"), "{path} from member 99: {status}");
        let status = head_only(
            &raft_addr,
            &a.dir,
            1,
            path,
            &[
                ("Authorization", "Bearer wrong".into()),
                ("Content-Length", "1000000".into()),
            ],
        )
        .await;
        assert!(
            status.contains(" 401"),
            "{path} with a wrong secret: {status}"
        );
    }
    for (path, cap) in [
        ("/raft/append", APPEND_BODY_LIMIT),
        ("/raft/snapshot", SNAPSHOT_BODY_LIMIT),
        ("/raft/vote", SMALL_BODY_LIMIT),
    ] {
        let status = head_only(
            &raft_addr,
            &a.dir,
            1,
            path,
            &[
                ("Authorization", bearer.clone()),
                ("Content-Type", "application/json".into()),
                ("Content-Length", (cap + 1).to_string()),
            ],
        )
        .await;
        assert!(status.contains(" 413"), "{path} over {cap} bytes: {status}");
    }
    // Chunked (no length up front): cut off at the cap — a 413, or the connection closed
    // under the sender when the answer overtakes the rest of the body.
    let raft = common::member_http(&a.dir, 1);
    let resp = raft
        .post(format!("https://{raft_addr}/raft/vote"))
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_chunks(
            SMALL_BODY_LIMIT * 2,
        )))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    // The member still serves its peers' RPCs (on a new connection: the one above may have
    // been closed under the sender, and a pooled client would reuse it).
    let raft = common::member_http(&a.dir, 1);
    let resp = raft
        .post(format!("https://{raft_addr}/raft/read-index"))
        .header("authorization", &bearer)
        .json(&())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Without a client certificate the TLS handshake is refused: no HTTP at all.
    let anonymous =
        common::https_client(&std::fs::read_to_string(a.dir.join("tls/ca.pem")).unwrap());
    let refused = anonymous
        .post(format!("https://{raft_addr}/raft/read-index"))
        .header("authorization", &bearer)
        .json(&())
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a Raft call without a member certificate: {refused:?}"
    );
    drop(a);
}

/// A body of `len` bytes in 8 KiB chunks, without a length.
fn futures_chunks(
    len: usize,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunk = 8 * 1024;
    futures::stream::iter((0..len.div_ceil(chunk)).map(move |_| Ok(vec![b' '; chunk])))
}

/// Joins with bad tokens are refused from memory (the Raft log does not move) and, past the
/// burst, with 429 and `Retry-After` — also for a good token from the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_joins_cost_no_raft_write_and_are_rate_limited() {
    use mvirt_api::app::JOIN_FAILURE_BURST;

    let root = tempfile::tempdir().unwrap();
    let a = start("127.0.0.1", root.path(), "a", None);
    let c = admin_client(&a).await;
    wait_until_async("member up", Duration::from_secs(30), || async {
        c.get(&format!("{}/v1/projects", a.url)).await
    })
    .await;
    let good = join_token(&c, &a).await;
    let last_index = |v: Value| v["last_log_index"].as_u64();
    let before = last_index(c.controlplane(&a).await.unwrap());

    let http = c.http.clone();
    let join = |token: String| {
        let http = http.clone();
        let url = format!("{}/v1/controlplane/join", a.url);
        async move {
            http.post(url)
                .json(&json!({"token": token, "api_url": "https://127.0.0.9:1", "raft_addr": "127.0.0.9:2"}))
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..JOIN_FAILURE_BURST {
        let resp = join(format!("not-a-token-{i}")).await;
        assert_eq!(resp.status(), 403, "bad join {i}");
    }
    let resp = join("not-a-token-again".into()).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Limited per address: a good token from here waits too.
    assert_eq!(join(good).await.status(), 429);

    let after = last_index(c.controlplane(&a).await.unwrap());
    assert_eq!(before, after, "bad joins moved the Raft log");
    drop(a);
}
