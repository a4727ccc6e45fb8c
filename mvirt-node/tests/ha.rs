//! HA restart with fencing end to end (issue 23): one control plane, two hosts (each its own
//! zfs-fuse pool, daemons and agent), two `ha` VMs on node A — "web" with its root and a data
//! volume, "db" with its root — each replicated to node B every 5 s by its schedule. Node A's
//! agent reaches the API only through a TCP proxy in this test; cutting the proxy partitions A
//! from the control plane while A's daemons (and its VMs) keep running.
//!
//! Proves (fencing 6 s, margin 4 s): for each VM, A's hypervisor process exits (A fenced
//! itself) before the VM's hypervisor process starts on B (the exit is observed by polling
//! /proc; B's process start time is read from /proc/<pid>/stat); both VMs run on B from the
//! promoted replicas, each of the three volumes holding its write replicated before the cut;
//! `ha_status` shows the failover and the data-loss window; each schedule now targets A (not
//! protected while A is away). Once A is reconnected it does not start the old copies and
//! removes the VMs and volumes; then the schedules replicate B -> A (re-protection): both are
//! `ready` with a replica of every volume on A, one carrying a write made on B after the
//! failover.

mod common;
#[path = "common/partition.rs"]
mod partition;

use std::path::Path;
use std::time::Duration;

use common::*;
use mvirt_testsupport::process::wait_until_async;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use mvirt_zfs::proto as zfs;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
use partition::*;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(180);
const ROUND: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_fences_its_ha_vm_before_it_restarts_from_the_replica_elsewhere() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let (log_endpoint, log_shutdown) = start_log(root).await;
    // Heartbeats every second; lost after fencing (6 s) + margin (4 s).
    let (api, token, rest) = start_api(root, |config| {
        config.node_offline_after = Duration::from_secs(5);
        config.ha_lost_after = Duration::from_secs(10);
    })
    .await;
    let proxy = Proxy::start(api.grpc_addr).await;
    let host_a = HostDaemons::start(&root.join("a"), &root.join("images"), &log_endpoint).await;
    let host_b = HostDaemons::start(&root.join("b"), &root.join("images"), &log_endpoint).await;
    let mut config_a = agent_config(
        "node-a",
        &root.join("a/agent"),
        &host_a.endpoints,
        &api,
        &token,
    );
    config_a.labels.insert("zone".into(), "a".into());
    let scheme = api.grpc_url().split("://").next().unwrap().to_string();
    config_a.endpoints.api = format!("{scheme}://127.0.0.1:{}", proxy.port);
    config_a.ha_fencing = Duration::from_secs(6);
    let mut config_b = agent_config(
        "node-b",
        &root.join("b/agent"),
        &host_b.endpoints,
        &api,
        &token,
    );
    config_b.ha_fencing = Duration::from_secs(6);
    let agent_a = Agent::start(config_a);
    let agent_b = Agent::start(config_b);
    let [node_a, node_b]: [String; 2] = rest
        .wait_nodes_online(&["node-a", "node-b"])
        .await
        .try_into()
        .unwrap();

    let template_id = rest.create_template("tiny", &host_a.images).await;
    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "net", "spec": {"ipv4_prefix": "10.88.0.0/24"}}),
        )
        .await;
    // Two HA VMs on A: "web" with its root and a data volume, "db" with its root.
    let data = rest
        .post(
            "/v1/volumes",
            json!({"name": "web-data", "spec": {"size_bytes": 32u64 << 20}}),
        )
        .await;
    let web = rest
        .post(
            "/v1/vms",
            json!({"name": "web", "spec": {
                "vcpus": 1, "memory_bytes": 128u64 << 20, "node_selector": "zone=a", "ha": true,
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
                "volume_ids": [data["id"]],
                "network_interfaces": [{"network_id": network["id"]}],
            }}),
        )
        .await;
    assert_eq!(web["spec"]["ha"], true, "{web}");
    let db = rest
        .post(
            "/v1/vms",
            json!({"name": "db", "spec": {
                "vcpus": 1, "memory_bytes": 128u64 << 20, "node_selector": "zone=a", "ha": true,
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
            }}),
        )
        .await;
    let vm_ids: Vec<String> = [&web, &db]
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    // (volume id, its tag), every volume of both VMs.
    let mut volumes: Vec<(String, String)> = Vec::new();
    for (vm_id, name) in vm_ids.iter().zip(["web", "db"]) {
        let vm = rest.wait_vm_phase(vm_id, "running", BOOT).await;
        assert_eq!(vm["node_id"], node_a.as_str());
        for (i, v) in vm["spec"]["volume_ids"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            volumes.push((
                v.as_str().unwrap().to_string(),
                format!("before-the-cut-{name}-{i}"),
            ));
        }
    }
    assert_eq!(volumes.len(), 3, "{volumes:?}");
    let mut zfs_a = ZfsServiceClient::connect(host_a.endpoints.zfs.clone())
        .await
        .unwrap();
    let mut zfs_b = ZfsServiceClient::connect(host_b.endpoints.zfs.clone())
        .await
        .unwrap();
    let mut vmm_a = VmServiceClient::connect(host_a.endpoints.vmm.clone())
        .await
        .unwrap();
    let mut vmm_b = VmServiceClient::connect(host_b.endpoints.vmm.clone())
        .await
        .unwrap();
    for (volume_id, tag) in &volumes {
        let path = zfs_a
            .get_volume(zfs::GetVolumeRequest {
                id: volume_id.clone(),
            })
            .await
            .expect("the VM's volume on node A")
            .into_inner()
            .path;
        write_tag(Path::new(&path), tag);
    }

    let mut schedule_ids = Vec::new();
    for name in ["web", "db"] {
        let created = rest
            .post(
                "/v1/replications",
                json!({"name": format!("{name}-dr"), "spec": {"vm_id": name, "targets": ["node-b"], "interval_secs": 5, "keep": 2}}),
            )
            .await;
        schedule_ids.push(created["id"].as_str().unwrap().to_string());
    }
    wait_until_async("replicas on node B with the writes", ROUND, || {
        let (rest, zfs_b) = (rest.clone(), zfs_b.clone());
        let (schedule_ids, volumes) = (schedule_ids.clone(), volumes.clone());
        async move {
            for id in &schedule_ids {
                protected_on(&rest, id, None).await?;
            }
            replicas_hold(zfs_b, &volumes).await
        }
    })
    .await;
    let mut pids_a = Vec::new();
    for vm_id in &vm_ids {
        let pid = hypervisor_pid(&mut vmm_a, vm_id).await;
        pids_a.push(pid.expect("the VM runs on node A"));
    }

    // The partition: A's agent loses the API; A's daemons and VMs keep running.
    proxy.cut();
    let cut_at = epoch_secs();
    let mut exited_a: Vec<Option<f64>> = vec![None; 2];
    let mut pids_b: Vec<Option<u32>> = vec![None; 2];
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while pids_b.iter().any(Option::is_none) || exited_a.iter().any(Option::is_none) {
        assert!(
            std::time::Instant::now() < deadline,
            "no failover: A's processes gone = {exited_a:?}, B's pids = {pids_b:?}"
        );
        for i in 0..2 {
            if exited_a[i].is_none() && process_gone(pids_a[i]) {
                exited_a[i] = Some(epoch_secs());
            }
            if pids_b[i].is_none() {
                pids_b[i] = hypervisor_pid(&mut vmm_b, &vm_ids[i]).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..2 {
        let (exited_a, started_b) = (exited_a[i].unwrap(), process_start(pids_b[i].unwrap()));
        eprintln!(
            "VM {i}: cut at {cut_at:.2}; A's hypervisor gone by {:.2} s after; B's started {:.2} s after",
            exited_a - cut_at,
            started_b - cut_at
        );
        assert!(
            exited_a < started_b,
            "VM {i}: A's copy (seen gone at {exited_a:.2}) must stop before B's starts ({started_b:.2})"
        );
    }

    // Both VMs run on B, from the promoted replicas; their schedules now point back at A.
    for (vm_id, schedule_id) in vm_ids.iter().zip(&schedule_ids) {
        let vm = rest.wait_vm_phase(vm_id, "running", BOOT).await;
        assert_eq!(vm["node_id"], node_b.as_str(), "{vm}");
        let ha = &vm["ha_status"];
        assert_eq!(ha["state"], "failed_over", "{vm}");
        assert_eq!(ha["from_node_id"], node_a.as_str(), "{vm}");
        assert_eq!(ha["to_node_id"], node_b.as_str(), "{vm}");
        assert!(
            ha["data_loss_secs"].is_u64() && ha["replicated_at"].is_string(),
            "{vm}"
        );
        assert!(
            ha["message"]
                .as_str()
                .unwrap()
                .contains("goes back to node"),
            "{vm}"
        );
        let r = rest.get(&format!("/v1/replications/{schedule_id}")).await;
        assert_eq!(r["spec"]["targets"], json!([node_a]), "{r}");
        assert!(
            protected_on(&rest, schedule_id, Some(&node_a))
                .await
                .is_none(),
            "not protected while A is away: {r}"
        );
    }
    let mut promoted_paths = Vec::new();
    for (volume_id, tag) in &volumes {
        let promoted = zfs_b
            .get_volume(zfs::GetVolumeRequest {
                id: volume_id.clone(),
            })
            .await
            .expect("the volume on node B")
            .into_inner();
        assert!(!promoted.replica, "promoted: {promoted:?}");
        assert!(
            has_tag(Path::new(&promoted.path), tag),
            "the replicated write {tag} is there"
        );
        promoted_paths.push(promoted.path);
    }
    // A write on B after the failover, on web's data volume: re-protection must carry it to A.
    write_tag(Path::new(&promoted_paths[1]), "after-the-failover");

    // Reconnect A: the old copies never start again; the VMs and volumes leave node A; then
    // the schedules replicate B -> A (a full stream each) and say so.
    proxy.restore();
    let watch_until = std::time::Instant::now() + Duration::from_secs(90);
    let mut removed = false;
    let mut quiet_since: Option<std::time::Instant> = None;
    while !(removed && quiet_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(8))) {
        assert!(
            std::time::Instant::now() < watch_until,
            "node A did not clean up its copies"
        );
        let listed = vmm_a
            .list_vms(vmm::ListVmsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .vms;
        let copies: Vec<_> = listed.iter().filter(|v| vm_ids.contains(&v.id)).collect();
        assert!(
            copies.iter().all(|v| v.pid == 0),
            "node A started an old copy again: {copies:?}"
        );
        let listed = zfs_a
            .list_volumes(zfs::ListVolumesRequest {})
            .await
            .unwrap()
            .into_inner()
            .volumes;
        if copies.is_empty()
            && !listed
                .iter()
                .any(|v| volumes.iter().any(|(id, _)| *id == v.id))
        {
            removed = true;
        }
        let a = rest.get("/v1/nodes/node-a").await;
        if a["status"]["state"] == "online" {
            quiet_since.get_or_insert_with(std::time::Instant::now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut expected = volumes.clone();
    expected[1].1 = "after-the-failover".into();
    wait_until_async("replicas of every volume back on node A", ROUND, || {
        let (rest, zfs_a) = (rest.clone(), zfs_a.clone());
        let (schedule_ids, expected, node_a) =
            (schedule_ids.clone(), expected.clone(), node_a.clone());
        async move {
            for id in &schedule_ids {
                protected_on(&rest, id, Some(&node_a)).await?;
            }
            replicas_hold(zfs_a, &expected).await
        }
    })
    .await;
    for vm_id in &vm_ids {
        let vm = rest.get(&format!("/v1/vms/{vm_id}")).await;
        assert_eq!(vm["node_id"], node_b.as_str(), "{vm}");
        assert_eq!(vm["status"]["phase"], "running", "{vm}");
    }

    for id in &schedule_ids {
        rest.delete(&format!("/v1/replications/{id}")).await;
    }
    for id in &vm_ids {
        rest.delete(&format!("/v1/vms/{id}")).await;
    }
    wait_until_async("the VMs deleted on node B", Duration::from_secs(60), || {
        let mut vmm_b = vmm_b.clone();
        async move {
            let vms = vmm_b
                .list_vms(vmm::ListVmsRequest::default())
                .await
                .ok()?
                .into_inner()
                .vms;
            vms.is_empty().then_some(())
        }
    })
    .await;
    agent_a.stop().await;
    agent_b.stop().await;
    api.stop().await;
    mvirt_testsupport::process::assert_no_hypervisor_outlives(root, Duration::from_secs(10)).await;
    log_shutdown.trigger();
}

/// Whether replication `id` is ready with a successful report for every volume (to `target`
/// when given: the VM is protected there), as the API shows it.
async fn protected_on(rest: &Rest, id: &str, target: Option<&str>) -> Option<()> {
    let r = rest.get(&format!("/v1/replications/{id}")).await;
    (r["status"]["phase"] == "ready").then_some(())?;
    let reports = r["status"]["replicas"].as_array()?;
    let vm = rest
        .get(&format!("/v1/vms/{}", r["spec"]["vm_id"].as_str()?))
        .await;
    let volume_ids = vm["spec"]["volume_ids"].as_array()?;
    volume_ids
        .iter()
        .all(|v| {
            reports.iter().any(|rep| {
                rep["volume_id"] == *v
                    && target.is_none_or(|t| rep["target_node_id"] == t)
                    && rep["last_replicated_at"].is_string()
                    && rep.get("last_error").is_none()
            })
        })
        .then_some(())
}

/// Whether a node's mvirt-zfs holds a replica of each volume with its tag.
async fn replicas_hold(
    mut zfs: ZfsServiceClient<tonic::transport::Channel>,
    volumes: &[(String, String)],
) -> Option<()> {
    let held = zfs
        .list_replicas(zfs::ListReplicasRequest {})
        .await
        .ok()?
        .into_inner()
        .volumes;
    volumes
        .iter()
        .all(|(id, tag)| {
            held.iter()
                .any(|v| v.id == *id && has_tag(Path::new(&v.path), tag))
        })
        .then_some(())
}
