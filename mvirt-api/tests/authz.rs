//! Tokens that can do only what they must (README "Tokens and roles").
//!
//! The generated test walks every operation of `/v1/openapi.json` with an admin, an operator, a
//! viewer, an operator limited to project `a`, and a node token, and compares each status with
//! the table below (the rule each route falls under and what an allowed caller gets from the
//! probe). An operation missing from the table — a new route without a rule — fails the test,
//! and so does a table row the API does not have. Probes change nothing that later probes
//! depend on: bodies are invalid (`{"authz_probe": true}`: 400 once allowed), deletes carry a
//! stale `If-Match` (412) or name nothing (404).
//!
//! Also: node token binding across two nodes, a scoped token not seeing another project's
//! same-named VM, events filtered for a scoped viewer, lists and creates of scoped tokens.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use mvirt_api::proto::{self, node_service_client::NodeServiceClient};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tonic::transport::Channel;

/// What a route needs (the rules of README "Tokens and roles").
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// No token needed.
    Public,
    /// Any token, node tokens too.
    AnyToken,
    /// admin, operator, viewer.
    Read,
    /// admin, operator.
    Write,
    /// admin only.
    Admin,
}

/// Every operation: method, path, rule, whether its path names an object of project `b` (so a
/// token limited to `a` gets 404), and what an allowed caller gets from the probe.
const TABLE: &[(&str, &str, Rule, bool, &[u16])] = &[
    ("GET", "/v1/health", Rule::Public, false, &[200]),
    ("GET", "/v1/whoami", Rule::AnyToken, false, &[200]),
    ("GET", "/v1/projects", Rule::Read, false, &[200]),
    ("POST", "/v1/projects", Rule::Admin, false, &[400]),
    ("GET", "/v1/projects/{id}", Rule::Read, true, &[200]),
    ("PUT", "/v1/projects/{id}", Rule::Admin, true, &[400]),
    ("DELETE", "/v1/projects/{id}", Rule::Admin, true, &[412]),
    ("GET", "/v1/nodes", Rule::Read, false, &[200]),
    ("GET", "/v1/nodes/{id}", Rule::Read, false, &[200]),
    ("PUT", "/v1/nodes/{id}", Rule::Admin, false, &[400]),
    ("DELETE", "/v1/nodes/{id}", Rule::Admin, false, &[412]),
    ("POST", "/v1/nodes/{id}/drain", Rule::Admin, false, &[400]),
    ("DELETE", "/v1/nodes/{id}/drain", Rule::Admin, false, &[412]),
    ("GET", "/v1/nodes/{id}/host", Rule::Read, false, &[409]),
    ("GET", "/v1/nodes/{id}/stats", Rule::Read, false, &[409]),
    ("GET", "/v1/vms/{id}/stats", Rule::Read, true, &[409]),
    ("GET", "/v1/networks", Rule::Read, false, &[200]),
    ("POST", "/v1/networks", Rule::Write, false, &[400]),
    ("GET", "/v1/networks/{id}", Rule::Read, true, &[200]),
    ("PUT", "/v1/networks/{id}", Rule::Write, true, &[400]),
    ("DELETE", "/v1/networks/{id}", Rule::Write, true, &[412]),
    ("GET", "/v1/nics", Rule::Read, false, &[200]),
    ("POST", "/v1/nics", Rule::Write, false, &[400]),
    ("GET", "/v1/nics/{id}", Rule::Read, true, &[200]),
    ("PUT", "/v1/nics/{id}", Rule::Write, true, &[400]),
    ("DELETE", "/v1/nics/{id}", Rule::Write, true, &[412]),
    ("GET", "/v1/security-groups", Rule::Read, false, &[200]),
    ("POST", "/v1/security-groups", Rule::Write, false, &[400]),
    ("GET", "/v1/security-groups/{id}", Rule::Read, true, &[200]),
    ("PUT", "/v1/security-groups/{id}", Rule::Write, true, &[400]),
    (
        "DELETE",
        "/v1/security-groups/{id}",
        Rule::Write,
        true,
        &[412],
    ),
    (
        "POST",
        "/v1/security-groups/{id}/rules",
        Rule::Write,
        true,
        &[400],
    ),
    (
        "DELETE",
        "/v1/security-groups/{id}/rules/{rule_id}",
        Rule::Write,
        true,
        &[404],
    ),
    ("GET", "/v1/templates", Rule::Read, false, &[200]),
    ("POST", "/v1/templates", Rule::Write, false, &[400]),
    ("GET", "/v1/templates/{id}", Rule::Read, true, &[200]),
    ("PUT", "/v1/templates/{id}", Rule::Write, true, &[400]),
    ("DELETE", "/v1/templates/{id}", Rule::Write, true, &[412]),
    (
        "POST",
        "/v1/templates/{id}/cancel",
        Rule::Write,
        true,
        &[202, 409],
    ),
    ("GET", "/v1/volumes", Rule::Read, false, &[200]),
    ("POST", "/v1/volumes", Rule::Write, false, &[400]),
    ("GET", "/v1/volumes/{id}", Rule::Read, true, &[200]),
    ("PUT", "/v1/volumes/{id}", Rule::Write, true, &[400]),
    ("DELETE", "/v1/volumes/{id}", Rule::Write, true, &[412]),
    ("POST", "/v1/volumes/{id}/resize", Rule::Write, true, &[400]),
    (
        "GET",
        "/v1/volumes/{id}/snapshots",
        Rule::Read,
        true,
        &[200],
    ),
    (
        "POST",
        "/v1/volumes/{id}/snapshots",
        Rule::Write,
        true,
        &[400],
    ),
    (
        "DELETE",
        "/v1/volumes/{id}/snapshots/{snapshot_id}",
        Rule::Write,
        true,
        &[404],
    ),
    (
        "POST",
        "/v1/volumes/{id}/snapshots/{snapshot_id}/rollback",
        Rule::Write,
        true,
        &[409],
    ),
    (
        "POST",
        "/v1/volumes/{id}/snapshots/{snapshot_id}/promote",
        Rule::Write,
        true,
        &[400],
    ),
    (
        "POST",
        "/v1/volumes/{id}/backups",
        Rule::Write,
        true,
        &[400],
    ),
    ("GET", "/v1/backups", Rule::Read, false, &[200]),
    ("POST", "/v1/backups", Rule::Write, false, &[400]),
    // No backup exists (a backup needs a volume on a node): 404 for an allowed caller.
    ("GET", "/v1/backups/{id}", Rule::Read, true, &[404]),
    ("PUT", "/v1/backups/{id}", Rule::Write, true, &[400]),
    ("DELETE", "/v1/backups/{id}", Rule::Write, true, &[404]),
    (
        "POST",
        "/v1/backups/{id}/restore",
        Rule::Write,
        true,
        &[400],
    ),
    ("POST", "/v1/vms/{id}/backups", Rule::Write, true, &[400]),
    ("GET", "/v1/replications", Rule::Read, false, &[200]),
    ("POST", "/v1/replications", Rule::Write, false, &[400]),
    // No replication exists: 404 for an allowed caller.
    ("GET", "/v1/replications/{id}", Rule::Read, true, &[404]),
    ("PUT", "/v1/replications/{id}", Rule::Write, true, &[400]),
    ("DELETE", "/v1/replications/{id}", Rule::Write, true, &[404]),
    ("GET", "/v1/vms", Rule::Read, false, &[200]),
    ("POST", "/v1/vms", Rule::Write, false, &[400]),
    ("GET", "/v1/vms/{id}", Rule::Read, true, &[200]),
    ("PUT", "/v1/vms/{id}", Rule::Write, true, &[400]),
    ("DELETE", "/v1/vms/{id}", Rule::Write, true, &[412]),
    ("POST", "/v1/vms/{id}/{action}", Rule::Write, true, &[200]),
    ("POST", "/v1/vms/{id}/migrate", Rule::Write, true, &[400]),
    // The VM's node registered no console relay: 409 for an allowed caller.
    ("GET", "/v1/vms/{id}/console", Rule::Write, true, &[409]),
    ("GET", "/v1/pods", Rule::Read, false, &[200]),
    ("POST", "/v1/pods", Rule::Write, false, &[400]),
    ("GET", "/v1/pods/{id}", Rule::Read, true, &[200]),
    ("PUT", "/v1/pods/{id}", Rule::Write, true, &[400]),
    ("DELETE", "/v1/pods/{id}", Rule::Write, true, &[412]),
    ("POST", "/v1/pods/{id}/{action}", Rule::Write, true, &[200]),
    // The pod's node registered no relay (or the pod is not placed yet): 409 when allowed.
    ("GET", "/v1/pods/{id}/logs", Rule::Read, true, &[409]),
    ("GET", "/v1/pods/{id}/stats", Rule::Read, true, &[409]),
    // Exec is a write channel into a container, like the console.
    ("GET", "/v1/pods/{id}/exec", Rule::Write, true, &[409]),
    ("GET", "/v1/tokens", Rule::Admin, false, &[200]),
    ("POST", "/v1/tokens", Rule::Admin, false, &[400]),
    ("DELETE", "/v1/tokens/{id}", Rule::Admin, false, &[404]),
    ("GET", "/v1/controlplane", Rule::Read, false, &[200]),
    (
        "POST",
        "/v1/controlplane/join-tokens",
        Rule::Admin,
        false,
        &[400],
    ),
    (
        "DELETE",
        "/v1/controlplane/members/{id}",
        Rule::Admin,
        false,
        &[404],
    ),
    ("POST", "/v1/controlplane/join", Rule::Public, false, &[400]),
    ("GET", "/v1/events", Rule::Read, false, &[200]),
    // The test member has no mvirt-log.
    ("GET", "/v1/logs", Rule::Read, false, &[503]),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Admin,
    Operator,
    Viewer,
    OperatorOfA,
    Node,
}

const EVERYONE: [Who; 5] = [
    Who::Node,
    Who::Viewer,
    Who::OperatorOfA,
    Who::Operator,
    Who::Admin,
];

/// The statuses the rules allow for `who` on a table row.
fn expected(who: Who, rule: Rule, in_b: bool, allowed: &[u16]) -> Vec<u16> {
    let permitted = match rule {
        Rule::Public | Rule::AnyToken => true,
        _ if who == Who::Node => false,
        Rule::Read => true,
        Rule::Write => who != Who::Viewer,
        Rule::Admin => who == Who::Admin,
    };
    if !permitted {
        vec![403]
    } else if in_b && who == Who::OperatorOfA {
        vec![404]
    } else {
        allowed.to_vec()
    }
}

async fn token(m: &Member, name: &str, body: Value) -> String {
    let mut body = body;
    body["name"] = json!(name);
    m.create("/v1/tokens", body).await["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn register(
    c: &mut NodeServiceClient<Channel>,
    token: &str,
    id: &str,
    name: &str,
) -> Result<String, tonic::Status> {
    c.register(req(
        proto::RegisterRequest {
            node_id: id.into(),
            name: name.into(),
            address: "192.0.2.10".into(),
            capacity: Some(proto::NodeCapacity {
                vcpus: 64,
                memory_bytes: 256 * GIB,
                storage_bytes: 1000 * GIB,
            }),
            agent_version: "test".into(),
            ..Default::default()
        },
        token,
    ))
    .await
    .map(|r| r.into_inner().node_id)
}

/// Registers `id` again with a CSR and returns the node's certificate (and key).
async fn node_cert(
    c: &mut NodeServiceClient<Channel>,
    token: &str,
    id: &str,
    name: &str,
) -> mvirt_common::tls::CertStore {
    let (csr, key) = mvirt_common::tls::generate_csr(name, &[]).unwrap();
    let resp = c
        .register(req(
            proto::RegisterRequest {
                node_id: id.into(),
                name: name.into(),
                address: "192.0.2.10".into(),
                capacity: Some(proto::NodeCapacity {
                    vcpus: 64,
                    memory_bytes: 256 * GIB,
                    storage_bytes: 1000 * GIB,
                }),
                agent_version: "test".into(),
                csr_pem: csr,
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("register with a CSR")
        .into_inner();
    mvirt_common::tls::CertStore::from_pem(&resp.certificate_pem, &key).expect("node certificate")
}

/// Ids of the objects of one project that the probes name.
struct Objects {
    network: String,
    nic: String,
    security_group: String,
    template: String,
    volume: String,
    snapshot: String,
    vm: String,
    pod: String,
}

async fn populate(m: &Member, project: &str, net: &str) -> Objects {
    m.create("/v1/projects", json!({"name": project})).await;
    let with = |name: &str, spec: Value| json!({"name": name, "project": project, "spec": spec});
    let network = m
        .create("/v1/networks", with("net", json!({"ipv4_prefix": net})))
        .await;
    let nic = m
        .create(
            "/v1/nics",
            with("nic", json!({"network_id": network["id"]})),
        )
        .await;
    let sg = m
        .create(
            "/v1/security-groups",
            with("sg", json!({"rules": [{"direction": "ingress", "protocol": "tcp", "port_min": 22, "port_max": 22, "cidr": "0.0.0.0/0"}]})),
        )
        .await;
    let template = m
        .create(
            "/v1/templates",
            with(
                "tpl",
                json!({"source_url": "http://127.0.0.1:1/disk.qcow2", "format": "qcow2"}),
            ),
        )
        .await;
    let volume = m
        .create("/v1/volumes", with("vol", json!({"size_bytes": GIB})))
        .await;
    let volume_id = volume["id"].as_str().unwrap();
    let snapshot = m
        .create(
            &format!("/v1/volumes/{volume_id}/snapshots"),
            json!({"name": "snap"}),
        )
        .await;
    let vm = m
        .create(
            "/v1/vms",
            with(
                "web",
                json!({"vcpus": 1, "memory_bytes": GIB, "desired_state": "stopped"}),
            ),
        )
        .await;
    let pod = m
        .create(
            "/v1/pods",
            with(
                "web",
                json!({"vcpus": 1, "memory_bytes": 256 * MIB, "desired_state": "stopped",
                    "containers": [{"name": "web", "image": "127.0.0.1:5000/httpd:1"}]}),
            ),
        )
        .await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    Objects {
        network: id(&network),
        nic: id(&nic),
        security_group: id(&sg),
        template: id(&template),
        volume: id(&volume),
        snapshot: id(&snapshot),
        vm: id(&vm),
        pod: id(&pod),
    }
}

/// `path` with its parameters filled in for the probe.
fn concrete(path: &str, b: &Objects, node_id: &str) -> String {
    let collection = path.trim_start_matches("/v1/").split('/').next().unwrap();
    let id = match collection {
        "projects" => "b",
        "nodes" => node_id,
        "networks" => &b.network,
        "nics" => &b.nic,
        "security-groups" => &b.security_group,
        "templates" => &b.template,
        "volumes" => &b.volume,
        "vms" => &b.vm,
        "pods" => &b.pod,
        "backups" => "0190a5b0-0000-7000-8000-00000000b0b0",
        "replications" => "0190a5b0-0000-7000-8000-00000000b0b1",
        "tokens" => "0190a5b0-0000-7000-8000-000000000000",
        "controlplane" => "99",
        _ => "",
    };
    // A snapshot that exists (rollback: 409, it is not ready) — except for the delete, which
    // names none so that it changes nothing.
    let snapshot = if path.ends_with("{snapshot_id}") {
        "nosuch"
    } else {
        &b.snapshot
    };
    path.replace("{id}", id)
        .replace("{rule_id}", "0190a5b0-0000-7000-8000-00000000beef")
        .replace("{snapshot_id}", snapshot)
        .replace("{action}", "start")
}

async fn probe(m: &Member, secret: &str, method: &str, path: &str) -> u16 {
    let method: Method = method.parse().unwrap();
    let mut r = m
        .http
        .request(method.clone(), format!("{}{path}", m.url))
        .bearer_auth(secret)
        .header("if-match", "\"1\"");
    if method == Method::POST || method == Method::PUT {
        r = r.json(&json!({"authz_probe": true}));
    }
    let resp = r.send().await.expect("request sent");
    resp.status().as_u16()
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_rules_say() {
    let m = start_member().await;
    populate(&m, "a", "10.1.0.0/24").await;
    let b = populate(&m, "b", "10.2.0.0/24").await;
    let node_secret = token(&m, "agent", json!({"role": "node"})).await;
    let mut c = m.node_client(None).await;
    let node_id = register(&mut c, &node_secret, "", "host-1").await.unwrap();
    let secrets = [
        (Who::Admin, m.token.clone()),
        (
            Who::Operator,
            token(&m, "ops", json!({"role": "operator"})).await,
        ),
        (
            Who::Viewer,
            token(&m, "view", json!({"role": "viewer"})).await,
        ),
        (
            Who::OperatorOfA,
            token(&m, "ops-a", json!({"role": "operator", "projects": ["a"]})).await,
        ),
        (Who::Node, node_secret),
    ];

    let (_, doc) = m.get("/v1/openapi.json").await;
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let in_table: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|(m, p, ..)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = operations.difference(&in_table).collect();
    assert!(
        missing.is_empty(),
        "operations without a rule in TABLE: {missing:?}"
    );
    let extra: Vec<_> = in_table.difference(&operations).collect();
    assert!(
        extra.is_empty(),
        "TABLE rows the API does not have: {extra:?}"
    );

    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (method, path, rule, in_b, allowed) in TABLE {
        let url = concrete(path, &b, &node_id);
        for who in EVERYONE {
            let secret = &secrets.iter().find(|(w, _)| *w == who).unwrap().1;
            let got = probe(&m, secret, method, &url).await;
            let want = expected(who, *rule, *in_b, allowed);
            checked += 1;
            if !want.contains(&got) {
                mismatches.push(format!(
                    "{method} {url} as {who:?}: got {got}, want {want:?}"
                ));
            }
        }
    }
    println!(
        "route x role coverage: {} of {} operations ({} %), {checked} calls",
        in_table.len(),
        operations.len(),
        100 * in_table.len() / operations.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test]
async fn a_node_token_acts_only_for_the_node_it_registered_first() {
    let m = start_member().await;
    let t1 = token(&m, "agent-1", json!({"role": "node"})).await;
    let t2 = token(&m, "agent-2", json!({"role": "node"})).await;
    let mut c = m.node_client(None).await;

    // Before registering, a node token may act for no node.
    let err = c
        .heartbeat(req(
            proto::HeartbeatRequest {
                node_id: "0190a5b0-0000-7000-8000-000000000001".into(),
                ..Default::default()
            },
            &t1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let n1 = register(&mut c, &t1, "", "host-1").await.unwrap();
    let n2 = register(&mut c, &t2, "", "host-2").await.unwrap();
    // The binding is replicated state, shown to admins and to the token itself.
    let (_, tokens) = m.get("/v1/tokens").await;
    let bound = |name: &str| {
        tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["node_id"]
            .clone()
    };
    assert_eq!(bound("agent-1"), json!(n1));
    assert_eq!(bound("agent-2"), json!(n2));
    let me = m
        .http
        .get(format!("{}/v1/whoami", m.url))
        .bearer_auth(&t1)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(me["role"], "node");
    assert_eq!(me["node_id"], json!(n1));

    // Its own node: fine, again and again (with TLS every call but Register also needs the
    // node's certificate, which Register issues for a CSR).
    assert_eq!(register(&mut c, &t1, &n1, "host-1").await.unwrap(), n1);
    let mut c1 = m
        .node_client(Some(node_cert(&mut c, &t1, &n1, "host-1").await))
        .await;
    let mut c2 = m
        .node_client(Some(node_cert(&mut c, &t2, &n2, "host-2").await))
        .await;
    let hb1 = |token: &str| {
        req(
            proto::HeartbeatRequest {
                node_id: n1.clone(),
                ..Default::default()
            },
            token,
        )
    };
    c1.heartbeat(hb1(&t1)).await.unwrap();
    // The token of n1 without a certificate, or with n2's: refused.
    let code = c.heartbeat(hb1(&t1)).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::PermissionDenied);
    let code = c2.heartbeat(hb1(&t1)).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::PermissionDenied);

    // The other node, or a new one: refused on every call.
    let denied = |r: Result<(), tonic::Status>, what: &str| {
        let code = r.expect_err(what).code();
        assert_eq!(code, tonic::Code::PermissionDenied, "{what}");
    };
    denied(
        register(&mut c, &t1, &n2, "host-2").await.map(|_| ()),
        "register n2",
    );
    denied(
        register(&mut c, &t1, "", "host-3").await.map(|_| ()),
        "register a new node",
    );
    let hb = c1
        .heartbeat(req(
            proto::HeartbeatRequest {
                node_id: n2.clone(),
                ..Default::default()
            },
            &t1,
        ))
        .await;
    denied(hb.map(|_| ()), "heartbeat n2");
    let watch = c1
        .watch_specs(req(
            proto::WatchSpecsRequest {
                node_id: n2.clone(),
                from_revision: 0,
            },
            &t1,
        ))
        .await;
    denied(watch.map(|_| ()), "watch n2");
    let status = c1
        .update_resource_status(req(
            proto::UpdateResourceStatusRequest {
                node_id: n2.clone(),
                statuses: Vec::new(),
            },
            &t1,
        ))
        .await;
    denied(status.map(|_| ()), "status for n2");
    let dereg = c1
        .deregister(req(
            proto::DeregisterRequest {
                node_id: n2.clone(),
            },
            &t1,
        ))
        .await;
    denied(dereg.map(|_| ()), "deregister n2");
    // A fresh token cannot take a node that another token holds.
    let t3 = token(&m, "agent-3", json!({"role": "node"})).await;
    denied(
        register(&mut c, &t3, &n1, "host-1").await.map(|_| ()),
        "a fresh token taking n1",
    );

    // Reports about resources on another node are dropped and listed in `unknown_ids`: a NIC
    // attached to a VM placed on n2, reported by n1's token.
    let net = m
        .create(
            "/v1/networks",
            json!({"name": "net", "spec": {"ipv4_prefix": "10.0.0.0/24"}}),
        )
        .await;
    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "web", "spec": {"vcpus": 1, "memory_bytes": GIB,
                "node_selector": n2, "network_interfaces": [{"network_id": net["id"]}]}}),
        )
        .await;
    let nic_id = vm["spec"]["nic_ids"][0].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = m
            .get(&format!("/v1/vms/{}", vm["id"].as_str().unwrap()))
            .await;
        if v["node_id"] == json!(n2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "VM not placed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = |node: &str, token: &str| {
        req(
            proto::UpdateResourceStatusRequest {
                node_id: node.into(),
                statuses: vec![proto::ResourceStatus {
                    kind: proto::ResourceKind::Nic as i32,
                    id: nic_id.clone(),
                    phase: proto::Phase::Ready as i32,
                    ..Default::default()
                }],
            },
            token,
        )
    };
    let r = c1
        .update_resource_status(report(&n1, &t1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.accepted, r.unknown_ids.clone()),
        (0, vec![nic_id.clone()])
    );
    let r = c2
        .update_resource_status(report(&n2, &t2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1, "{r:?}");

    // Deregistering its own node works; the token stays bound to it.
    c1.deregister(req(
        proto::DeregisterRequest {
            node_id: n1.clone(),
        },
        &t1,
    ))
    .await
    .unwrap();
    assert_eq!(register(&mut c, &t1, &n1, "host-1").await.unwrap(), n1);
}

#[tokio::test]
async fn a_scoped_token_sees_only_its_projects() {
    let m = start_member().await;
    for p in ["a", "b"] {
        m.create("/v1/projects", json!({"name": p})).await;
        m.create(
            "/v1/vms",
            json!({"name": "web", "project": p, "spec": {"vcpus": 1, "memory_bytes": GIB}}),
        )
        .await;
    }
    let secret = token(&m, "ops-a", json!({"role": "operator", "projects": ["a"]})).await;
    let ops = Member {
        running: None,
        url: m.url.clone(),
        grpc_url: m.grpc_url.clone(),
        token: secret,
        dir: tempfile::tempdir().unwrap(),
        http: m.http.clone(),
        ca_pem: m.ca_pem.clone(),
    };
    let (s, me) = ops.get("/v1/whoami").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["role"], "operator");
    assert_eq!(me["projects"], json!(["a"]));

    // Same name in both projects: only a's exists for this token.
    let (s, v) = ops.get("/v1/vms/web?project=a").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["project"], "a");
    let (s, v) = ops.get("/v1/vms/web?project=b").await;
    assert_error(s, &v, 404, "not_found");
    let (_, b_vm) = m.get("/v1/vms/web?project=b").await;
    let b_id = b_vm["id"].as_str().unwrap();
    let (s, v) = ops.get(&format!("/v1/vms/{b_id}")).await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = ops.post(&format!("/v1/vms/{b_id}/stop"), json!({})).await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = ops.delete(&format!("/v1/vms/{b_id}")).await;
    assert_error(s, &v, 404, "not_found");

    // Lists hold a's objects only, with or without a project filter.
    let (_, list) = ops.get("/v1/vms").await;
    let projects: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["project"])
        .collect();
    assert_eq!(projects, vec![&json!("a")]);
    let (_, list) = ops.get("/v1/vms?project=b").await;
    assert_eq!(list["items"], json!([]));
    let (_, list) = ops.get("/v1/projects").await;
    let names: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["name"])
        .collect();
    assert_eq!(names, vec![&json!("a")]);
    let (s, _) = ops.get("/v1/projects/b").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Creates: into a yes, into b (or the default project) no.
    let spec = json!({"vcpus": 1, "memory_bytes": GIB});
    ops.create(
        "/v1/vms",
        json!({"name": "db", "project": "a", "spec": spec}),
    )
    .await;
    let (s, v) = ops
        .post(
            "/v1/vms",
            json!({"name": "db", "project": "b", "spec": spec}),
        )
        .await;
    assert_error(s, &v, 403, "permission_denied");
    let (s, v) = ops
        .post("/v1/vms", json!({"name": "db", "spec": spec}))
        .await;
    assert_error(s, &v, 403, "permission_denied");

    // Token rules: projects only for operators and viewers; old-style roles still work.
    let (s, v) = m
        .post(
            "/v1/tokens",
            json!({"name": "x", "role": "admin", "projects": ["a"]}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m
        .post(
            "/v1/tokens",
            json!({"name": "y", "role": "viewer", "projects": ["Not A Name"]}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (_, admin) = m.get("/v1/whoami").await;
    assert_eq!(admin["role"], "admin");
    assert_eq!(admin["projects"], json!([]));
}

#[tokio::test]
async fn a_scoped_viewer_gets_only_its_projects_events() {
    let m = start_member().await;
    for p in ["a", "b"] {
        m.create("/v1/projects", json!({"name": p})).await;
    }
    let viewer = token(&m, "view-a", json!({"role": "viewer", "projects": ["a"]})).await;
    let (_, start) = m.get("/v1/vms").await;
    let from = start["revision"].as_u64().unwrap();
    for (i, p) in ["b", "a", "b"].into_iter().enumerate() {
        m.create(
            "/v1/vms",
            json!({"name": format!("vm-{i}"), "project": p, "spec": {"vcpus": 1, "memory_bytes": GIB}}),
        )
        .await;
    }
    // A token created meanwhile: its event is for admins only.
    token(&m, "later", json!({"role": "viewer"})).await;
    let marker = m
        .create(
            "/v1/vms",
            json!({"name": "last", "project": "a", "spec": {"vcpus": 1, "memory_bytes": GIB}}),
        )
        .await;
    let resp = m
        .http
        .get(format!("{}/v1/events?from_revision={from}", m.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains(marker["id"].as_str().unwrap()) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the marker event arrives")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    assert!(events.len() >= 2, "{text}");
    for e in &events {
        assert_eq!(
            e["project"], "a",
            "an event the viewer of a may not see: {e}"
        );
        assert_ne!(e["kind"], "token");
    }
    // The same stream for a viewer of every project has b's events too, but not the token's.
    let all = token(&m, "view-all", json!({"role": "viewer"})).await;
    let resp = m
        .http
        .get(format!("{}/v1/events?from_revision={from}", m.url))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains(marker["id"].as_str().unwrap()) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the marker event arrives")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("\"project\":\"b\""), "{text}");
    assert!(!text.contains("\"kind\":\"token\""), "{text}");
}

#[tokio::test]
async fn a_scoped_token_reads_only_audit_entries_about_its_projects() {
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
    let mut ids = Vec::new();
    for (p, prefix) in [("a", "10.1.0.0/24"), ("b", "10.2.0.0/24")] {
        m.create("/v1/projects", json!({"name": p})).await;
        let net = m
            .create(
                "/v1/networks",
                json!({"name": "net", "project": p, "spec": {"ipv4_prefix": prefix}}),
            )
            .await;
        ids.push(net["id"].as_str().unwrap().to_string());
    }
    let secret = token(&m, "view-a", json!({"role": "viewer", "projects": ["a"]})).await;
    let viewer = Member {
        running: None,
        url: m.url.clone(),
        grpc_url: m.grpc_url.clone(),
        token: secret,
        dir: tempfile::tempdir().unwrap(),
        http: m.http.clone(),
        ca_pem: m.ca_pem.clone(),
    };
    // The admin sees both networks' entries once they are written.
    for id in &ids {
        mvirt_testsupport::process::wait_until_async(
            "audit entry",
            Duration::from_secs(20),
            || async {
                let (s, v) = m.get(&format!("/v1/logs?object_id={id}&level=audit")).await;
                (s == StatusCode::OK && !v["entries"].as_array()?.is_empty()).then_some(())
            },
        )
        .await;
    }
    let (s, page) = viewer.get("/v1/logs?level=audit&limit=1000").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let entries = page["entries"].as_array().unwrap();
    let names = |e: &Value, id: &str| {
        e["object_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i == id))
    };
    assert!(entries.iter().any(|e| names(e, &ids[0])), "{page}");
    assert!(!entries.iter().any(|e| names(e, &ids[1])), "{page}");
    // Project b's object, asked for by id: nothing.
    let (_, page) = viewer
        .get(&format!("/v1/logs?object_id={}&level=audit", ids[1]))
        .await;
    assert_eq!(page["entries"], json!([]));
    log_shutdown.trigger();
}
