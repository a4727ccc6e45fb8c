//! The pod kind against a real in-process member: CRUD with owned NICs, names per project,
//! concurrent creates, bad input that creates nothing, If-Match, actions, scheduling beside VMs,
//! the NodeSpec a node gets, status only from the pod's node, registry secrets that never leave
//! the API (GET, lists, events, audit), and the logs/exec relays to the node agent.
//!
//! The relays are tested against a NodeAgent served in this test (a stand-in for mvirt-node:
//! mvirt-node depends on this crate); the real API → node → vmm → guest path is covered by
//! mvirt-node's end-to-end pod test.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use mvirt_api::proto::{self, node_service_client::NodeServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::transport::Channel;

const SECRET_PASSWORD: &str = "pw-Zq8-never-shown";
const SECRET_TOKEN: &str = "tok-Vx3-never-shown";
const RELAY_SECRET: &str = "relay-s3cret";

fn req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn node_client(m: &Member) -> NodeServiceClient<Channel> {
    m.node_client(None).await
}

async fn register(
    c: &mut NodeServiceClient<Channel>,
    m: &Member,
    name: &str,
    vcpus: u32,
    relay: Option<String>,
) -> String {
    register_full(c, m, name, vcpus, relay, String::new())
        .await
        .node_id
}

async fn register_full(
    c: &mut NodeServiceClient<Channel>,
    m: &Member,
    name: &str,
    vcpus: u32,
    relay: Option<String>,
    csr_pem: String,
) -> proto::RegisterResponse {
    c.register(req(
        proto::RegisterRequest {
            name: name.into(),
            address: "127.0.0.1".into(),
            capacity: Some(proto::NodeCapacity {
                vcpus,
                memory_bytes: 8 * GIB,
                storage_bytes: 100 * GIB,
            }),
            agent_version: "test".into(),
            console_endpoint: relay.unwrap_or_default(),
            console_secret: RELAY_SECRET.into(),
            csr_pem,
            ..Default::default()
        },
        &m.token,
    ))
    .await
    .expect("register")
    .into_inner()
}

async fn until(m: &Member, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    mvirt_testsupport::process::wait_until_async(what, Duration::from_secs(20), || async {
        let (s, v) = m.get(path).await;
        (s == StatusCode::OK && cond(&v)).then_some(v)
    })
    .await
}

fn container(name: &str) -> Value {
    json!({"name": name, "image": "127.0.0.1:5000/httpd:1"})
}

fn pod_body(name: &str, project: &str, spec: Value) -> Value {
    json!({"name": name, "project": project, "spec": spec})
}

async fn count(m: &Member, path: &str) -> usize {
    let (s, v) = m.get(path).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().len()
}

async fn network(m: &Member, name: &str, project: &str, prefix: &str) -> String {
    let n = m
        .create(
            "/v1/networks",
            json!({"name": name, "project": project, "spec": {"ipv4_prefix": prefix}}),
        )
        .await;
    n["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn pods_own_their_nics_obey_names_and_refuse_bad_input_without_leftovers() {
    let m = start_member().await;
    m.create("/v1/projects", json!({"name": "team-b"})).await;
    let net_a = network(&m, "net-a", "default", "10.1.0.0/24").await;
    let net_b = network(&m, "net-b", "default", "10.2.0.0/24").await;
    let net_other = network(&m, "net-a", "team-b", "10.3.0.0/24").await;
    let sg = m
        .create("/v1/security-groups", json!({"name": "web", "spec": {}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Two pods, created at the same moment, with two owned NICs each.
    let spec = |i: usize| {
        json!({
            "vcpus": 1, "memory_bytes": 256 * MIB,
            "containers": [container("web"), {"name": "side", "image": "127.0.0.1:5000/busybox:1",
                "command": ["sh", "-c"], "args": ["echo hi"], "env": {"K": "V"},
                "restart_policy": "on_failure", "ports": [{"name": "http", "container_port": 80 + i}]}],
            "network_interfaces": [
                {"network_id": net_a, "security_group_ids": [sg]},
                {"network_id": net_b}
            ]
        })
    };
    let (a, b) = tokio::join!(
        m.post("/v1/pods", pod_body("one", "default", spec(0))),
        m.post("/v1/pods", pod_body("two", "default", spec(1)))
    );
    assert_eq!(a.0, StatusCode::CREATED, "{}", a.1);
    assert_eq!(b.0, StatusCode::CREATED, "{}", b.1);
    let (one, two) = (a.1, b.1);
    assert_ne!(one["id"], two["id"]);
    assert_eq!(count(&m, "/v1/pods").await, 2);
    assert_eq!(one["scheduling"]["state"], "pending");
    assert_eq!(one["restart_generation"], 0);
    assert_eq!(one["spec"]["containers"][1]["restart_policy"], "on_failure");
    assert_eq!(one["spec"]["containers"][0]["restart_policy"], "always");
    let one_id = one["id"].as_str().unwrap().to_string();
    let nic_ids: Vec<String> = one["spec"]["nic_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(nic_ids.len(), 2);
    for (nid, net) in nic_ids.iter().zip([&net_a, &net_b]) {
        let (s, nic) = m.get(&format!("/v1/nics/{nid}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(nic["owner_pod_id"], one_id.as_str());
        assert_eq!(nic["pod_id"], one_id.as_str());
        assert_eq!(nic["spec"]["network_id"], net.as_str());
        assert!(nic["spec"]["ipv4_address"].as_str().is_some(), "{nic}");
    }
    // An owned NIC cannot be deleted under its pod.
    let (s, v) = m.delete(&format!("/v1/nics/{}", nic_ids[0])).await;
    assert_error(s, &v, 409, "conflict");
    assert_eq!(count(&m, "/v1/nics").await, 4);

    // Same name in another project is fine; a duplicate in the same project is not.
    let other = m
        .create(
            "/v1/pods",
            pod_body(
                "one",
                "team-b",
                json!({"vcpus": 1, "memory_bytes": 256 * MIB, "containers": [container("web")],
                    "network_interfaces": [{"network_id": net_other}]}),
            ),
        )
        .await;
    assert_eq!(other["project"], "team-b");
    let (s, v) = m
        .post(
            "/v1/pods",
            pod_body(
                "one",
                "default",
                json!({"vcpus": 1, "memory_bytes": 256 * MIB, "containers": [container("web")],
                    "network_interfaces": [{"network_id": net_a}]}),
            ),
        )
        .await;
    assert_error(s, &v, 409, "already_exists");
    let (s, got) = m.get("/v1/pods/one?project=team-b").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["id"], other["id"]);

    // Bad input: a clear error, and nothing created (no pod, no NIC).
    let (pods, nics) = (count(&m, "/v1/pods").await, count(&m, "/v1/nics").await);
    let base = |containers: Value, extra: Value| {
        let mut s = json!({"vcpus": 1, "memory_bytes": 256 * MIB, "containers": containers,
            "network_interfaces": [{"network_id": net_a}]});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            pod_body(
                "Bad_Name",
                "default",
                base(json!([container("web")]), json!({})),
            ),
            400,
            "invalid_argument",
            "name",
        ),
        (
            pod_body(
                "dup",
                "default",
                base(json!([container("web"), container("web")]), json!({})),
            ),
            400,
            "invalid_argument",
            "duplicate container name",
        ),
        (
            pod_body("empty", "default", base(json!([]), json!({}))),
            400,
            "invalid_argument",
            "at least one container",
        ),
        (
            pod_body(
                "img",
                "default",
                base(
                    json!([{"name": "web", "image": "bad image ref"}]),
                    json!({}),
                ),
            ),
            400,
            "invalid_argument",
            "OCI image reference",
        ),
        (
            pod_body(
                "img2",
                "default",
                base(
                    json!([{"name": "web", "image": "x".repeat(256)}]),
                    json!({}),
                ),
            ),
            400,
            "invalid_argument",
            "OCI image reference",
        ),
        (
            pod_body(
                "cname",
                "default",
                base(json!([{"name": "Web!", "image": "a/b:1"}]), json!({})),
            ),
            400,
            "invalid_argument",
            "containers.name",
        ),
        (
            pod_body(
                "pol",
                "default",
                base(
                    json!([{"name": "web", "image": "a/b:1", "restart_policy": "sometimes"}]),
                    json!({}),
                ),
            ),
            400,
            "invalid_argument",
            "on_failure",
        ),
        (
            pod_body(
                "mem",
                "default",
                base(json!([container("web")]), json!({"memory_bytes": 16 * MIB})),
            ),
            400,
            "invalid_argument",
            "memory_bytes",
        ),
        (
            pod_body(
                "nonet",
                "default",
                base(
                    json!([container("web")]),
                    json!({"network_interfaces": [{"network_id": net_a}, {"network_id": "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f"}]}),
                ),
            ),
            404,
            "not_found",
            "network",
        ),
        (
            pod_body(
                "nosg",
                "default",
                base(
                    json!([container("web")]),
                    json!({"network_interfaces": [{"network_id": net_a, "security_group_ids": ["0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f"]}]}),
                ),
            ),
            404,
            "not_found",
            "security_group",
        ),
        (
            pod_body(
                "xproj",
                "default",
                base(
                    json!([container("web")]),
                    json!({"network_interfaces": [{"network_id": net_other}]}),
                ),
            ),
            400,
            "invalid_argument",
            "project",
        ),
        (
            pod_body(
                "taken",
                "default",
                base(json!([container("web")]), json!({"nic_ids": [nic_ids[0]]})),
            ),
            409,
            "conflict",
            "attached to pod",
        ),
        (
            pod_body(
                "nocred",
                "default",
                base(
                    json!([container("web")]),
                    json!({"registry_credentials": [{"registry": "r.example:5000", "username": "u"}]}),
                ),
            ),
            400,
            "invalid_argument",
            "password",
        ),
        (
            pod_body(
                "twocred",
                "default",
                base(
                    json!([container("web")]),
                    json!({"registry_credentials": [{"registry": "r.example:5000", "username": "u", "password": "p", "token": "t"}]}),
                ),
            ),
            400,
            "invalid_argument",
            "either",
        ),
        (
            pod_body(
                "noproj",
                "nowhere",
                base(json!([container("web")]), json!({})),
            ),
            404,
            "not_found",
            "project",
        ),
    ];
    for (body, status, code, needle) in cases {
        let (s, v) = m.post("/v1/pods", body.clone()).await;
        assert_error(s, &v, status, code);
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{body}: message {msg:?} lacks {needle:?}"
        );
    }
    assert_eq!(count(&m, "/v1/pods").await, pods, "no pod was created");
    assert_eq!(count(&m, "/v1/nics").await, nics, "no NIC was created");

    // PUT: If-Match, fixed containers, desired_state and labels change.
    let path = format!("/v1/pods/{one_id}");
    let (_, cur) = m.get(&path).await;
    let rev = cur["revision"].as_u64().unwrap();
    let mut spec_stopped = cur["spec"].clone();
    spec_stopped["desired_state"] = json!("stopped");
    let (s, v) = m
        .call_with(
            reqwest::Method::PUT,
            &path,
            Some(json!({"spec": spec_stopped})),
            &[("If-Match", &format!("\"{}\"", rev + 100))],
        )
        .await;
    assert_error(s, &v, 412, "precondition_failed");
    let mut changed = cur["spec"].clone();
    changed["containers"][0]["image"] = json!("127.0.0.1:5000/httpd:2");
    let (s, v) = m.put(&path, json!({"spec": changed})).await;
    assert_error(s, &v, 409, "conflict");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("containers"));
    let (s, v) = m
        .call_with(
            reqwest::Method::PUT,
            &path,
            Some(json!({"spec": spec_stopped, "labels": {"tier": "web"}})),
            &[("If-Match", &format!("\"{rev}\""))],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["desired_state"], "stopped");
    assert_eq!(v["labels"]["tier"], "web");
    assert_eq!(v["spec"]["containers"], cur["spec"]["containers"]);

    // Actions.
    let (s, v) = m.post(&format!("{path}/start"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["desired_state"], "running");
    let (_, v) = m.post(&format!("{path}/restart"), json!({})).await;
    assert_eq!(v["restart_generation"], 1);
    let (_, v) = m.post("/v1/pods/one/restart", json!({})).await;
    assert_eq!(v["restart_generation"], 2, "by name too");
    let (_, v) = m.post(&format!("{path}/stop?force=true"), json!({})).await;
    assert_eq!(v["spec"]["desired_state"], "stopped");
    assert_eq!(v["stop_mode"], "force");
    let (s, v) = m.post(&format!("{path}/start?force=true"), json!({})).await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m.post(&format!("{path}/explode"), json!({})).await;
    assert_error(s, &v, 404, "not_found");

    // Deleting a pod deletes its owned NICs, and only those.
    let (s, _) = m.delete(&path).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for nid in &nic_ids {
        let (s, _) = m.get(&format!("/v1/nics/{nid}")).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "owned NIC {nid} deleted with its pod"
        );
    }
    assert_eq!(count(&m, "/v1/nics").await, nics - 2);
    let (s, _) = m
        .get(&format!("/v1/pods/{}", two["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK);

    // A project with a pod cannot be deleted.
    let (s, v) = m.delete("/v1/projects/team-b").await;
    assert_error(s, &v, 409, "conflict");
}

#[tokio::test]
async fn pods_are_scheduled_with_vms_get_a_nodespec_and_status_only_from_their_node() {
    let m = start_member().await;
    let mut c = node_client(&m).await;
    let node = register(&mut c, &m, "host-a", 4, None).await;
    let net = network(&m, "net", "default", "10.9.0.0/24").await;
    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "vm", "spec": {"vcpus": 2, "memory_bytes": GIB}}),
        )
        .await;
    let pod = m
        .create(
            "/v1/pods",
            json!({"name": "web", "spec": {"vcpus": 2, "memory_bytes": 512 * MIB,
                "containers": [container("web"), container("log")],
                "network_interfaces": [{"network_id": net}],
                "registry_credentials": [{"registry": "127.0.0.1:5000", "username": "u", "password": SECRET_PASSWORD}]}}),
        )
        .await;
    let pod_id = pod["id"].as_str().unwrap().to_string();
    let pod_path = format!("/v1/pods/{pod_id}");
    until(&m, &pod_path, "pod placed", |v| {
        v["node_id"] == node.as_str()
    })
    .await;
    until(
        &m,
        &format!("/v1/vms/{}", vm["id"].as_str().unwrap()),
        "VM placed",
        |v| v["node_id"] == node.as_str(),
    )
    .await;
    // The node is full now (2 + 2 of 4 vCPUs): the next pod waits with the reason.
    let full = m
        .create(
            "/v1/pods",
            json!({"name": "more", "spec": {"vcpus": 1, "memory_bytes": 256 * MIB,
                "containers": [container("web")]}}),
        )
        .await;
    let waiting = until(
        &m,
        &format!("/v1/pods/{}", full["id"].as_str().unwrap()),
        "scheduling reason",
        |v| {
            v["scheduling"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("insufficient capacity")
        },
    )
    .await;
    assert_eq!(waiting["scheduling"]["state"], "pending");
    let (_, n) = m.get(&format!("/v1/nodes/{node}")).await;
    assert_eq!(n["allocated"]["vcpus"], 4, "{n}");
    // A node selector that matches nothing.
    let sel = m
        .create(
            "/v1/pods",
            json!({"name": "picky", "spec": {"vcpus": 1, "memory_bytes": 256 * MIB,
                "containers": [container("web")], "node_selector": "zone=mars"}}),
        )
        .await;
    until(
        &m,
        &format!("/v1/pods/{}", sel["id"].as_str().unwrap()),
        "selector reason",
        |v| {
            v["scheduling"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("node_selector")
        },
    )
    .await;

    // The node's desired set carries the pod (with the secret the node needs) and its NIC.
    let mut stream = c
        .watch_specs(req(
            proto::WatchSpecsRequest {
                node_id: node.clone(),
                from_revision: 0,
            },
            &m.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let spec = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(spec.pods.len(), 1, "{spec:?}");
    let p = &spec.pods[0];
    assert_eq!(p.id, pod_id);
    assert_eq!(p.vcpus, 2);
    assert_eq!(p.containers.len(), 2);
    assert_eq!(p.containers[0].image, "127.0.0.1:5000/httpd:1");
    assert_eq!(
        p.containers[0].restart_policy,
        proto::PodRestartPolicy::Always as i32
    );
    assert_eq!(p.registry_credentials[0].password, SECRET_PASSWORD);
    assert_eq!(p.nic_ids.len(), 1);
    let nic = spec
        .nics
        .iter()
        .find(|n| n.id == p.nic_ids[0])
        .expect("pod NIC");
    assert_eq!(nic.pod_id, pod_id);
    assert_eq!(nic.owner_pod_id, pod_id);
    assert!(spec.networks.iter().any(|n| n.id == net));

    // Status comes from the pod's node only.
    let other = register(&mut c, &m, "host-b", 4, None).await;
    let report = |node: &str| proto::UpdateResourceStatusRequest {
        node_id: node.to_string(),
        statuses: vec![proto::ResourceStatus {
            kind: proto::ResourceKind::Pod as i32,
            id: pod_id.clone(),
            phase: proto::Phase::Running as i32,
            ipv4_addresses: vec!["10.9.0.1".into()],
            artefacts_version: "pod-1".into(),
            containers: vec![
                proto::PodContainerStatus {
                    name: "web".into(),
                    image: "127.0.0.1:5000/httpd:1".into(),
                    image_digest: "sha256:abc".into(),
                    state: proto::PodContainerState::Running as i32,
                    restart_count: 1,
                    started_at_ms: 1_700_000_000_000,
                    ..Default::default()
                },
                proto::PodContainerStatus {
                    name: "log".into(),
                    state: proto::PodContainerState::Exited as i32,
                    exit_code: 3,
                    oom_killed: true,
                    finished_at_ms: 1_700_000_001_000,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
    };
    let r = c
        .update_resource_status(req(report(&other), &m.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 0);
    assert_eq!(r.unknown_ids, vec![pod_id.clone()]);
    let (_, v) = m.get(&pod_path).await;
    assert_eq!(
        v["status"]["phase"], "",
        "another node's report is ignored: {v}"
    );
    let r = c
        .update_resource_status(req(report(&node), &m.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    let (_, v) = m.get(&pod_path).await;
    let st = &v["status"];
    assert_eq!(st["phase"], "running", "{v}");
    assert_eq!(st["artefacts_version"], "pod-1");
    assert_eq!(st["ipv4_addresses"], json!(["10.9.0.1"]));
    assert_eq!(st["containers"][0]["state"], "running");
    assert_eq!(st["containers"][0]["image_digest"], "sha256:abc");
    assert_eq!(st["containers"][0]["restart_count"], 1);
    assert!(st["containers"][0]["exit_code"].is_null());
    assert_eq!(st["containers"][1]["state"], "exited");
    assert_eq!(st["containers"][1]["exit_code"], 3);
    assert_eq!(st["containers"][1]["oom_killed"], true);
    assert!(st["containers"][1]["finished_at"]
        .as_str()
        .unwrap()
        .starts_with("2023-11-14T22:13:21"));

    // A node with a pod cannot be deleted; after the pod is gone it can.
    let (s, v) = m.delete(&format!("/v1/nodes/{node}")).await;
    assert_error(s, &v, 409, "conflict");
    assert!(v.to_string().contains(&format!("pod/{pod_id}")), "{v}");
    // Deleting frees the capacity: the waiting pod is placed.
    let (s, _) = m.delete(&pod_path).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    until(
        &m,
        &format!("/v1/pods/{}", full["id"].as_str().unwrap()),
        "waiting pod placed",
        |v| v["scheduling"]["state"] == "scheduled",
    )
    .await;
}

/// Reads the SSE backlog from revision 0 until an event satisfies `last`.
async fn events_until(m: &Member, last: impl Fn(&Value) -> bool) -> String {
    let resp = m
        .http
        .get(format!("{}/v1/events?from_revision=0", m.url))
        .bearer_auth(&m.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let mut all = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .unwrap();
        all.push_str(&String::from_utf8_lossy(&chunk));
        let done = all
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .any(|e| last(&e));
        if done {
            return all;
        }
    }
}

#[tokio::test]
async fn registry_secrets_never_leave_the_api() {
    let log_dir = tempfile::tempdir().unwrap();
    let log_server = mvirt_log::server::BoundServer::bind(mvirt_log::server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: log_dir.path().to_path_buf(),
        retention: Default::default(),
    })
    .await
    .expect("bind mvirt-log");
    let log_addr = log_server.local_addr();
    let log_shutdown = mvirt_common::Shutdown::new();
    let s = log_shutdown.clone();
    tokio::spawn(async move { log_server.serve(s).await });
    let m = start_member_with(|c| c.log_endpoint = format!("http://{log_addr}")).await;

    let creds = json!([
        {"registry": "10.0.0.1:5000", "username": "alice", "password": SECRET_PASSWORD},
        {"registry": "ghcr.example", "token": SECRET_TOKEN}
    ]);
    let body = json!({"name": "private", "spec": {"vcpus": 1, "memory_bytes": 256 * MIB,
        "containers": [{"name": "app", "image": "10.0.0.1:5000/team/app:1"}],
        "registry_credentials": creds}});
    let (s, created) = m
        .call_with(
            reqwest::Method::POST,
            "/v1/pods",
            Some(body.clone()),
            &[("Idempotency-Key", "k1")],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["spec"]["registry_credentials"],
        json!([{"registry": "10.0.0.1:5000", "username": "alice"}, {"registry": "ghcr.example"}])
    );
    // A replay of the create answers from the record: no secret either.
    let (s, replay) = m
        .call_with(
            reqwest::Method::POST,
            "/v1/pods",
            Some(body),
            &[("Idempotency-Key", "k1")],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(replay["id"], created["id"]);

    // An update that sends back what GET showed keeps the stored secrets; a new registry
    // without a secret is refused.
    let path = format!("/v1/pods/{id}");
    let (_, got) = m.get(&path).await;
    let mut spec = got["spec"].clone();
    spec["desired_state"] = json!("stopped");
    let (s, updated) = m.put(&path, json!({"spec": spec.clone()})).await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    let mut bad = spec.clone();
    bad["registry_credentials"][0]["username"] = json!("mallory");
    let (s, v) = m.put(&path, json!({"spec": bad})).await;
    assert_error(s, &v, 400, "invalid_argument");
    let (_, acted) = m.post(&format!("{path}/restart"), json!({})).await;
    let (_, list) = m.get("/v1/pods").await;
    let (_, got) = m.get(&path).await;
    let (s, _) = m.delete(&path).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let events = events_until(&m, |e| e["type"] == "pod.deleted" && e["id"] == id.as_str()).await;
    assert!(events.contains("pod.created") && events.contains("pod.updated"));
    for (what, text) in [
        ("create response", created.to_string()),
        ("replayed create", replay.to_string()),
        ("update response", updated.to_string()),
        ("action response", acted.to_string()),
        ("list", list.to_string()),
        ("get", got.to_string()),
        ("events", events),
    ] {
        for secret in [SECRET_PASSWORD, SECRET_TOKEN] {
            assert!(
                !text.contains(secret),
                "{what} carries a registry secret: {text}"
            );
        }
    }
    // The audit log has the pod's create, update, action and delete, and no secret.
    let page = mvirt_testsupport::process::wait_until_async(
        "audit entries",
        Duration::from_secs(20),
        || async {
            let (s, v) = m.get(&format!("/v1/logs?object_id={id}&level=audit")).await;
            (s == StatusCode::OK && v["entries"].as_array()?.len() >= 4).then_some(v)
        },
    )
    .await;
    let audit = page.to_string();
    for op in ["create_pod", "update", "pod_action", "delete"] {
        assert!(audit.contains(op), "audit lacks {op}: {audit}");
    }
    for secret in [SECRET_PASSWORD, SECRET_TOKEN] {
        assert!(!audit.contains(secret), "audit carries a secret: {audit}");
    }
    log_shutdown.trigger();
}

// ------------------------------------------------------------------------------ relay tests

/// What the stand-in node saw.
#[derive(Default)]
struct Seen {
    logs: Vec<proto::PodLogsRequest>,
    exec_starts: Vec<proto::PodExecStart>,
}

/// A stand-in for mvirt-node's NodeAgent: checks the relay secret; `PodLogs` serves five lines
/// (the last on stderr) honouring `tail`, and with `follow` one more line later; `PodExec`
/// echoes stdin on stdout, says what it was started with and every resize, and ends with exit
/// code 3 when stdin is closed.
struct PodNode {
    seen: Arc<Mutex<Seen>>,
}

type Out<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

fn check_secret<T>(r: &tonic::Request<T>) -> Result<(), tonic::Status> {
    let auth = r
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {RELAY_SECRET}") {
        return Err(tonic::Status::unauthenticated("bad relay secret"));
    }
    // Like the node agent: only a member (its client certificate) may relay.
    let member = r
        .extensions()
        .get::<mvirt_common::tls::PeerInfo>()
        .and_then(|p| p.identity.clone())
        .and_then(|i| i.member_id());
    if member.is_none() {
        return Err(tonic::Status::permission_denied("not a member"));
    }
    Ok(())
}

fn spawned<T: Send + 'static, F, Fut>(f: F) -> Out<T>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl proto::node_agent_server::NodeAgent for PodNode {
    type ConsoleStream = Out<proto::ConsoleFrame>;
    type PodLogsStream = Out<proto::PodLogEntry>;
    type PodExecStream = Out<proto::PodExecOutput>;

    async fn console(
        &self,
        _: tonic::Request<tonic::Streaming<proto::ConsoleFrame>>,
    ) -> Result<tonic::Response<Self::ConsoleStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("no consoles here"))
    }

    async fn get_stats(
        &self,
        _: tonic::Request<proto::GetStatsRequest>,
    ) -> Result<tonic::Response<proto::NodeStats>, tonic::Status> {
        Err(tonic::Status::unimplemented("this stand-in has no stats"))
    }

    async fn get_host(
        &self,
        _: tonic::Request<proto::GetHostRequest>,
    ) -> Result<tonic::Response<proto::HostInfo>, tonic::Status> {
        Err(tonic::Status::unimplemented("no host here"))
    }

    async fn pod_logs(
        &self,
        request: tonic::Request<proto::PodLogsRequest>,
    ) -> Result<tonic::Response<Self::PodLogsStream>, tonic::Status> {
        check_secret(&request)?;
        let r = request.into_inner();
        self.seen.lock().unwrap().logs.push(r.clone());
        if r.container == "sleepy" {
            return Err(tonic::Status::failed_precondition(
                "container sleepy is not running",
            ));
        }
        let mut lines: Vec<proto::PodLogEntry> = (0..5)
            .map(|i| proto::PodLogEntry {
                timestamp_ns: 1_700_000_000_000_000_000 + i,
                stream: if i == 4 { "stderr" } else { "stdout" }.into(),
                line: format!("{} line {i}", r.container).into_bytes(),
            })
            .collect();
        if r.tail > 0 {
            let keep = lines.len().saturating_sub(r.tail as usize);
            lines.drain(..keep);
        }
        Ok(tonic::Response::new(spawned(move |tx| async move {
            for l in lines {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
            if r.follow {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = tx
                    .send(Ok(proto::PodLogEntry {
                        timestamp_ns: 1_700_000_001_000_000_000,
                        stream: "stdout".into(),
                        line: b"followed".to_vec(),
                    }))
                    .await;
                // Stay open until the client goes away.
                tx.closed().await;
            }
        })))
    }

    async fn pod_exec(
        &self,
        request: tonic::Request<tonic::Streaming<proto::PodExecInput>>,
    ) -> Result<tonic::Response<Self::PodExecStream>, tonic::Status> {
        use proto::pod_exec_input::Input;
        use proto::pod_exec_output::Output;
        check_secret(&request)?;
        let mut input = request.into_inner();
        let Some(proto::PodExecInput {
            input: Some(Input::Start(start)),
        }) = input.message().await?
        else {
            return Err(tonic::Status::invalid_argument(
                "the first message must be start",
            ));
        };
        self.seen.lock().unwrap().exec_starts.push(start.clone());
        if start.container == "sleepy" {
            return Err(tonic::Status::failed_precondition(
                "container sleepy is not running",
            ));
        }
        Ok(tonic::Response::new(spawned(move |tx| async move {
            let out = |o: Output| Ok(proto::PodExecOutput { output: Some(o) });
            let hello = format!(
                "argv={} tty={} container={} size={}x{}\n",
                start.command.join(" "),
                start.tty,
                start.container,
                start.cols,
                start.rows
            );
            let _ = tx.send(out(Output::Stdout(hello.into_bytes()))).await;
            while let Ok(Some(msg)) = input.message().await {
                let o = match msg.input {
                    Some(Input::Stdin(b)) => Output::Stdout(b),
                    Some(Input::Resize(s)) => {
                        Output::Stderr(format!("resize {}x{}\n", s.cols, s.rows).into_bytes())
                    }
                    Some(Input::CloseStdin(_)) => {
                        let _ = tx.send(out(Output::ExitCode(3))).await;
                        return;
                    }
                    _ => continue,
                };
                if tx.send(out(o)).await.is_err() {
                    return;
                }
            }
        })))
    }
}

async fn ndjson(m: &Member, path: &str) -> (StatusCode, String, Vec<Value>) {
    let resp = m
        .http
        .get(format!("{}{path}", m.url))
        .bearer_auth(&m.token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::String(l.into())))
        .collect();
    (status, ct, lines)
}

/// Connects an exec WebSocket with the bearer header.
async fn exec_ws(
    m: &Member,
    query: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<mvirt_common::tls::ClientStream>,
    tokio_tungstenite::tungstenite::Error,
> {
    ws_connect(m, &format!("/v1/pods/duo/exec?{query}"), true).await
}

/// A WebSocket to `path` over the REST listener's TLS (with the bearer header if `auth`).
async fn ws_connect(
    m: &Member,
    path: &str,
    auth: bool,
) -> Result<
    tokio_tungstenite::WebSocketStream<mvirt_common::tls::ClientStream>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{path}", m.url.replace("https://", "wss://"));
    let mut request = url.into_client_request().unwrap();
    if auth {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", m.token).parse().unwrap(),
        );
    }
    let rest_addr = m.url.trim_start_matches("https://").to_string();
    let tls = mvirt_common::tls::client_config(&m.ca_pem, None).unwrap();
    let stream = mvirt_common::tls::connect(&rest_addr, "127.0.0.1", tls)
        .await
        .unwrap();
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

/// The next binary frame as (channel, payload).
async fn next_frame<S>(ws: &mut S) -> (u8, Vec<u8>)
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = msg {
            return (b[0], b[1..].to_vec());
        }
    }
}

#[tokio::test]
async fn logs_and_exec_are_relayed_to_the_pods_node() {
    use tokio_tungstenite::tungstenite::Message;

    let m = start_member().await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let mut c = node_client(&m).await;
    // The stand-in serves TLS with the node certificate Register issues for its CSR and
    // requires a member's client certificate, as mvirt-node's agent does.
    let (csr, key) = mvirt_common::tls::generate_csr("host-a", &["127.0.0.1".into()]).unwrap();
    let registered = register_full(
        &mut c,
        &m,
        "host-a",
        8,
        Some(format!("https://{relay_addr}")),
        csr,
    )
    .await;
    let node = registered.node_id;
    let cert = mvirt_common::tls::CertStore::from_pem(&registered.certificate_pem, &key).unwrap();
    let relay_tls = mvirt_common::tls::server_config(
        &cert,
        mvirt_common::tls::ClientAuth::Required(m.ca_pem.clone()),
    )
    .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::node_agent_server::NodeAgentServer::new(PodNode {
                seen: seen.clone(),
            }))
            .serve_with_incoming(mvirt_common::tls::TlsIncoming::new(
                listener,
                Some(relay_tls),
            )),
    );
    let duo = m
        .create(
            "/v1/pods",
            json!({"name": "duo", "spec": {"vcpus": 1, "memory_bytes": 256 * MIB,
                "containers": [container("web"), container("sleepy")]}}),
        )
        .await;
    let solo = m
        .create(
            "/v1/pods",
            json!({"name": "solo", "spec": {"vcpus": 1, "memory_bytes": 256 * MIB,
                "containers": [container("only")]}}),
        )
        .await;
    for p in [&duo, &solo] {
        until(
            &m,
            &format!("/v1/pods/{}", p["id"].as_str().unwrap()),
            "placed",
            |v| v["node_id"] == node.as_str(),
        )
        .await;
    }
    let duo_id = duo["id"].as_str().unwrap().to_string();

    // Logs: the container must be named when there are several.
    let (s, _, body) = ndjson(&m, "/v1/pods/duo/logs").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let msg = body[0]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("web") && msg.contains("sleepy"), "{msg}");
    let (s, _, body) = ndjson(&m, "/v1/pods/duo/logs?container=nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body:?}");
    // The node's refusal comes back with its message.
    let (s, _, body) = ndjson(&m, "/v1/pods/duo/logs?container=sleepy").await;
    assert_eq!(s, StatusCode::CONFLICT, "{body:?}");
    assert!(body[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not running"));
    let (s, ct, lines) = ndjson(&m, "/v1/pods/duo/logs?container=web&tail=2").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ct, "application/x-ndjson");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        json!({"container": "web", "stream": "stdout", "time": "2023-11-14T22:13:20.000000003Z", "line": "web line 3"})
    );
    assert_eq!(lines[1]["stream"], "stderr");
    // A single container needs no name.
    let (s, _, lines) = ndjson(
        &m,
        &format!("/v1/pods/{}/logs", solo["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["line"], "only line 0");
    // follow keeps the response open and streams what comes later.
    let resp = m
        .http
        .get(format!(
            "{}/v1/pods/duo/logs?container=web&follow=true&tail=1",
            m.url
        ))
        .bearer_auth(&m.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("followed") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("followed line in time")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.starts_with("{\"container\":\"web\",\"stream\":\"stderr\""),
        "{text}"
    );
    drop(stream);
    {
        let seen = seen.lock().unwrap();
        let last = seen.logs.last().unwrap();
        assert_eq!(last.pod_id, duo_id);
        assert_eq!(
            (last.container.as_str(), last.tail, last.follow),
            ("web", 1, true)
        );
    }

    // Exec: a missing container name is an HTTP 400 before any upgrade.
    match exec_ws(&m, "command=true").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("web") && body.contains("sleepy"), "{body}");
        }
        other => panic!("expected HTTP 400, got {:?}", other.map(|_| ())),
    }
    // Without a token: 401.
    match ws_connect(&m, "/v1/pods/duo/exec?container=web", false).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected HTTP 401, got {:?}", other.map(|_| ())),
    }

    let mut ws = exec_ws(
        &m,
        "container=web&tty=true&rows=24&cols=80&command=sh&command=-c&command=echo%20a%20b",
    )
    .await
    .expect("exec websocket");
    let (ch, data) = next_frame(&mut ws).await;
    assert_eq!(ch, 1);
    assert_eq!(
        String::from_utf8(data).unwrap(),
        "argv=sh -c echo a b tty=true container=web size=80x24\n"
    );
    ws.send(Message::Binary(
        [&[4u8][..], br#"{"cols": 120, "rows": 40}"#]
            .concat()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_frame(&mut ws).await, (2, b"resize 120x40\n".to_vec()));
    ws.send(Message::Binary([&[0u8][..], b"hello\n"].concat().into()))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut ws).await, (1, b"hello\n".to_vec()));
    // An empty stdin frame closes stdin: the process exits, the status follows, then close.
    ws.send(Message::Binary(vec![0u8].into())).await.unwrap();
    let (ch, data) = next_frame(&mut ws).await;
    assert_eq!(ch, 3);
    assert_eq!(
        serde_json::from_slice::<Value>(&data).unwrap(),
        json!({"exit_code": 3})
    );
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(end, Some(Ok(Message::Close(_))) | None),
        "expected a close, got {end:?}"
    );

    // A refusal of the node arrives as a status frame with its reason.
    let mut ws = exec_ws(&m, "container=sleepy&command=ls")
        .await
        .expect("exec websocket");
    let (ch, data) = next_frame(&mut ws).await;
    assert_eq!(ch, 3);
    let status: Value = serde_json::from_slice(&data).unwrap();
    assert!(
        status["error"].as_str().unwrap().contains("not running"),
        "{status}"
    );

    let starts = seen.lock().unwrap().exec_starts.clone();
    assert_eq!(starts[0].pod_id, duo_id);
    assert_eq!(starts[0].command, ["sh", "-c", "echo a b"]);
    assert!(starts[0].tty);
    assert_eq!(starts[1].command, ["ls"]);
    assert!(!starts[1].tty);
}
