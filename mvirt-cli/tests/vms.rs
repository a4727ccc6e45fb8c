//! `mvirt vm` against a real single-member mvirt-api started in-process: create with every
//! option, the actions, routes, cascading delete, and the changes after create (`resize`,
//! `attach`, `detach`), each a read of the VM and a write of its spec at the read revision,
//! checked in the stored spec after every step, with the refusals (nothing to detach, a stale
//! revision) and their exit codes.

mod common;

use common::*;
use mvirt_api::proto;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_lifecycle_create_actions_routes_and_cascading_delete() {
    let api = start_api().await;
    let node = api.register_node("hv1", "", "").await;
    api.json(&[
        "template",
        "import",
        "deb",
        "--source",
        "http://127.0.0.1:1/deb.raw",
        "--no-wait",
    ])
    .await;
    api.json(&["network", "create", "lan", "--ipv4", "10.1.0.0/24"])
        .await;
    let key = api.dir.path().join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3Nza test@host\n").expect("write key");
    let ud = api.dir.path().join("user-data.yaml");
    std::fs::write(&ud, "#cloud-config\nhostname: web\n").expect("write user-data");

    let vm = api
        .json(&[
            "vm",
            "create",
            "web",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--template",
            "deb",
            "--disk-size",
            "5G",
            "--network",
            "lan",
            "--ssh-key",
            key.to_str().unwrap_or_default(),
            "--user-data",
            ud.to_str().unwrap_or_default(),
            "--node-selector",
            "zone=a",
        ])
        .await;
    let vm_id = id_of(&vm);
    assert_eq!(vm["spec"]["vcpus"], 2);
    assert_eq!(vm["spec"]["memory_bytes"], GIB);
    assert_eq!(
        vm["spec"]["ssh_authorized_keys"][0],
        "ssh-ed25519 AAAAC3Nza test@host"
    );
    assert_eq!(vm["spec"]["user_data"], "#cloud-config\nhostname: web\n");
    assert_eq!(vm["spec"]["node_selector"], "zone=a");
    assert_eq!(
        vm["spec"]["volume_ids"].as_array().map(Vec::len),
        Some(1),
        "owned root volume: {vm}"
    );
    assert_eq!(
        vm["spec"]["nic_ids"].as_array().map(Vec::len),
        Some(1),
        "owned NIC: {vm}"
    );

    api.fails(&["vm", "create", "web"], 4, "already_exists")
        .await;
    api.fails(&["vm", "create", "x", "--template", "nope"], 3, "not found")
        .await;
    api.fails(
        &["vm", "create", "x", "--memory", "lots"],
        2,
        "invalid size",
    )
    .await;
    api.fails(&["vm", "create", "x", "--cpus", "two"], 2, "invalid value")
        .await;

    // The scheduler places the VM on the only node.
    let http = api.http();
    mvirt_testsupport::process::wait_until_async(
        "vm placed",
        std::time::Duration::from_secs(20),
        || async {
            let v: Value = http
                .get(format!("{}/v1/vms/{vm_id}", api.url))
                .bearer_auth(&api.token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["node_id"] == node.as_str()).then_some(())
        },
    )
    .await;
    let shown = api.json(&["vm", "show", "web"]).await;
    assert_eq!(shown["node_id"], node.as_str());
    assert_eq!(
        names(&api.json(&["vm", "list", "--node", "hv1"]).await),
        ["web"]
    );
    assert_eq!(
        api.json(&["vm", "list", "--phase", "running"]).await,
        serde_json::json!([]),
        "no node reported running"
    );
    assert_eq!(
        api.json(&["vm", "list", "-l", "tier=none"]).await,
        serde_json::json!([])
    );
    let list = api.json(&["vm", "list"]).await;
    assert_eq!(names(&list), ["web"]);
    let table = api.mvirt(&["vm", "list"]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with(&vm_id[..8]) && l.contains("web") && l.contains("1GiB")),
        "{}",
        table.stdout
    );

    let routes = api.json(&["route", "list"]).await;
    assert_eq!(routes[0]["vm"], "web");
    assert_eq!(routes[0]["node"], node.as_str());
    assert_eq!(routes[0]["network"], "lan");
    assert!(
        routes[0]["destination"]
            .as_str()
            .is_some_and(|d| d.starts_with("10.1.0.") && d.ends_with("/32")),
        "{routes}"
    );

    for (action, desired) in [
        ("stop", "stopped"),
        ("start", "running"),
        ("kill", "stopped"),
        ("restart", "running"),
    ] {
        let v = api.json(&["vm", action, "web"]).await;
        assert_eq!(v["spec"]["desired_state"], desired, "after {action}: {v}");
    }
    let out = api.mvirt(&["vm", "stop", "web"]).await;
    assert_eq!(out.stdout.trim(), "vm web: stop requested");
    api.fails(&["vm", "start", "ghost"], 3, "not found").await;
    // The console needs a node with a console relay; this one has none.
    api.fails(&["vm", "console", "web"], 4, "console").await;

    let out = api.mvirt(&["vm", "delete", "web"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        api.json(&["volume", "list"]).await,
        serde_json::json!([]),
        "owned root volume deleted with the VM"
    );
    assert_eq!(
        api.json(&["nic", "list"]).await,
        serde_json::json!([]),
        "owned NIC deleted with the VM"
    );
    api.fails(&["vm", "show", "web"], 3, "not found").await;
}

/// The ids in a VM's `spec.<field>`.
fn ids(vm: &Value, field: &str) -> Vec<String> {
    vm["spec"][field]
        .as_array()
        .unwrap_or_else(|| panic!("no spec.{field} in {vm}"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_attach_and_detach_change_the_stored_spec() {
    let api = start_api().await;
    api.json(&["network", "create", "lan", "--ipv4", "10.2.0.0/24"])
        .await;
    let vol = api
        .json(&["volume", "create", "data", "--size", "1G"])
        .await;
    let nic = api
        .json(&["nic", "create", "eth1", "--network", "lan"])
        .await;
    let vm = api
        .json(&[
            "vm",
            "create",
            "web",
            "--cpus",
            "1",
            "--memory",
            "512M",
            "--stopped",
        ])
        .await;
    assert_eq!(ids(&vm, "volume_ids"), Vec::<String>::new());

    let resized = api
        .json(&["vm", "resize", "web", "--vcpus", "2", "--memory", "2GiB"])
        .await;
    assert_eq!(resized["spec"]["vcpus"], 2);
    assert_eq!(resized["spec"]["memory_bytes"], 2 * GIB);
    let out = api.mvirt(&["vm", "resize", "web", "--vcpus", "3"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "vm web: resized to 3 vCPUs, 2GiB memory");
    let shown = api.json(&["vm", "show", "web"]).await;
    assert_eq!(shown["spec"]["vcpus"], 3, "stored: {shown}");
    assert_eq!(
        shown["spec"]["memory_bytes"],
        2 * GIB,
        "memory kept: {shown}"
    );
    api.fails(&["vm", "resize", "web"], 2, "--vcpus").await;
    api.fails(
        &["vm", "resize", "web", "--memory", "lots"],
        2,
        "invalid size",
    )
    .await;
    api.fails(&["vm", "resize", "ghost", "--vcpus", "2"], 3, "not found")
        .await;

    let attached = api.json(&["vm", "attach", "web", "--volume", "data"]).await;
    assert_eq!(ids(&attached, "volume_ids"), [id_of(&vol)]);
    let out = api.mvirt(&["vm", "attach", "web", "--nic", "eth1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "vm web: nic eth1 attached");
    let shown = api.json(&["vm", "show", "web"]).await;
    assert_eq!(ids(&shown, "nic_ids"), [id_of(&nic)]);
    assert_eq!(
        api.json(&["volume", "show", "data"]).await["vm_id"],
        shown["id"],
        "the volume knows its VM"
    );
    api.fails(
        &["vm", "attach", "web", "--volume", "data"],
        4,
        "volume data is already attached to vm web",
    )
    .await;

    let detached = api
        .json(&["vm", "detach", "web", "--volume", "data", "--nic", "eth1"])
        .await;
    assert_eq!(ids(&detached, "volume_ids"), Vec::<String>::new());
    assert_eq!(ids(&detached, "nic_ids"), Vec::<String>::new());
    let shown = api.json(&["vm", "show", "web"]).await;
    assert_eq!(ids(&shown, "volume_ids"), Vec::<String>::new());
    assert_eq!(ids(&shown, "nic_ids"), Vec::<String>::new());
    assert!(api.json(&["nic", "show", "eth1"]).await["vm_id"].is_null());

    api.fails(
        &["vm", "detach", "web", "--volume", "data"],
        4,
        "volume data is not attached to vm web",
    )
    .await;
    api.fails(
        &["vm", "detach", "web", "--nic", "eth1"],
        4,
        "nic eth1 is not attached to vm web",
    )
    .await;
    api.fails(
        &["vm", "detach", "web", "--volume", "ghost"],
        3,
        "not found",
    )
    .await;
    api.fails(&["vm", "attach", "web"], 2, "--volume").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_revision_is_refused_with_a_clear_conflict() {
    let api = start_api().await;
    let vm = api
        .json(&["vm", "create", "web", "--cpus", "1", "--stopped"])
        .await;
    let read = vm["revision"].as_u64().expect("revision");
    api.json(&["vm", "resize", "web", "--vcpus", "2"]).await;
    // The VM moved on since `read`: a change based on it must not overwrite the newer one.
    let out = api
        .fails(
            &[
                "--if-match",
                &read.to_string(),
                "vm",
                "resize",
                "web",
                "--vcpus",
                "4",
            ],
            4,
            "vm web was changed by someone else after it was read",
        )
        .await;
    assert!(
        out.stderr.contains("run the command again"),
        "{}",
        out.stderr
    );
    assert_eq!(api.json(&["vm", "show", "web"]).await["spec"]["vcpus"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_prints_the_conditions_the_vm_reports() {
    let api = start_api().await;
    let node = api.register_node("hv1", "", "").await;
    let vm = api
        .json(&["vm", "create", "web", "--cpus", "1", "--memory", "1G"])
        .await;
    let vm_id = id_of(&vm);
    let http = api.http();
    mvirt_testsupport::process::wait_until_async(
        "vm placed",
        std::time::Duration::from_secs(20),
        || async {
            let v: Value = http
                .get(format!("{}/v1/vms/{vm_id}", api.url))
                .bearer_auth(&api.token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["node_id"] == node.as_str()).then_some(())
        },
    )
    .await;
    api.report(
        &node,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Vm as i32,
            id: vm_id.clone(),
            phase: proto::Phase::Running as i32,
            conditions: vec![proto::Condition {
                r#type: "restart_required".into(),
                status: "true".into(),
                message: "memory shrinks at the next boot".into(),
            }],
            ..Default::default()
        },
    )
    .await;
    let out = api
        .mvirt(&["vm", "resize", "web", "--memory", "512M"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("restart required: memory shrinks at the next boot"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_drain_waits_for_the_end_and_fails_with_what_could_not_move() {
    let api = start_api().await;
    let node = api.register_node("hv1", "", "").await;
    let vm_id = id_of(
        &api.json(&["vm", "create", "web", "--cpus", "1", "--memory", "1G"])
            .await,
    );
    let http = api.http();
    mvirt_testsupport::process::wait_until_async(
        "vm placed",
        std::time::Duration::from_secs(20),
        || async {
            let v: Value = http
                .get(format!("{}/v1/vms/{vm_id}", api.url))
                .bearer_auth(&api.token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["node_id"] == node.as_str()).then_some(())
        },
    )
    .await;
    api.report(
        &node,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Vm as i32,
            id: vm_id.clone(),
            phase: proto::Phase::Running as i32,
            ..Default::default()
        },
    )
    .await;
    // The only node: the running VM has nowhere to go, the drain ends failed (exit 1).
    let out = api
        .fails(&["node", "drain", "hv1", "--wait"], 1, "drain failed")
        .await;
    assert!(
        out.stderr.contains(&format!("vm {vm_id}: no other node")),
        "{out:?}"
    );
    assert!(out.stdout.contains("node hv1: failed: 0 moved"), "{out:?}");
    let shown = api.json(&["node", "show", "hv1"]).await;
    assert_eq!(shown["status"]["drain"]["state"], "failed");
    assert_eq!(shown["spec"]["schedulable"], false);
    let out = api.mvirt(&["node", "undrain", "hv1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "node hv1 undrained (schedulable again)\n");
    let shown = api.json(&["node", "show", "hv1"]).await;
    assert!(shown["status"]["drain"].is_null(), "{shown}");
    assert_eq!(shown["spec"]["schedulable"], true);

    // An empty node drains at once.
    api.register_node("hv2", "", "").await;
    let out = api.mvirt(&["node", "drain", "hv2", "--wait"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("node hv2: drained: 0 moved"), "{out:?}");
    api.fails(&["node", "drain", "nosuch"], 3, "not found")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_migrate_moves_a_stopped_vm_cold_once_its_node_sent_the_volumes() {
    let api = start_api().await;
    let hv1 = api.register_node("hv1", "https://127.0.0.1:1", "s1").await;
    let vm = api
        .json(&[
            "vm",
            "create",
            "web",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--stopped",
        ])
        .await;
    let vm_id = id_of(&vm);
    let http = api.http();
    mvirt_testsupport::process::wait_until_async(
        "vm placed",
        std::time::Duration::from_secs(20),
        || async {
            let v: Value = http
                .get(format!("{}/v1/vms/{vm_id}", api.url))
                .bearer_auth(&api.token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["node_id"] == hv1.as_str()).then_some(())
        },
    )
    .await;
    let hv2 = api.register_node("hv2", "https://127.0.0.1:2", "s2").await;
    api.fails(
        &["vm", "migrate", "web"],
        4,
        "a cold move waits until it is stopped",
    )
    .await;
    api.report(
        &hv1,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Vm as i32,
            id: vm_id.clone(),
            phase: proto::Phase::Stopped as i32,
            ..Default::default()
        },
    )
    .await;
    let out = api.mvirt(&["vm", "migrate", "web", "--node", "hv2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        format!("vm web: cold move to node {hv2} started\n")
    );
    let shown = api.json(&["vm", "show", "web"]).await;
    let m = &shown["migration"];
    assert_eq!(
        (m["cold"].clone(), m["phase"].clone()),
        (json!(true), json!("pending")),
        "{shown}"
    );
    // The source's report on the move's one-off schedule (the VM has no volumes: nothing to
    // wait for) switches it; --wait then says so.
    api.report(
        &hv1,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Replication as i32,
            id: m["id"].as_str().unwrap().to_string(),
            phase: proto::Phase::Ready as i32,
            ..Default::default()
        },
    )
    .await;
    let shown = api.json(&["vm", "show", "web"]).await;
    assert_eq!(shown["node_id"], json!(hv2), "{shown}");
    assert_eq!(shown["migration"]["phase"], "completed", "{shown}");
    assert_eq!(shown["spec"]["desired_state"], "stopped", "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_drain_moves_a_stopped_vm_cold_and_then_the_pods() {
    let api = start_api().await;
    let hv1 = api.register_node("hv1", "https://127.0.0.1:1", "s1").await;
    let vm_id = id_of(
        &api.json(&[
            "vm",
            "create",
            "idle",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--stopped",
        ])
        .await,
    );
    let out = api
        .mvirt(&["pod", "run", "web", "--image", "i:1", "--detach"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let http = api.http();
    let placed = |path: String| {
        let (http, url, token, hv1) = (
            http.clone(),
            api.url.clone(),
            api.token.clone(),
            hv1.clone(),
        );
        async move {
            let v: Value = http
                .get(format!("{url}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["node_id"] == hv1.as_str()).then_some(())
        }
    };
    for what in [format!("/v1/vms/{vm_id}"), "/v1/pods/web".to_string()] {
        mvirt_testsupport::process::wait_until_async(
            "placed on hv1",
            std::time::Duration::from_secs(20),
            || placed(what.clone()),
        )
        .await;
    }
    api.report(
        &hv1,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Vm as i32,
            id: vm_id.clone(),
            phase: proto::Phase::Stopped as i32,
            ..Default::default()
        },
    )
    .await;
    let hv2 = api.register_node("hv2", "https://127.0.0.1:2", "s2").await;
    // The stopped VM moves cold first; the pod waits for it.
    let out = api.mvirt(&["node", "drain", "hv1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        format!("node hv1: draining: 0 moved, 1 migrating, 0 remaining, 0 failed (migrating: {vm_id})\n")
    );
    let vm = api.json(&["vm", "show", "idle"]).await;
    assert_eq!(vm["migration"]["cold"], true, "{vm}");
    assert_eq!(
        api.json(&["pod", "show", "web"]).await["node_id"],
        json!(hv1)
    );
    // hv1 sent the VM's volumes (it has none): the VM switches, then the pod moves.
    api.report(
        &hv1,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Replication as i32,
            id: vm["migration"]["id"].as_str().unwrap().to_string(),
            phase: proto::Phase::Ready as i32,
            ..Default::default()
        },
    )
    .await;
    let node = api.json(&["node", "show", "hv1"]).await;
    let d = &node["status"]["drain"];
    assert_eq!(d["state"], "drained", "{node}");
    let pod = api.json(&["pod", "show", "web"]).await;
    assert_eq!(d["moved"], json!([vm_id]), "{node}");
    assert_eq!(d["moved_pods"], json!([pod["id"]]), "{node}");
    assert_eq!(pod["node_id"], json!(hv2), "{pod}");
    assert_eq!(
        api.json(&["vm", "show", "idle"]).await["node_id"],
        json!(hv2)
    );
}
