//! NodeService against a real in-process member: registration, liveness, WatchSpecs, status
//! reports and the scheduler placing VMs on registered nodes.

mod common;

use std::time::Duration;

use common::*;
use mvirt_api::proto::{self, node_service_client::NodeServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::transport::Channel;

fn req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn client(m: &Member) -> NodeServiceClient<Channel> {
    m.node_client(None).await
}

fn capacity(vcpus: u32, mem_gib: u64) -> Option<proto::NodeCapacity> {
    Some(proto::NodeCapacity {
        vcpus,
        memory_bytes: mem_gib * GIB,
        storage_bytes: 100 * GIB,
    })
}

async fn register(
    c: &mut NodeServiceClient<Channel>,
    token: &str,
    id: &str,
    name: &str,
    vcpus: u32,
    mem_gib: u64,
) -> String {
    c.register(req(
        proto::RegisterRequest {
            node_id: id.into(),
            name: name.into(),
            address: "192.0.2.10".into(),
            labels: [("zone".to_string(), "a".to_string())]
                .into_iter()
                .collect(),
            capacity: capacity(vcpus, mem_gib),
            agent_version: "test".into(),
            ..Default::default()
        },
        token,
    ))
    .await
    .expect("register")
    .into_inner()
    .node_id
}

async fn vm_until(m: &Member, id: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    mvirt_testsupport::process::wait_until_async(what, Duration::from_secs(20), || async {
        let (s, v) = m.get(&format!("/v1/vms/{id}")).await;
        (s == StatusCode::OK && cond(&v)).then_some(v)
    })
    .await
}

#[tokio::test]
async fn nodeservice_requires_a_token() {
    let m = start_member().await;
    let mut c = client(&m).await;
    let err = c
        .heartbeat(tonic::Request::new(proto::HeartbeatRequest {
            node_id: "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = c
        .heartbeat(req(proto::HeartbeatRequest::default(), "bogus"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn register_mints_an_id_once_and_reregistering_is_not_a_conflict() {
    let m = start_member().await;
    let node_token = m
        .create("/v1/tokens", json!({"name": "agents", "role": "node"}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut c = client(&m).await;
    let id = register(&mut c, &node_token, "", "host-1", 8, 16).await;
    assert_eq!(id.len(), 36);
    let again = register(&mut c, &node_token, &id, "host-1", 16, 32).await;
    assert_eq!(again, id);
    let (_, nodes) = m.get("/v1/nodes").await;
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"]["capacity"]["vcpus"], 16);
    assert_eq!(items[0]["status"]["state"], "online");
    // Another node cannot take the same name (the node token is bound to host-1 by now, so
    // the admin token asks).
    let err = c
        .register(req(
            proto::RegisterRequest {
                name: "host-1".into(),
                address: "192.0.2.11".into(),
                ..Default::default()
            },
            &m.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = c
        .register(req(
            proto::RegisterRequest {
                name: "Bad Name".into(),
                address: "x".into(),
                ..Default::default()
            },
            &node_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn the_pod_artefacts_version_a_node_reports_is_in_its_status() {
    let m = start_member().await;
    let mut c = client(&m).await;
    let registration = |id: &str, version: &str| proto::RegisterRequest {
        node_id: id.into(),
        name: "host-1".into(),
        address: "192.0.2.10".into(),
        capacity: capacity(4, 8),
        agent_version: "test".into(),
        pod_artefacts_version: version.into(),
        ..Default::default()
    };
    let id = c
        .register(req(registration("", "pods-v1"), &m.token))
        .await
        .expect("register")
        .into_inner()
        .node_id;
    let node = || async {
        let (s, n) = m.get(&format!("/v1/nodes/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{n}");
        n
    };
    let n = node().await;
    assert_eq!(n["status"]["pod_artefacts_version"], "pods-v1", "{n}");
    let beat = |version: Option<&str>| proto::HeartbeatRequest {
        node_id: id.clone(),
        capacity: capacity(4, 8),
        applied_revision: 0,
        pod_artefacts_version: version.map(str::to_string),
    };
    // A heartbeat without the version leaves it as it was, and writes nothing.
    c.heartbeat(req(beat(None), &m.token)).await.unwrap();
    let same = node().await;
    assert_eq!(same["status"]["pod_artefacts_version"], "pods-v1");
    assert_eq!(same["revision"], n["revision"], "{same}");
    // A new version (artefacts upgraded on the node) is stored, once.
    c.heartbeat(req(beat(Some("pods-v2")), &m.token))
        .await
        .unwrap();
    let upgraded = node().await;
    assert_eq!(upgraded["status"]["pod_artefacts_version"], "pods-v2");
    assert!(
        upgraded["revision"].as_u64() > n["revision"].as_u64(),
        "{upgraded}"
    );
    c.heartbeat(req(beat(Some("pods-v2")), &m.token))
        .await
        .unwrap();
    assert_eq!(node().await["revision"], upgraded["revision"]);
    // The node lost its artefacts (missing, failing verification): empty.
    c.heartbeat(req(beat(Some("")), &m.token)).await.unwrap();
    assert_eq!(node().await["status"]["pod_artefacts_version"], "");
    // A re-registration (agent restart) says it again; the list shows it too.
    c.register(req(registration(&id, "pods-v3"), &m.token))
        .await
        .expect("re-register");
    let (_, nodes) = m.get("/v1/nodes").await;
    assert_eq!(
        nodes["items"][0]["status"]["pod_artefacts_version"], "pods-v3",
        "{nodes}"
    );
    // What a node may report is bounded; a refused report changes nothing.
    let long = "v".repeat(129);
    let err = c
        .heartbeat(req(beat(Some(&long)), &m.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .register(req(registration(&id, "pods\nv4"), &m.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(node().await["status"]["pod_artefacts_version"], "pods-v3");
}

#[tokio::test]
async fn a_silent_node_goes_offline_and_comes_back_with_a_heartbeat() {
    let m = start_member_with(|c| c.node_offline_after = Duration::from_millis(600)).await;
    let mut c = client(&m).await;
    let id = register(&mut c, &m.token, "", "host-1", 4, 8).await;
    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "web", "spec": {"vcpus": 1, "memory_bytes": GIB}}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let beat = |c: NodeServiceClient<Channel>| {
        let (id, token) = (id.clone(), m.token.clone());
        async move {
            let mut c = c;
            c.heartbeat(req(
                proto::HeartbeatRequest {
                    node_id: id,
                    capacity: None,
                    applied_revision: 0,
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap();
        }
    };
    // Placed while the node is online (kept online by heartbeats until then).
    let placed = mvirt_testsupport::process::wait_until_async(
        "VM placed",
        Duration::from_secs(20),
        || async {
            beat(c.clone()).await;
            let (_, v) = m.get(&format!("/v1/vms/{vm_id}")).await;
            (v["node_id"] == id.as_str()).then_some(v)
        },
    )
    .await;
    assert_eq!(placed["node_state"], "online", "{placed}");
    let offline = mvirt_testsupport::process::wait_until_async(
        "node offline",
        Duration::from_secs(20),
        || async {
            let (_, n) = m.get(&format!("/v1/nodes/{id}")).await;
            (n["status"]["state"] == "offline").then_some(n)
        },
    )
    .await;
    assert!(offline["status"]["last_state_change_at"].is_string());
    // The VM says its node is offline; its status stays the node's last report.
    let (_, v) = m.get(&format!("/v1/vms/{vm_id}")).await;
    assert_eq!(v["node_state"], "offline", "{v}");
    assert_eq!(v["status"], placed["status"]);
    c.heartbeat(req(
        proto::HeartbeatRequest {
            node_id: id.clone(),
            capacity: None,
            applied_revision: 0,
            ..Default::default()
        },
        &m.token,
    ))
    .await
    .unwrap();
    let (_, n) = m.get(&format!("/v1/nodes/{id}")).await;
    assert_eq!(n["status"]["state"], "online");
    let (_, v) = m.get(&format!("/v1/vms/{vm_id}")).await;
    assert_eq!(v["node_state"], "online", "{v}");
    let (_, offline_list) = m.get("/v1/nodes?phase=online").await;
    assert_eq!(offline_list["items"].as_array().unwrap().len(), 1);
    let err = c
        .heartbeat(req(
            proto::HeartbeatRequest {
                node_id: "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f".into(),
                ..Default::default()
            },
            &m.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn pending_vms_are_placed_when_capacity_appears_and_stay_pending_with_a_reason() {
    let m = start_member().await;
    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "big", "spec": {"vcpus": 4, "memory_bytes": 4 * GIB}}),
        )
        .await;
    let id = vm["id"].as_str().unwrap().to_string();
    let v = vm_until(&m, &id, "pending reason", |v| {
        v["scheduling"]["reason"] == "no online, schedulable node"
    })
    .await;
    assert!(v["node_id"].is_null());

    let mut c = client(&m).await;
    let small = register(&mut c, &m.token, "", "small", 2, 2).await;
    let v = vm_until(&m, &id, "insufficient capacity", |v| {
        v["scheduling"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("insufficient capacity"))
    })
    .await;
    assert!(v["node_id"].is_null());
    let (_, pending) = m.get("/v1/vms?phase=pending").await;
    assert_eq!(pending["items"].as_array().unwrap().len(), 1);

    let large = register(&mut c, &m.token, "", "large", 8, 16).await;
    let v = vm_until(&m, &id, "placed", |v| v["node_id"].is_string()).await;
    assert_eq!(v["node_id"], large.as_str());
    assert_eq!(v["scheduling"]["state"], "scheduled");
    let (_, node) = m.get(&format!("/v1/nodes/{large}")).await;
    assert_eq!(node["allocated"]["vcpus"], 4);

    // A selector that matches only the small node keeps the next VM pending.
    let sel = m
        .create("/v1/vms", json!({"name": "pinned", "spec": {"vcpus": 4, "memory_bytes": GIB, "node_selector": "small"}}))
        .await;
    let sid = sel["id"].as_str().unwrap().to_string();
    vm_until(&m, &sid, "pending on selector", |v| {
        v["scheduling"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("insufficient"))
    })
    .await;
    let _ = small;
    // A node with VMs placed cannot deregister.
    let err = c
        .deregister(req(
            proto::DeregisterRequest {
                node_id: large.clone(),
            },
            &m.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn watch_specs_streams_the_full_desired_set_and_resumes_without_gaps() {
    let m = start_member().await;
    let mut c = client(&m).await;
    let node = register(&mut c, &m.token, "", "host-1", 8, 16).await;
    let net = m
        .create(
            "/v1/networks",
            json!({"name": "net", "spec": {"ipv4_prefix": "10.0.0.0/24"}}),
        )
        .await;
    let tpl = m
        .create(
            "/v1/templates",
            json!({"name": "img", "spec": {"source_url": "file:///images/img.raw"}}),
        )
        .await;
    let sg = m.create("/v1/security-groups", json!({"name": "sg", "spec": {"rules": [{"direction": "ingress", "protocol": "tcp", "port_min": 22, "port_max": 22}]}})).await;
    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "web", "spec": {"vcpus": 1, "memory_bytes": GIB,
                "root_volume": {"template_id": tpl["id"], "size_bytes": 2 * GIB},
                "network_interfaces": [{"network_id": net["id"], "security_group_ids": [sg["id"]]}],
                "user_data": "#cloud-config\n", "ssh_authorized_keys": ["ssh-ed25519 AAAA k"]}}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    vm_until(&m, &vm_id, "placed", |v| v["node_id"].is_string()).await;

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
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.node_id, node);
    assert_eq!(first.vms.len(), 1);
    let spec_vm = &first.vms[0];
    assert_eq!(spec_vm.id, vm_id);
    assert_eq!(spec_vm.desired_state, proto::DesiredState::Running as i32);
    assert_eq!(spec_vm.user_data, "#cloud-config\n");
    assert_eq!(first.volumes.len(), 1);
    assert_eq!(first.volumes[0].template_id, tpl["id"].as_str().unwrap());
    assert_eq!(first.volumes[0].owner_vm_id, vm_id);
    assert_eq!(first.nics.len(), 1);
    assert_eq!(first.nics[0].ipv4_address, "10.0.0.1");
    assert_eq!(first.networks.len(), 1);
    assert_eq!(first.security_groups.len(), 1);
    assert_eq!(first.security_groups[0].rules[0].port_min, 22);
    assert_eq!(first.templates.len(), 1);

    // A change to the VM gives a new full set with a higher revision.
    m.post(&format!("/v1/vms/{vm_id}/stop"), json!({})).await;
    let second = stream.message().await.unwrap().unwrap();
    assert!(second.revision > first.revision);
    assert_eq!(
        second.vms[0].desired_state,
        proto::DesiredState::Stopped as i32
    );
    drop(stream);

    // Changes while nobody watches are not lost: resuming from the last revision seen yields
    // the current set at once; nothing older comes again.
    m.post(&format!("/v1/vms/{vm_id}/start"), json!({})).await;
    let mut resumed = c
        .watch_specs(req(
            proto::WatchSpecsRequest {
                node_id: node.clone(),
                from_revision: second.revision,
            },
            &m.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let third = resumed.message().await.unwrap().unwrap();
    assert!(third.revision > second.revision);
    assert_eq!(
        third.vms[0].desired_state,
        proto::DesiredState::Running as i32
    );

    // Changes that do not concern this node's set (another project's network) send nothing;
    // the next message is the VM delete, which empties the set.
    m.create("/v1/projects", json!({"name": "other"})).await;
    m.post(&format!("/v1/vms/{vm_id}/restart"), json!({})).await;
    let fourth = resumed.message().await.unwrap().unwrap();
    assert!(fourth.revision > third.revision);
    assert_eq!(fourth.vms[0].restart_generation, 1);
    m.delete(&format!("/v1/vms/{vm_id}")).await;
    let fifth = resumed.message().await.unwrap().unwrap();
    assert!(fifth.revision > fourth.revision);
    assert!(fifth.vms.is_empty() && fifth.volumes.is_empty() && fifth.nics.is_empty());
    assert_eq!(fifth.templates.len(), 1);
}

#[tokio::test]
async fn status_changes_only_through_node_reports() {
    let m = start_member().await;
    let mut c = client(&m).await;
    let node = register(&mut c, &m.token, "", "host-1", 8, 16).await;
    let other = register(&mut c, &m.token, "", "host-2", 1, 1).await;
    let tpl = m
        .create(
            "/v1/templates",
            json!({"name": "img", "spec": {"source_url": "file:///images/img.raw"}}),
        )
        .await;
    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "web", "spec": {"vcpus": 2, "memory_bytes": 2 * GIB}}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    vm_until(&m, &vm_id, "placed", |v| v["node_id"] == node.as_str()).await;

    let resp = c
        .update_resource_status(req(
            proto::UpdateResourceStatusRequest {
                node_id: node.clone(),
                statuses: vec![
                    proto::ResourceStatus {
                        kind: proto::ResourceKind::Vm as i32,
                        id: vm_id.clone(),
                        phase: proto::Phase::Running as i32,
                        message: "booted".into(),
                        observed_revision: 7,
                        ipv4_addresses: vec!["10.0.0.5".into()],
                        ..Default::default()
                    },
                    proto::ResourceStatus {
                        kind: proto::ResourceKind::Template as i32,
                        id: tpl["id"].as_str().unwrap().into(),
                        phase: proto::Phase::Importing as i32,
                        import_bytes_done: 512,
                        import_bytes_total: 2048,
                        ..Default::default()
                    },
                    proto::ResourceStatus {
                        kind: proto::ResourceKind::Volume as i32,
                        id: "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f".into(),
                        phase: proto::Phase::Ready as i32,
                        ..Default::default()
                    },
                ],
            },
            &m.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted, 2);
    assert_eq!(
        resp.unknown_ids,
        vec!["0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f".to_string()]
    );
    let (_, v) = m.get(&format!("/v1/vms/{vm_id}")).await;
    assert_eq!(v["status"]["phase"], "running");
    assert_eq!(v["status"]["message"], "booted");
    assert_eq!(v["status"]["ipv4_addresses"][0], "10.0.0.5");
    assert_eq!(v["status"]["node_id"], node.as_str());
    let (_, t) = m
        .get(&format!("/v1/templates/{}", tpl["id"].as_str().unwrap()))
        .await;
    assert_eq!(t["status"]["phase"], "importing");
    assert_eq!(t["status"]["import_bytes_done"], 512);

    // A node cannot report for a VM placed elsewhere.
    let resp = c
        .update_resource_status(req(
            proto::UpdateResourceStatusRequest {
                node_id: other,
                statuses: vec![proto::ResourceStatus {
                    kind: proto::ResourceKind::Vm as i32,
                    id: vm_id.clone(),
                    phase: proto::Phase::Failed as i32,
                    ..Default::default()
                }],
            },
            &m.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted, 0);
    let (_, v) = m.get(&format!("/v1/vms/{vm_id}")).await;
    assert_eq!(v["status"]["phase"], "running");
    // An action does not fake a status.
    let (_, v) = m.post(&format!("/v1/vms/{vm_id}/stop"), json!({})).await;
    assert_eq!(v["status"]["phase"], "running");
}

#[tokio::test]
async fn remote_group_rules_carry_the_members_on_other_nodes() {
    let m = start_member().await;
    let mut c = client(&m).await;
    let a = register(&mut c, &m.token, "", "host-a", 8, 16).await;
    let b = register(&mut c, &m.token, "", "host-b", 8, 16).await;
    let net = m
        .create(
            "/v1/networks",
            json!({"name": "net", "spec": {"ipv4_prefix": "10.0.0.0/24", "ipv6_prefix": "fd00::/64"}}),
        )
        .await;
    let bastion = m
        .create(
            "/v1/security-groups",
            json!({"name": "bastion", "spec": {"rules": []}}),
        )
        .await;
    let web = m
        .create(
            "/v1/security-groups",
            json!({"name": "web", "spec": {"rules": [{"direction": "ingress", "protocol": "tcp",
                "port_min": 22, "port_max": 22, "remote_group_id": bastion["id"]}]}}),
        )
        .await;
    let vm = |name: &str, node: &str, sg: &Value| {
        json!({"name": name, "spec": {"vcpus": 1, "memory_bytes": GIB, "node_selector": node,
            "network_interfaces": [{"network_id": net["id"], "security_group_ids": [sg["id"]]}]}})
    };
    let web_vm = m.create("/v1/vms", vm("web", &a, &web)).await;
    let jump_vm = m.create("/v1/vms", vm("jump", &b, &bastion)).await;
    let jump_id = jump_vm["id"].as_str().unwrap().to_string();
    vm_until(&m, web_vm["id"].as_str().unwrap(), "web placed", |v| {
        v["node_id"] == a.as_str()
    })
    .await;
    vm_until(&m, &jump_id, "jump placed", |v| v["node_id"] == b.as_str()).await;
    let (_, jump_nic) = m
        .get(&format!(
            "/v1/nics/{}",
            jump_vm["spec"]["nic_ids"][0].as_str().unwrap()
        ))
        .await;

    let mut stream = c
        .watch_specs(req(
            proto::WatchSpecsRequest {
                node_id: a.clone(),
                from_revision: 0,
            },
            &m.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    // The remote group comes along (mvirt-ebpf needs it to exist), web's rule carries the
    // bastion's addresses on node b.
    let mut groups: Vec<&str> = first
        .security_groups
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    groups.sort();
    assert_eq!(groups, vec!["bastion", "web"]);
    let web_spec = first
        .security_groups
        .iter()
        .find(|g| g.name == "web")
        .unwrap();
    let rule = &web_spec.rules[0];
    assert_eq!(rule.remote_group_id, bastion["id"].as_str().unwrap());
    let v4 = jump_nic["spec"]["ipv4_address"]
        .as_str()
        .unwrap()
        .to_string();
    let v6 = jump_nic["spec"]["ipv6_address"]
        .as_str()
        .unwrap()
        .to_string();
    let mut want = vec![v4, v6];
    want.sort();
    assert_eq!(rule.remote_addresses, want);

    // The bastion NIC leaves the group: node A gets a new set without its addresses.
    let (s, body) = m
        .call(
            reqwest::Method::PUT,
            &format!("/v1/nics/{}", jump_nic["id"].as_str().unwrap()),
            Some(json!({"spec": {"network_id": net["id"], "security_group_ids": []}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let second = stream.message().await.unwrap().unwrap();
    assert!(second.revision > first.revision);
    let web_spec = second
        .security_groups
        .iter()
        .find(|g| g.name == "web")
        .unwrap();
    assert!(web_spec.rules[0].remote_addresses.is_empty());
}

async fn report(
    c: &mut NodeServiceClient<Channel>,
    token: &str,
    node: &str,
    status: proto::ResourceStatus,
) {
    let resp = c
        .update_resource_status(req(
            proto::UpdateResourceStatusRequest {
                node_id: node.into(),
                statuses: vec![status],
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.accepted, 1, "report from {node} not accepted");
}

#[tokio::test]
async fn a_template_keeps_each_nodes_report_and_shows_the_least_advanced() {
    let m = start_member().await;
    let mut c = client(&m).await;
    let a = register(&mut c, &m.token, "", "host-a", 4, 8).await;
    let b = register(&mut c, &m.token, "", "host-b", 4, 8).await;
    let tpl = m
        .create(
            "/v1/templates",
            json!({"name": "img", "spec": {"source_url": "file:///images/img.raw"}}),
        )
        .await;
    let tpl_id = tpl["id"].as_str().unwrap().to_string();
    let template = |phase: proto::Phase, message: &str| proto::ResourceStatus {
        kind: proto::ResourceKind::Template as i32,
        id: tpl_id.clone(),
        phase: phase as i32,
        message: message.into(),
        ..Default::default()
    };
    let get = || async { m.get(&format!("/v1/templates/{tpl_id}")).await.1 };

    report(&mut c, &m.token, &a, template(proto::Phase::Ready, "")).await;
    report(
        &mut c,
        &m.token,
        &b,
        template(proto::Phase::Failed, "disk full"),
    )
    .await;
    let t = get().await;
    assert_eq!(t["status"]["phase"], "failed", "{t}");
    assert_eq!(t["status"]["message"], format!("node {b}: disk full"));
    assert_eq!(t["status"]["nodes"][&a]["phase"], "ready");
    assert_eq!(t["status"]["nodes"][&b]["phase"], "failed");

    // A later success on the first node does not hide the second node's failure.
    report(&mut c, &m.token, &a, template(proto::Phase::Ready, "")).await;
    assert_eq!(get().await["status"]["phase"], "failed");

    report(&mut c, &m.token, &b, template(proto::Phase::Importing, "")).await;
    let t = get().await;
    assert_eq!(t["status"]["phase"], "importing");
    assert_eq!(t["status"]["node_id"], b.as_str());
    report(&mut c, &m.token, &b, template(proto::Phase::Ready, "")).await;
    let t = get().await;
    assert_eq!(t["status"]["phase"], "ready");
    assert_eq!(t["status"]["message"], "");

    // A failed node that is removed no longer counts.
    report(&mut c, &m.token, &b, template(proto::Phase::Failed, "gone")).await;
    assert_eq!(get().await["status"]["phase"], "failed");
    let (s, _) = m.delete(&format!("/v1/nodes/{b}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let t = get().await;
    assert_eq!(t["status"]["phase"], "ready", "{t}");
    assert!(t["status"]["nodes"].get(&b).is_none());
}

/// A stand-in for mvirt-node's console relay (mvirt-node depends on this crate, so the real
/// relay cannot be a dev-dependency here): it checks the secret and echoes input back with a
/// prefix, after a "scrollback" line naming the VM.
struct EchoRelay {
    secret: String,
}

#[tonic::async_trait]
impl proto::node_agent_server::NodeAgent for EchoRelay {
    type ConsoleStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::ConsoleFrame, tonic::Status>> + Send>,
    >;

    type PodLogsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::PodLogEntry, tonic::Status>> + Send>,
    >;
    type PodExecStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::PodExecOutput, tonic::Status>> + Send>,
    >;

    async fn pod_logs(
        &self,
        _: tonic::Request<proto::PodLogsRequest>,
    ) -> Result<tonic::Response<Self::PodLogsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the console stand-in has no pods (tests/pods.rs has the pod relay's)",
        ))
    }

    async fn pod_exec(
        &self,
        _: tonic::Request<tonic::Streaming<proto::PodExecInput>>,
    ) -> Result<tonic::Response<Self::PodExecStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the console stand-in has no pods (tests/pods.rs has the pod relay's)",
        ))
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
        Err(tonic::Status::unimplemented(
            "the console stand-in has no host (the e2e test reads a real one)",
        ))
    }

    async fn console(
        &self,
        request: tonic::Request<tonic::Streaming<proto::ConsoleFrame>>,
    ) -> Result<tonic::Response<Self::ConsoleStream>, tonic::Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if auth != format!("Bearer {}", self.secret) {
            return Err(tonic::Status::unauthenticated("bad console secret"));
        }
        // Like the node agent: only a member may open a console.
        let member = request
            .extensions()
            .get::<mvirt_common::tls::PeerInfo>()
            .and_then(|p| p.identity.clone())
            .and_then(|i| i.member_id());
        if member.is_none() {
            return Err(tonic::Status::permission_denied("not a member"));
        }
        let mut input = request.into_inner();
        let stream = async_stream_like(move |tx| async move {
            let mut first = true;
            while let Ok(Some(frame)) = input.message().await {
                if first {
                    first = false;
                    let _ = tx
                        .send(Ok(proto::ConsoleFrame {
                            vm_id: frame.vm_id.clone(),
                            data: format!("scrollback of {}\n", frame.vm_id).into_bytes(),
                        }))
                        .await;
                }
                if !frame.data.is_empty() {
                    let mut data = b"echo:".to_vec();
                    data.extend_from_slice(&frame.data);
                    if tx
                        .send(Ok(proto::ConsoleFrame {
                            vm_id: String::new(),
                            data,
                        }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        Ok(tonic::Response::new(stream))
    }
}

/// A channel-backed stream fed by a spawned task.
fn async_stream_like<F, Fut>(
    f: F,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::ConsoleFrame, tonic::Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<proto::ConsoleFrame, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tokio::test]
async fn the_console_websocket_is_relayed_to_the_vms_node() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let m = start_member().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let mut c = client(&m).await;
    // The relay serves TLS with the node certificate Register issues for its CSR, and
    // requires a member's client certificate (as mvirt-node's does).
    let (csr, key) = mvirt_common::tls::generate_csr("host-1", &["127.0.0.1".into()]).unwrap();
    let registered = c
        .register(req(
            proto::RegisterRequest {
                name: "host-1".into(),
                address: "127.0.0.1".into(),
                capacity: capacity(4, 8),
                console_endpoint: format!("https://{relay_addr}"),
                console_secret: "s3cret".into(),
                csr_pem: csr,
                ..Default::default()
            },
            &m.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let node = registered.node_id;
    assert_eq!(registered.ca_pem, m.ca_pem);
    let cert = mvirt_common::tls::CertStore::from_pem(&registered.certificate_pem, &key).unwrap();
    assert_eq!(
        cert.identity(),
        Some(mvirt_common::tls::PeerIdentity::Node(node.clone()))
    );
    let relay_tls = mvirt_common::tls::server_config(
        &cert,
        mvirt_common::tls::ClientAuth::Required(m.ca_pem.clone()),
    )
    .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::node_agent_server::NodeAgentServer::new(EchoRelay {
                secret: "s3cret".into(),
            }))
            .serve_with_incoming(mvirt_common::tls::TlsIncoming::new(
                listener,
                Some(relay_tls),
            )),
    );
    // The secret is never shown.
    let (_, n) = m.get(&format!("/v1/nodes/{node}")).await;
    assert!(!n.to_string().contains("s3cret"), "{n}");
    assert_eq!(
        n["status"]["console_endpoint"],
        format!("https://{relay_addr}")
    );

    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "web", "spec": {"vcpus": 1, "memory_bytes": GIB}}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    vm_until(&m, &vm_id, "placed", |v| v["node_id"] == node.as_str()).await;

    // The WebSocket runs over the REST listener's TLS. Without a token the upgrade is refused.
    let ws_url = format!("{}/v1/vms/web/console", m.url.replace("https://", "wss://"));
    let rest_addr = m.url.trim_start_matches("https://").to_string();
    let tls = mvirt_common::tls::client_config(&m.ca_pem, None).unwrap();
    let connect = |url: String| {
        let tls = tls.clone();
        let rest_addr = rest_addr.clone();
        async move {
            let stream = mvirt_common::tls::connect(&rest_addr, "127.0.0.1", tls)
                .await
                .unwrap();
            tokio_tungstenite::client_async(url, stream).await
        }
    };
    assert!(connect(ws_url.clone()).await.is_err());
    let (mut ws, _) = connect(format!("{ws_url}?access_token={}", m.token))
        .await
        .expect("console websocket");
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(
        first.into_data().as_ref(),
        format!("scrollback of {vm_id}\n").as_bytes()
    );
    ws.send(Message::Binary(b"ls\n".to_vec().into()))
        .await
        .unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), b"echo:ls\n");
    ws.close(None).await.unwrap();

    // A VM that is not placed has no console.
    let pending = m
        .create(
            "/v1/vms",
            json!({"name": "huge", "spec": {"vcpus": 64, "memory_bytes": GIB}}),
        )
        .await;
    let (s, v) = m
        .get(&format!(
            "/v1/vms/{}/console",
            pending["id"].as_str().unwrap()
        ))
        .await;
    assert_error(s, &v, 409, "conflict");
}
