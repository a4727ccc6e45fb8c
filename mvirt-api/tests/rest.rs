//! Single-member REST tests against a real in-process mvirt-api (Raft, SQLite and all).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn network(m: &Member, name: &str, prefix: &str) -> Value {
    m.create(
        "/v1/networks",
        json!({"name": name, "spec": {"ipv4_prefix": prefix, "ipv6_prefix": "fd00:1::/64"}}),
    )
    .await
}

async fn template(m: &Member, name: &str) -> Value {
    m.create("/v1/templates", json!({"name": name, "spec": {"source_url": "http://127.0.0.1:1/disk.qcow2", "format": "qcow2"}})).await
}

#[tokio::test]
async fn bootstrap_writes_a_private_admin_token_and_every_call_needs_it() {
    let m = start_member().await;
    let path = m.dir.path().join("admin.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let resp = m
        .http
        .get(format!("{}/v1/vms", m.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    let resp = m
        .http
        .post(format!("{}/v1/networks", m.url))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Health is the only anonymous endpoint.
    let resp = m
        .http
        .get(format!("{}/v1/health", m.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The default project exists.
    let (s, v) = m.get("/v1/projects/default").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "default");
}

#[tokio::test]
async fn tokens_are_created_shown_once_and_revoked_and_node_tokens_cannot_use_rest() {
    let m = start_member().await;
    let created = m
        .create("/v1/tokens", json!({"name": "agent", "role": "node"}))
        .await;
    let secret = created["token"].as_str().unwrap().to_string();
    let (_, list) = m.get("/v1/tokens").await;
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("token").is_none() && t.get("hash").is_none()));
    let resp = m
        .http
        .get(format!("{}/v1/vms", m.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    let admin2 = m
        .create("/v1/tokens", json!({"name": "ops", "role": "admin"}))
        .await;
    let s2 = admin2["token"].as_str().unwrap();
    let resp = m
        .http
        .get(format!("{}/v1/vms", m.url))
        .bearer_auth(s2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, _) = m
        .delete(&format!("/v1/tokens/{}", admin2["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let resp = m
        .http
        .get(format!("{}/v1/vms", m.url))
        .bearer_auth(s2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (s, v) = m
        .post("/v1/tokens", json!({"name": "x", "role": "root"}))
        .await;
    assert_error(s, &v, 400, "invalid_argument");
}

#[tokio::test]
async fn bad_input_is_rejected_with_the_error_envelope_and_changes_nothing() {
    let m = start_member().await;
    let (_, before) = m.get("/v1/networks").await;
    let rev_before = before["revision"].as_u64().unwrap();

    // Unknown field at top level and inside spec.
    let (s, v) = m
        .post(
            "/v1/networks",
            json!({"name": "a", "spec": {"ipv4_prefix": "10.0.0.0/24"}, "extra": 1}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m
        .post(
            "/v1/networks",
            json!({"name": "a", "spec": {"ipv4_prefix": "10.0.0.0/24", "mtu": 9000}}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    // Names break the DNS-label rules.
    for bad in ["Upper", "-x", "a_b", ""] {
        let (s, v) = m
            .post(
                "/v1/networks",
                json!({"name": bad, "spec": {"ipv4_prefix": "10.0.0.0/24"}}),
            )
            .await;
        assert_error(s, &v, 400, "invalid_argument");
    }
    // Invalid values.
    let (s, v) = m
        .post(
            "/v1/networks",
            json!({"name": "a", "spec": {"ipv4_prefix": "10.0.0.1/24"}}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m
        .post(
            "/v1/vms",
            json!({"name": "a", "spec": {"vcpus": 0, "memory_bytes": GIB}}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    // Invalid JSON.
    let resp = m
        .http
        .post(format!("{}/v1/networks", m.url))
        .bearer_auth(&m.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Oversized body.
    let big = "x".repeat(2 * 1024 * 1024);
    let (s, v) = m
        .post(
            "/v1/networks",
            json!({"name": "a", "spec": {"ipv4_prefix": "10.0.0.0/24"}, "pad": big}),
        )
        .await;
    assert_error(s, &v, 413, "payload_too_large");
    // Unknown references.
    let (s, v) = m
        .post(
            "/v1/nics",
            json!({"name": "n", "spec": {"network_id": "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f"}}),
        )
        .await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = m
        .post(
            "/v1/networks",
            json!({"name": "a", "project": "nope", "spec": {"ipv4_prefix": "10.0.0.0/24"}}),
        )
        .await;
    assert_error(s, &v, 404, "not_found");
    // Unknown path.
    let (s, v) = m.get("/v1/nothing").await;
    assert_error(s, &v, 404, "not_found");

    let (_, after) = m.get("/v1/networks").await;
    assert!(after["items"].as_array().unwrap().is_empty());
    // Rejected commands never reach Raft, except those refused by apply, which change nothing.
    assert!(after["revision"].as_u64().unwrap() >= rev_before);
}

#[tokio::test]
async fn names_are_unique_per_project_and_projects_holding_resources_cannot_be_deleted() {
    let m = start_member().await;
    network(&m, "net", "10.0.0.0/24").await;
    let (s, v) = m
        .post(
            "/v1/networks",
            json!({"name": "net", "spec": {"ipv4_prefix": "10.1.0.0/24"}}),
        )
        .await;
    assert_error(s, &v, 409, "already_exists");

    let p = m
        .create(
            "/v1/projects",
            json!({"name": "team-a", "description": "A"}),
        )
        .await;
    assert_eq!(p["name"], "team-a");
    let other = m
        .create(
            "/v1/networks",
            json!({"name": "net", "project": "team-a", "spec": {"ipv4_prefix": "10.0.0.0/24"}}),
        )
        .await;
    let (s, v) = m.delete("/v1/projects/team-a").await;
    assert_error(s, &v, 409, "conflict");
    assert!(v["error"]["details"]["in_use_by"][0]
        .as_str()
        .unwrap()
        .starts_with("network/"));
    let (s, _) = m
        .delete(&format!("/v1/networks/{}", other["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = m.delete("/v1/projects/team-a").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = m.delete("/v1/projects/default").await;
    assert_error(s, &v, 409, "conflict");

    // Lists filter by project and paginate.
    for i in 0..5 {
        network(&m, &format!("n{i}"), &format!("10.{}.0.0/24", i + 10)).await;
    }
    let (_, page1) = m.get("/v1/networks?project=default&limit=4").await;
    assert_eq!(page1["items"].as_array().unwrap().len(), 4);
    let token = page1["next_page_token"].as_str().unwrap();
    let (_, page2) = m
        .get(&format!(
            "/v1/networks?project=default&limit=4&page_token={token}"
        ))
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 2);
    assert!(page2["next_page_token"].is_null());
    let (s, v) = m.get("/v1/networks?limit=0").await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m.get("/v1/networks?bogus=1").await;
    assert_error(s, &v, 400, "invalid_argument");
}

#[tokio::test]
async fn nics_get_first_free_addresses_unique_macs_and_requested_addresses() {
    let m = start_member().await;
    let net = network(&m, "net", "10.0.0.0/29").await;
    let nid = net["id"].as_str().unwrap();
    let a = m
        .create(
            "/v1/nics",
            json!({"name": "a", "spec": {"network_id": nid}}),
        )
        .await;
    let b = m
        .create(
            "/v1/nics",
            json!({"name": "b", "spec": {"network_id": nid}}),
        )
        .await;
    assert_eq!(a["spec"]["ipv4_address"], "10.0.0.1");
    assert_eq!(b["spec"]["ipv4_address"], "10.0.0.2");
    assert_eq!(a["spec"]["ipv6_address"], "fd00:1::1");
    assert_ne!(a["spec"]["mac_address"], b["spec"]["mac_address"]);
    let c = m
        .create(
            "/v1/nics",
            json!({"name": "c", "spec": {"network_id": nid, "ipv4_address": "10.0.0.6"}}),
        )
        .await;
    assert_eq!(c["spec"]["ipv4_address"], "10.0.0.6");
    let (s, v) = m
        .post(
            "/v1/nics",
            json!({"name": "d", "spec": {"network_id": nid, "ipv4_address": "10.0.0.6"}}),
        )
        .await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = m.post("/v1/nics", json!({"name": "d", "spec": {"network_id": nid, "mac_address": a["spec"]["mac_address"]}})).await;
    assert_error(s, &v, 409, "conflict");
    // /29: hosts .1-.6; .1 .2 .6 taken → .3 .4 .5 then full.
    for name in ["d", "e", "f"] {
        m.create(
            "/v1/nics",
            json!({"name": name, "spec": {"network_id": nid}}),
        )
        .await;
    }
    let (s, v) = m
        .post(
            "/v1/nics",
            json!({"name": "g", "spec": {"network_id": nid}}),
        )
        .await;
    assert_error(s, &v, 409, "conflict");

    // A network with NICs is only deleted with force, which deletes the NICs.
    let (s, v) = m.delete(&format!("/v1/networks/{nid}")).await;
    assert_error(s, &v, 409, "conflict");
    let (s, _) = m.delete(&format!("/v1/networks/{nid}?force=true")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, nics) = m.get("/v1/nics").await;
    assert!(nics["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn if_match_guards_updates_and_deletes_and_etags_carry_the_revision() {
    let m = start_member().await;
    let net = network(&m, "net", "10.0.0.0/24").await;
    let id = net["id"].as_str().unwrap();
    let rev = net["revision"].as_u64().unwrap();
    let resp = m
        .http
        .get(format!("{}/v1/networks/{id}", m.url))
        .bearer_auth(&m.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["etag"].to_str().unwrap(),
        format!("\"{rev}\"")
    );

    let spec = json!({"ipv4_prefix": "10.0.0.0/24", "ipv6_prefix": "fd00:1::/64", "dns_servers": ["10.0.0.53"]});
    let stale = format!("\"{}\"", rev + 1000);
    let (s, v) = m
        .call_with(
            Method::PUT,
            &format!("/v1/networks/{id}"),
            Some(json!({"spec": spec})),
            &[("if-match", &stale)],
        )
        .await;
    assert_error(s, &v, 412, "precondition_failed");
    let good = format!("\"{rev}\"");
    let (s, v) = m
        .call_with(
            Method::PUT,
            &format!("/v1/networks/{id}"),
            Some(json!({"spec": spec, "labels": {"env": "prod"}})),
            &[("if-match", &good)],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["dns_servers"][0], "10.0.0.53");
    assert_eq!(v["labels"]["env"], "prod");
    assert!(v["revision"].as_u64().unwrap() > rev);
    // Prefixes cannot change.
    let (s, v) = m
        .put(
            &format!("/v1/networks/{id}"),
            json!({"spec": {"ipv4_prefix": "10.9.0.0/24"}}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m
        .call_with(
            Method::DELETE,
            &format!("/v1/networks/{id}"),
            None,
            &[("if-match", &good)],
        )
        .await;
    assert_error(s, &v, 412, "precondition_failed");
    // Label filter.
    let (_, l) = m.get("/v1/networks?label=env=prod").await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    let (_, l) = m.get("/v1/networks?label=env=dev").await;
    assert!(l["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn idempotency_key_replays_the_first_result_and_refuses_a_different_request() {
    let m = start_member().await;
    let body = json!({"name": "net", "spec": {"ipv4_prefix": "10.0.0.0/24"}});
    let (s1, v1) = m
        .call_with(
            Method::POST,
            "/v1/networks",
            Some(body.clone()),
            &[("idempotency-key", "abc")],
        )
        .await;
    assert_eq!(s1, StatusCode::CREATED);
    let (s2, v2) = m
        .call_with(
            Method::POST,
            "/v1/networks",
            Some(body),
            &[("idempotency-key", "abc")],
        )
        .await;
    assert_eq!(s2, StatusCode::CREATED);
    assert_eq!(v1["id"], v2["id"]);
    let other = json!({"name": "net2", "spec": {"ipv4_prefix": "10.1.0.0/24"}});
    let (s3, v3) = m
        .call_with(
            Method::POST,
            "/v1/networks",
            Some(other),
            &[("idempotency-key", "abc")],
        )
        .await;
    assert_error(s3, &v3, 409, "conflict");
    let (_, list) = m.get("/v1/networks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_the_retention_window() {
    let m = start_member_with(|c| c.idempotency_retention = Duration::from_secs(1)).await;
    let post = |name: &str| {
        let body = json!({"name": name, "spec": {"ipv4_prefix": "10.0.0.0/24"}});
        let m = &m;
        async move {
            m.call_with(
                Method::POST,
                "/v1/networks",
                Some(body),
                &[("idempotency-key", "k1")],
            )
            .await
        }
    };
    let (s, _) = post("net-a").await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = post("net-b").await;
    assert_error(s, &v, 409, "conflict");
    // Once the record is pruned the key is free again: the different request now creates.
    mvirt_testsupport::process::wait_until_async(
        "idempotency record pruned",
        Duration::from_secs(15),
        || async { (post("net-b").await.0 == StatusCode::CREATED).then_some(()) },
    )
    .await;
    let (_, list) = m.get("/v1/networks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn vm_with_template_and_network_owns_its_volume_and_nic_and_delete_cascades() {
    let m = start_member().await;
    let net = network(&m, "net", "10.0.0.0/24").await;
    let tpl = template(&m, "debian").await;
    let sg = m
        .create("/v1/security-groups", json!({"name": "web", "spec": {"rules": [{"direction": "ingress", "protocol": "tcp", "port_min": 22, "port_max": 22, "cidr": "0.0.0.0/0"}]}}))
        .await;
    let data = m
        .create(
            "/v1/volumes",
            json!({"name": "data", "spec": {"size_bytes": GIB}}),
        )
        .await;
    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "web1", "labels": {"app": "web"}, "spec": {
                "vcpus": 2, "memory_bytes": 2 * GIB, "hostname": "web1.example",
                "root_volume": {"template_id": tpl["id"], "size_bytes": 10 * GIB},
                "network_interfaces": [{"network_id": net["id"], "security_group_ids": [sg["id"]]}],
                "volume_ids": [data["id"]],
                "ssh_authorized_keys": ["ssh-ed25519 AAAAC3Nza test@host"],
                "user_data": "#cloud-config\n"
            }}),
        )
        .await;
    assert_eq!(vm["scheduling"]["state"], "pending");
    assert_eq!(vm["status"]["phase"], "");
    let vol_ids: Vec<&str> = vm["spec"]["volume_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(vol_ids.len(), 2);
    assert_eq!(vol_ids[1], data["id"].as_str().unwrap());
    let (_, root) = m.get(&format!("/v1/volumes/{}", vol_ids[0])).await;
    assert_eq!(root["owner_vm_id"], vm["id"]);
    assert_eq!(root["spec"]["template_id"], tpl["id"]);
    assert_eq!(root["name"], "web1-root");
    let nic_id = vm["spec"]["nic_ids"][0].as_str().unwrap();
    let (_, nic) = m.get(&format!("/v1/nics/{nic_id}")).await;
    assert_eq!(nic["owner_vm_id"], vm["id"]);
    assert_eq!(nic["spec"]["ipv4_address"], "10.0.0.1");

    // In-use checks.
    let (s, v) = m
        .delete(&format!("/v1/volumes/{}", data["id"].as_str().unwrap()))
        .await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = m
        .delete(&format!(
            "/v1/security-groups/{}",
            sg["id"].as_str().unwrap()
        ))
        .await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = m
        .delete(&format!("/v1/templates/{}", tpl["id"].as_str().unwrap()))
        .await;
    assert_error(s, &v, 409, "conflict");
    let (s, v) = m.post("/v1/vms", json!({"name": "other", "spec": {"vcpus": 1, "memory_bytes": GIB, "volume_ids": [data["id"]]}})).await;
    assert_error(s, &v, 409, "conflict");
    // Owned volumes cannot be detached.
    let mut spec = vm["spec"].clone();
    spec["volume_ids"] = json!([data["id"]]);
    let (s, v) = m
        .put(
            &format!("/v1/vms/{}", vm["id"].as_str().unwrap()),
            json!({"spec": spec}),
        )
        .await;
    assert_error(s, &v, 409, "conflict");

    // Actions change the desired state only; the status stays what nodes reported (nothing).
    let id = vm["id"].as_str().unwrap();
    let (s, v) = m.post(&format!("/v1/vms/{id}/stop"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["desired_state"], "stopped");
    let (_, v) = m.post(&format!("/v1/vms/{id}/kill"), json!({})).await;
    assert_eq!(v["stop_mode"], "force");
    let (_, v) = m.post("/v1/vms/web1/restart", json!({})).await;
    assert_eq!(v["restart_generation"], 1);
    assert_eq!(v["spec"]["desired_state"], "running");
    assert_eq!(v["status"]["phase"], "");
    let (s, v) = m.post(&format!("/v1/vms/{id}/explode"), json!({})).await;
    assert_error(s, &v, 404, "not_found");

    // Delete cascades to the owned volume and NIC; the attached data volume is kept, detached.
    let (s, _) = m.delete(&format!("/v1/vms/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = m.get(&format!("/v1/volumes/{}", vol_ids[0])).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = m.get(&format!("/v1/nics/{nic_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, d) = m
        .get(&format!("/v1/volumes/{}", data["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(d["vm_id"].is_null());
    let (s, _) = m
        .delete(&format!("/v1/templates/{}", tpl["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = m
        .delete(&format!(
            "/v1/security-groups/{}",
            sg["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn volumes_grow_only_and_keep_named_snapshots() {
    let m = start_member().await;
    let vol = m
        .create(
            "/v1/volumes",
            json!({"name": "data", "spec": {"size_bytes": GIB}}),
        )
        .await;
    let id = vol["id"].as_str().unwrap();
    let (s, v) = m
        .post(
            &format!("/v1/volumes/{id}/resize"),
            json!({"size_bytes": 2 * GIB}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["size_bytes"], 2 * GIB);
    let (s, v) = m
        .post(
            &format!("/v1/volumes/{id}/resize"),
            json!({"size_bytes": GIB}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m
        .post(
            &format!("/v1/volumes/{id}/resize"),
            json!({"size_bytes": 12345}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");

    let snap = m
        .create(
            &format!("/v1/volumes/{id}/snapshots"),
            json!({"name": "before-upgrade"}),
        )
        .await;
    let (s, v) = m
        .post(
            &format!("/v1/volumes/{id}/snapshots"),
            json!({"name": "before-upgrade"}),
        )
        .await;
    assert_error(s, &v, 409, "already_exists");
    let (_, list) = m.get(&format!("/v1/volumes/{id}/snapshots")).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (s, _) = m
        .delete(&format!(
            "/v1/volumes/{id}/snapshots/{}",
            snap["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = m
        .delete(&format!(
            "/v1/volumes/{id}/snapshots/{}",
            snap["id"].as_str().unwrap()
        ))
        .await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = m.post("/v1/volumes", json!({"name": "c", "spec": {"size_bytes": GIB, "template_id": "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f"}})).await;
    assert_error(s, &v, 404, "not_found");
}

#[tokio::test]
async fn security_group_rules_are_added_validated_and_removed() {
    let m = start_member().await;
    let sg = m
        .create("/v1/security-groups", json!({"name": "web", "spec": {}}))
        .await;
    let id = sg["id"].as_str().unwrap();
    let rule = m.create(&format!("/v1/security-groups/{id}/rules"), json!({"direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 443, "cidr": "0.0.0.0/0"})).await;
    let rule_id = rule["id"].as_str().unwrap();
    let (s, v) = m
        .post(
            &format!("/v1/security-groups/{id}/rules"),
            json!({"direction": "sideways"}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m
        .post(
            &format!("/v1/security-groups/{id}/rules"),
            json!({"direction": "ingress", "protocol": "udp", "port_min": 9, "port_max": 1}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_argument");
    let (s, v) = m
        .post(&format!("/v1/security-groups/{id}/rules"), json!({"direction": "ingress", "remote_group_id": "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f"}))
        .await;
    assert_error(s, &v, 404, "not_found");
    let (_, g) = m.get(&format!("/v1/security-groups/{id}")).await;
    assert_eq!(g["spec"]["rules"].as_array().unwrap().len(), 1);
    let (s, _) = m
        .delete(&format!("/v1/security-groups/{id}/rules/{rule_id}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, g) = m.get("/v1/security-groups/web").await;
    assert!(g["spec"]["rules"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn openapi_document_is_generated_and_lists_the_resources() {
    let m = start_member().await;
    let (s, doc) = m.get("/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/vms",
        "/v1/vms/{id}",
        "/v1/networks",
        "/v1/nics",
        "/v1/security-groups",
        "/v1/templates",
        "/v1/volumes",
        "/v1/projects",
        "/v1/nodes",
        "/v1/events",
        "/v1/controlplane",
        "/v1/tokens",
    ] {
        assert!(doc["paths"].get(path).is_some(), "missing {path}");
    }
    assert!(doc["components"]["schemas"].get("Vm").is_some());
}

/// Reads SSE events from a response until `n` data lines were seen.
async fn read_sse(resp: reqwest::Response, n: usize) -> Vec<(u64, Value)> {
    use futures::StreamExt;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("SSE events in time")
            .expect("stream open")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(pos) = buf.find(
            "

",
        ) {
            let block: String = buf.drain(..pos + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<u64>().ok();
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<Value>(v.trim()).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn events_stream_live_and_resume_from_last_event_id_without_gaps() {
    let m = start_member().await;
    let live = m
        .http
        .get(format!("{}/v1/events", m.url))
        .bearer_auth(&m.token)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let n1 = network(&m, "a", "10.0.0.0/24").await;
    let n2 = network(&m, "b", "10.1.0.0/24").await;
    let got = read_sse(live, 2).await;
    assert_eq!(got[0].1["type"], "network.created");
    assert_eq!(got[0].1["id"], n1["id"]);
    assert_eq!(got[1].1["id"], n2["id"]);
    assert_eq!(got[0].0, n1["revision"].as_u64().unwrap());

    // Resume after the first: the second and everything after, in order, nothing twice.
    let n3 = network(&m, "c", "10.2.0.0/24").await;
    let resumed = m
        .http
        .get(format!("{}/v1/events?type=network", m.url))
        .bearer_auth(&m.token)
        .header("last-event-id", got[0].0.to_string())
        .send()
        .await
        .unwrap();
    let n4 = network(&m, "d", "10.3.0.0/24").await;
    let got = read_sse(resumed, 3).await;
    let ids: Vec<&Value> = got.iter().map(|(_, e)| &e["id"]).collect();
    assert_eq!(ids, vec![&n2["id"], &n3["id"], &n4["id"]]);
    let revs: Vec<u64> = got.iter().map(|(r, _)| *r).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]));
}

/// Token and join-token events reach admins live, never with the secret or its hash (the
/// hash is in the stored row; a stream read from the database shows the same redacted form).
#[tokio::test]
async fn token_events_carry_no_secret_or_hash() {
    let m = start_member().await;
    let (_, start) = m.get("/v1/networks").await;
    let from = start["revision"].as_u64().unwrap();
    let live = m
        .http
        .get(format!("{}/v1/events?type=token", m.url))
        .bearer_auth(&m.token)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let created = m
        .create("/v1/tokens", json!({"name": "watcher", "role": "viewer"}))
        .await;
    let secret = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let (s, _) = m.delete(&format!("/v1/tokens/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, join) = m
        .post("/v1/controlplane/join-tokens", json!({"ttl_seconds": 60}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{join}");
    let join_secret = join["token"].as_str().unwrap().to_string();

    let got = read_sse(live, 2).await;
    assert_eq!(got[0].1["type"], "token.created");
    assert_eq!(got[0].1["id"], id.as_str());
    assert_eq!(got[0].1["object"]["name"], "watcher");
    assert_eq!(got[0].1["object"]["role"], "viewer");
    assert_eq!(got[1].1["type"], "token.deleted");
    assert_eq!(got[1].1["object"], Value::Null);
    // The backlog (read from SQLite), token and join-token events together.
    let replay = m
        .http
        .get(format!("{}/v1/events?from_revision={from}", m.url))
        .bearer_auth(&m.token)
        .send()
        .await
        .unwrap();
    let replayed = read_sse(replay, 3).await;
    let types: Vec<&str> = replayed
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["token.created", "token.deleted", "join_token.created"]
    );
    assert_eq!(replayed[2].1["object"]["used"], false);
    for (_, e) in got.iter().chain(&replayed) {
        let text = e.to_string();
        assert!(e["object"].get("hash").is_none(), "{text}");
        assert!(
            !text.contains(&secret) && !text.contains(&join_secret),
            "{text}"
        );
        for s in [&secret, &join_secret] {
            let hash = mvirt_api::app::hash_secret(s);
            assert!(!text.contains(&hash), "the hash in {text}");
        }
    }
    // Not for viewers (scoped or not; tests/authz.rs checks the scoped case).
    let viewer = m
        .create("/v1/tokens", json!({"name": "reader", "role": "viewer"}))
        .await;
    let marker = network(&m, "after-tokens", "10.9.0.0/24").await;
    let as_viewer = m
        .http
        .get(format!("{}/v1/events?from_revision={from}", m.url))
        .bearer_auth(viewer["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let seen = read_sse(as_viewer, 1).await;
    assert_eq!(seen[0].1["id"], marker["id"]);
}

#[tokio::test]
async fn state_survives_a_restart_of_the_member() {
    let mut m = start_member().await;
    let net = network(&m, "net", "10.0.0.0/24").await;
    m.stop().await;
    let dir = m.dir.path().to_path_buf();
    let config =
        mvirt_api::server::ServerConfig::for_tests(std::net::IpAddr::from([127, 0, 0, 1]), &dir);
    let running = mvirt_api::server::start(config, mvirt_common::Shutdown::new())
        .await
        .unwrap();
    let url = running.api_url();
    let http = client_for(&running);
    let body: Value = mvirt_testsupport::process::wait_until_async(
        "network readable after restart",
        std::time::Duration::from_secs(20),
        || async {
            let r = http
                .get(format!("{url}/v1/networks/net"))
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
    assert_eq!(body["id"], net["id"]);
    assert_eq!(body["revision"], net["revision"]);
    running.stop().await;
}

#[tokio::test]
async fn commands_are_audited_in_mvirt_log_and_readable_through_v1_logs() {
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
    let net = network(&m, "audited", "10.0.0.0/24").await;
    let id = net["id"].as_str().unwrap().to_string();
    let page = mvirt_testsupport::process::wait_until_async(
        "audit entry",
        std::time::Duration::from_secs(20),
        || async {
            let (s, v) = m.get(&format!("/v1/logs?object_id={id}&level=audit")).await;
            (s == StatusCode::OK && !v["entries"].as_array()?.is_empty()).then_some(v)
        },
    )
    .await;
    let entry = &page["entries"][0];
    assert_eq!(entry["component"], "mvirt-api");
    assert_eq!(entry["level"], "audit");
    assert!(entry["message"]
        .as_str()
        .unwrap()
        .contains("create_network"));
    let (s, v) = m.get("/v1/logs?level=loud").await;
    assert_error(s, &v, 400, "invalid_argument");
    log_shutdown.trigger();
}
