//! Node drain through the API between two nodes on this host (each with its own agent, data
//! dir and local daemons; QEMU TCG guests): two running VMs (each counting on its console) and
//! a stopped one on node A with its root volume and a data volume holding a known block.
//!
//! 1. B is cordoned, so nothing can take A's VMs: `POST /v1/nodes/{A}/drain` ends `failed` at
//!    once, listing all three VMs with the reason (B is cordoned); the VMs still run on A and
//!    keep counting. `DELETE …/drain` uncordons A.
//! 2. B uncordoned, A is drained again: its two running VMs migrate live to B one after the
//!    other (the next starts when the previous one is reported completed), then the stopped
//!    one moves cold (its volumes sent as replicas and promoted on B); the drain ends `drained`
//!    with all three moved, never more than one at a time. Each guest counts on there without
//!    a reboot, B's hypervisor runs both and A's none; the stopped VM is on B, still stopped,
//!    its two volumes on B byte for byte what they were on A (a digest of each device, and the
//!    block), A holds no copy of them; started on B it boots. A stays cordoned, so a new VM
//!    goes to B.
//!
//! Pods are not part of this test (a pod needs registries, an uplink and a microVM boot: see
//! tests/pods.rs); their drain is tested in mvirt-api's `state::drain` unit tests.

mod common;
#[path = "common/partition.rs"]
mod partition;

use std::path::Path;
use std::time::Duration;

use common::*;
use mvirt_testsupport::process::wait_until_async;
use mvirt_vmm::proto as vmm;
use mvirt_zfs::proto as zfs;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
use partition::{has_tag, write_tag};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(240);
const DRAIN: Duration = Duration::from_secs(300);

/// Creates a VM of 128 MiB from `template_id` (running unless `stopped`); its id.
async fn create_vm(rest: &Rest, name: &str, template_id: &str, stopped: bool) -> String {
    let vm = rest
        .post(
            "/v1/vms",
            json!({"name": name, "spec": {
                "vcpus": 1,
                "memory_bytes": 128u64 << 20,
                "desired_state": if stopped { "stopped" } else { "running" },
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
            }}),
        )
        .await;
    vm["id"].as_str().unwrap().to_string()
}

/// A digest of the whole device at `path` (its length and SipHash; compared within this
/// process only).
fn device_digest(path: &str) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    (bytes.len(), h.finish())
}

/// Volume `id` as mvirt-zfs on `endpoint` has it (`None`: not there).
async fn zfs_volume(endpoint: &str, id: &str) -> Option<zfs::Volume> {
    let mut c = ZfsServiceClient::connect(endpoint.to_string())
        .await
        .expect("connect mvirt-zfs");
    match c.get_volume(zfs::GetVolumeRequest { id: id.into() }).await {
        Ok(v) => Some(v.into_inner()),
        Err(e) if e.code() == tonic::Code::NotFound => None,
        Err(e) => panic!("GetVolume {id}: {e}"),
    }
}

/// The ids of the drain's `failed` entries with their reasons.
fn failures(node: &Value) -> Vec<(String, String)> {
    node["status"]["drain"]["failed"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["id"].as_str().unwrap_or_default().to_string(),
                        f["reason"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_moves_the_running_vms_live_and_one_that_cannot_move_fails_with_the_reason() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (log_endpoint, log_shutdown) = start_log(root).await;
    let (api, token, rest) = start_api(root, |_| {}).await;
    let hosts = [
        HostDaemons::start(&root.join("a"), &root.join("images"), &log_endpoint).await,
        HostDaemons::start(&root.join("b"), &root.join("images"), &log_endpoint).await,
    ];
    let agents = [("node-a", 0), ("node-b", 1)].map(|(name, i)| {
        let mut config = agent_config(
            name,
            &root.join(["a", "b"][i]).join("agent"),
            &hosts[i].endpoints,
            &api,
            &token,
        );
        // Three VMs of one vCPU each on a 2-core host (a stopped VM holds its share too).
        config.cpu_overcommit = 4.0;
        Agent::start(config)
    });
    let nodes = rest.wait_nodes_online(&["node-a", "node-b"]).await;
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let (node_a, node_b) = (format!("/v1/nodes/{a}"), format!("/v1/nodes/{b}"));

    // Everything lands on A while B is cordoned. No NICs: both "hosts" share one kernel, and a
    // NIC's TAP name derives from its id alone (tests/migration.rs).
    rest.put(&node_b, json!({"spec": {"schedulable": false}}))
        .await;
    let template_id = rest.create_template("tiny", &hosts[0].images).await;
    let vms = [
        create_vm(&rest, "one", &template_id, false).await,
        create_vm(&rest, "two", &template_id, false).await,
    ];
    // The stopped VM: its root volume and a data volume.
    let data = rest
        .post(
            "/v1/volumes",
            json!({"name": "idle-data", "spec": {"size_bytes": 32u64 << 20}}),
        )
        .await;
    let data_id = data["id"].as_str().unwrap().to_string();
    let idle = rest
        .post(
            "/v1/vms",
            json!({"name": "idle", "spec": {
                "vcpus": 1,
                "memory_bytes": 128u64 << 20,
                "desired_state": "stopped",
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
                "volume_ids": [data_id],
            }}),
        )
        .await;
    let stopped = idle["id"].as_str().unwrap().to_string();
    let mut consoles = Vec::new();
    for id in &vms {
        let vm = rest.wait_vm_phase(id, "running", BOOT).await;
        assert_eq!(vm["node_id"], json!(a), "{vm:#}");
        let console = GuestConsole::open(&hosts[0].endpoints.vmm, id).await;
        console.wait_for("MVIRT-GUEST-BOOTED", BOOT).await;
        console.start_counter(BOOT).await;
        consoles.push(console);
    }
    let idle = rest.wait_vm_phase(&stopped, "stopped", BOOT).await;
    assert_eq!(idle["node_id"], json!(a), "{idle:#}");
    let idle_volumes: Vec<String> = idle["spec"]["volume_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(idle_volumes.len(), 2, "{idle:#}");
    assert_eq!(idle_volumes[1], data_id);
    // A known block on the data volume, then each device's checksum on A.
    let mut sums = Vec::new();
    for (i, id) in idle_volumes.iter().enumerate() {
        let vol = wait_until_async("the stopped VM's volume on A", BOOT, || {
            let (endpoint, id) = (hosts[0].endpoints.zfs.clone(), id.clone());
            async move { zfs_volume(&endpoint, &id).await }
        })
        .await;
        if i == 1 {
            write_tag(Path::new(&vol.path), "cold-move-data");
        }
        sums.push(device_digest(&vol.path));
    }
    let drain = format!("{node_a}/drain");

    // 1. Nowhere to go: failed at once, with the reasons; the VMs run on on A.
    let failed = rest.post(&drain, json!({})).await;
    assert_eq!(failed["status"]["drain"]["state"], "failed", "{failed:#}");
    assert_eq!(failed["spec"]["schedulable"], false, "{failed:#}");
    assert!(
        failed["status"]["drain"].get("secret").is_none(),
        "the drain's secret is never shown: {failed:#}"
    );
    let reasons = failures(&failed);
    assert_eq!(reasons.len(), 3, "{failed:#}");
    for id in vms.iter().chain([&stopped]) {
        let (_, why) = reasons.iter().find(|(v, _)| v == id).expect("listed");
        assert!(why.contains("cordoned"), "{failed:#}");
    }
    for (id, console) in vms.iter().zip(&consoles) {
        let count = console.count();
        console
            .wait_for(&format!("COUNT-{}", count + 2), BOOT)
            .await;
        let vm = rest.get(&format!("/v1/vms/{id}")).await;
        assert_eq!(
            (vm["node_id"].clone(), vm["status"]["phase"].clone()),
            (json!(a), json!("running")),
            "{vm:#}"
        );
        assert!(vm["migration"].is_null(), "{vm:#}");
    }
    let (status, body) = rest
        .call(
            reqwest::Method::PUT,
            &node_a,
            Some(json!({"spec": {"schedulable": true}})),
        )
        .await;
    assert_eq!(
        status, 200,
        "a failed drain no longer holds the cordon: {body}"
    );
    let (status, body) = rest.call(reqwest::Method::DELETE, &drain, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["status"]["drain"].is_null(), "{body:#}");

    // 2. B open: both running VMs move live, one after the other, then the stopped one cold.
    rest.put(&node_b, json!({"spec": {"schedulable": true}}))
        .await;
    let started = rest.post(&drain, json!({})).await;
    assert_eq!(
        started["status"]["drain"]["state"], "draining",
        "{started:#}"
    );
    assert_eq!(
        started["status"]["drain"]["migrating"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "one migration at a time: {started:#}"
    );
    let (status, body) = rest
        .call(reqwest::Method::POST, &drain, Some(json!({})))
        .await;
    assert_eq!(status, 409, "draining already: {body}");
    // Polled until it ends: never more than one migration at a time.
    let deadline = tokio::time::Instant::now() + DRAIN;
    let mut most_migrating = 0;
    let done = loop {
        let node = rest.get(&node_a).await;
        let d = &node["status"]["drain"];
        most_migrating = most_migrating.max(d["migrating"].as_array().map_or(0, Vec::len));
        if d["state"] != "draining" {
            break node;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain did not end within {DRAIN:?}: {node:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(most_migrating, 1, "{done:#}");
    assert_eq!(done["status"]["drain"]["state"], "drained", "{done:#}");
    assert_eq!(done["spec"]["schedulable"], false, "{done:#}");
    let mut moved: Vec<String> = done["status"]["drain"]["moved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    moved.sort();
    let mut want = vms.to_vec();
    want.push(stopped.clone());
    want.sort();
    assert_eq!(moved, want, "{done:#}");
    assert_eq!(
        done["status"]["drain"]["moved"][2],
        json!(stopped),
        "the stopped VM moves last: {done:#}"
    );
    assert!(failures(&done).is_empty(), "{done:#}");
    assert!(
        done["status"]["drain"]["finished_at"].is_string(),
        "{done:#}"
    );

    // Each guest counts on on B without a reboot; B runs both, A none.
    for (id, before) in vms.iter().zip(&consoles) {
        let vm = rest.wait_vm_phase(id, "running", DRAIN).await;
        assert_eq!(vm["node_id"], json!(b), "{vm:#}");
        assert_eq!(vm["migration"]["phase"], "completed", "{vm:#}");
        assert_eq!(vm["migration"]["source_node_id"], json!(a), "{vm:#}");
        let last = before.count();
        let after = GuestConsole::open(&hosts[1].endpoints.vmm, id).await;
        after.wait_for(&format!("COUNT-{}", last + 2), BOOT).await;
        assert!(
            !after.text().contains("MVIRT-GUEST-BOOTED"),
            "no second boot on B:\n{}",
            after.text()
        );
    }
    wait_until_async(
        "A's paused copies to be deleted",
        Duration::from_secs(60),
        || {
            let endpoint = hosts[0].endpoints.vmm.clone();
            async move { hypervisor_vms(&endpoint).await.is_empty().then_some(()) }
        },
    )
    .await;
    let there = hypervisor_vms(&hosts[1].endpoints.vmm).await;
    let running: Vec<&str> = there
        .iter()
        .filter(|vm| vm.state == vmm::VmState::Running as i32)
        .map(|vm| vm.id.as_str())
        .collect();
    assert_eq!(running.len(), 2, "{there:?}");
    assert!(
        vms.iter().all(|id| running.contains(&id.as_str())),
        "{there:?}"
    );

    // The stopped VM moved cold: on B, stopped, its volumes there with the same bytes, A holds
    // no copy; started on B, it boots.
    let idle = rest.wait_vm_phase(&stopped, "stopped", DRAIN).await;
    assert_eq!(idle["node_id"], json!(b), "{idle:#}");
    assert_eq!(idle["spec"]["desired_state"], "stopped", "{idle:#}");
    let m = &idle["migration"];
    assert_eq!(
        (
            m["cold"].clone(),
            m["phase"].clone(),
            m["source_node_id"].clone()
        ),
        (json!(true), json!("completed"), json!(a)),
        "{idle:#}"
    );
    for (i, (id, sum)) in idle_volumes.iter().zip(&sums).enumerate() {
        let vol = rest.get(&format!("/v1/volumes/{id}")).await;
        assert_eq!(vol["node_id"], json!(b), "{vol:#}");
        let on_b = wait_until_async("the volume promoted on B", DRAIN, || {
            let (endpoint, id) = (hosts[1].endpoints.zfs.clone(), id.clone());
            async move { zfs_volume(&endpoint, &id).await.filter(|v| !v.replica) }
        })
        .await;
        assert_eq!(
            &device_digest(&on_b.path),
            sum,
            "volume {id} is the same on B"
        );
        if i == 1 {
            assert!(has_tag(Path::new(&on_b.path), "cold-move-data"));
        }
        wait_until_async("A to delete its copy", Duration::from_secs(60), || {
            let (endpoint, id) = (hosts[0].endpoints.zfs.clone(), id.clone());
            async move { zfs_volume(&endpoint, &id).await.is_none().then_some(()) }
        })
        .await;
    }
    assert!(
        hypervisor_vms(&hosts[0].endpoints.vmm).await.is_empty(),
        "A holds no VM"
    );
    rest.post(&format!("/v1/vms/{stopped}/start"), json!({}))
        .await;
    let idle = rest.wait_vm_phase(&stopped, "running", BOOT).await;
    assert_eq!(idle["node_id"], json!(b), "{idle:#}");
    let console = GuestConsole::open(&hosts[1].endpoints.vmm, &stopped).await;
    console.wait_for("MVIRT-GUEST-BOOTED", BOOT).await;

    // A stays cordoned: a new VM goes to B.
    let new = create_vm(&rest, "fresh", &template_id, true).await;
    let placed = wait_until_async("the new VM placed", Duration::from_secs(60), || {
        let (rest, path) = (rest.clone(), format!("/v1/vms/{new}"));
        async move {
            let vm = rest.get(&path).await;
            vm["node_id"].as_str().map(str::to_string)
        }
    })
    .await;
    assert_eq!(placed, b);

    for id in vms.iter().chain([&new, &stopped]) {
        rest.delete(&format!("/v1/vms/{id}")).await;
    }
    wait_until_async("the VMs to be deleted", Duration::from_secs(60), || {
        let endpoint = hosts[1].endpoints.vmm.clone();
        async move { hypervisor_vms(&endpoint).await.is_empty().then_some(()) }
    })
    .await;
    for agent in agents {
        agent.stop().await;
    }
    api.stop().await;
    mvirt_testsupport::process::assert_no_hypervisor_outlives(root, Duration::from_secs(10)).await;
    log_shutdown.trigger();
}
