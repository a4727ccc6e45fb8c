//! Replication schedules end to end: one control plane, two hosts (each its own zfs-fuse pool,
//! daemons and agent), a running VM on node A with a schedule to node B.
//!
//! Proves: the first round sends a full stream and node B holds a read-only replica with the
//! volume's bytes; a write on A reaches B with an increment; the schedule's status carries the
//! last replicated time, snapshot, bytes and lag; both sides are pruned to `keep`; a restarted
//! agent on A resumes with an increment from the replica's newest snapshot (no second full
//! stream); bad specs are refused (target = the VM's node 400, a second schedule for the same
//! VM and target 409); deleting the schedule leaves the replica.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::*;
use mvirt_testsupport::process::wait_until_async;
use mvirt_zfs::proto as zfs;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(180);
const ROUND: Duration = Duration::from_secs(90);
const KEEP: usize = 2;
/// Where the test writes into the root volume (well past the tiny guest's root file system).
const OFFSET: u64 = 28 * 1024 * 1024;

fn write_tag(path: &Path, tag: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(OFFSET)).unwrap();
    let block: Vec<u8> = tag.bytes().cycle().take(1024 * 1024).collect();
    f.write_all(&block).unwrap();
    f.sync_all().unwrap();
}

fn has_tag(path: &Path, tag: &str) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut buf = vec![0; 4096];
    f.seek(SeekFrom::Start(OFFSET)).unwrap();
    f.read_exact(&mut buf).is_ok() && buf.starts_with(tag.as_bytes())
}

async fn zfs_client(endpoint: &str) -> ZfsServiceClient<tonic::transport::Channel> {
    ZfsServiceClient::connect(endpoint.to_string())
        .await
        .expect("connect mvirt-zfs")
}

async fn repl_snapshots(
    zfs: &mut ZfsServiceClient<tonic::transport::Channel>,
    volume_id: &str,
) -> Vec<String> {
    zfs.list_replication_snapshots(zfs::ListReplicationSnapshotsRequest {
        volume_id: volume_id.to_string(),
    })
    .await
    .map(|r| r.into_inner().snapshots.into_iter().map(|s| s.id).collect())
    .unwrap_or_default()
}

/// The replica of `volume_id` on a node, if it holds one.
async fn replica(
    zfs: &mut ZfsServiceClient<tonic::transport::Channel>,
    volume_id: &str,
) -> Option<zfs::Volume> {
    zfs.list_replicas(zfs::ListReplicasRequest {})
        .await
        .ok()?
        .into_inner()
        .volumes
        .into_iter()
        .find(|v| v.id == volume_id)
}

/// The schedule's report on the volume's replication to the target, once it matches `ok`.
async fn wait_report(rest: &Rest, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_until_async(what, ROUND, || {
        let rest = rest.clone();
        let ok = &ok;
        async move {
            let r = rest.get(&format!("/v1/replications/{id}")).await;
            let report = r["status"]["replicas"].get(0)?.clone();
            ok(&report).then_some(report)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_is_replicated_to_its_partner_incrementally_pruned_and_resumed_after_a_restart() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let (log_endpoint, log_shutdown) = start_log(root).await;
    let (api, token, rest) = start_api(root, |_| {}).await;
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
    let config_b = agent_config(
        "node-b",
        &root.join("b/agent"),
        &host_b.endpoints,
        &api,
        &token,
    );
    let agent_a = Agent::start(config_a.clone());
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
            json!({"name": "net", "spec": {"ipv4_prefix": "10.89.0.0/24"}}),
        )
        .await;
    let vm = rest
        .post(
            "/v1/vms",
            json!({"name": "web", "spec": {
                "vcpus": 1, "memory_bytes": 128u64 << 20, "node_selector": "zone=a",
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
                "network_interfaces": [{"network_id": network["id"]}],
            }}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let vm = rest.wait_vm_phase(&vm_id, "running", BOOT).await;
    assert_eq!(vm["node_id"], node_a.as_str());
    let volume_id = vm["spec"]["volume_ids"][0].as_str().unwrap().to_string();
    let mut zfs_a = zfs_client(&host_a.endpoints.zfs).await;
    let mut zfs_b = zfs_client(&host_b.endpoints.zfs).await;
    let source_path = zfs_a
        .get_volume(zfs::GetVolumeRequest {
            id: volume_id.clone(),
        })
        .await
        .expect("the VM's volume on node A")
        .into_inner()
        .path;
    write_tag(Path::new(&source_path), "first-write-");

    // Refused: the VM's own node as target; then the schedule itself.
    let (status, body) = rest
        .call(
            reqwest::Method::POST,
            "/v1/replications",
            Some(json!({"name": "bad", "spec": {"vm_id": "web", "targets": ["node-a"], "interval_secs": 5}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let created = rest
        .post(
            "/v1/replications",
            json!({"name": "web-dr", "spec": {"vm_id": "web", "targets": ["node-b"], "interval_secs": 5, "keep": KEEP}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["spec"]["vm_id"],
        vm_id.as_str(),
        "names are stored as ids"
    );
    assert_eq!(created["spec"]["targets"][0], node_b.as_str());
    let (status, body) = rest
        .call(
            reqwest::Method::POST,
            "/v1/replications",
            Some(json!({"name": "again", "spec": {"vm_id": vm_id, "targets": [node_b], "interval_secs": 60}})),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Round 1: a full stream; B holds a read-only replica with the write.
    let first = wait_report(&rest, &id, "the first replication", |r| {
        r["last_snapshot_id"].is_string() && r.get("last_error").is_none()
    })
    .await;
    assert_eq!(first["volume_id"], volume_id.as_str());
    assert_eq!(first["target_node_id"], node_b.as_str());
    assert_eq!(first["last_incremental"], false, "{first}");
    assert!(first["last_bytes"].as_u64().unwrap() > 0, "{first}");
    assert!(first["last_replicated_at"].is_string(), "{first}");
    assert!(first["lag_secs"].is_u64(), "{first}");
    let r = rest.get(&format!("/v1/replications/{id}")).await;
    assert_eq!(r["status"]["phase"], "ready", "{r}");
    let held = replica(&mut zfs_b, &volume_id)
        .await
        .expect("node B holds a replica");
    assert!(held.replica, "{held:?}");
    assert!(
        has_tag(Path::new(&held.path), "first-write-"),
        "the replica has the first write"
    );

    // A write on A reaches B with an increment.
    write_tag(Path::new(&source_path), "second-write");
    wait_until_async("the second write on node B", ROUND, || {
        let mut zfs_b = zfs_b.clone();
        let volume_id = volume_id.clone();
        async move {
            let held = replica(&mut zfs_b, &volume_id).await?;
            has_tag(Path::new(&held.path), "second-write").then_some(())
        }
    })
    .await;
    let later = wait_report(&rest, &id, "an incremental replication", |r| {
        r["last_incremental"] == true && r["last_snapshot_id"] != first["last_snapshot_id"]
    })
    .await;
    assert!(later.get("last_error").is_none(), "{later}");

    // Retention: after more rounds both sides keep at most KEEP replication snapshots, and
    // the replica's newest is the source's newest or the one before (a round may be running).
    wait_until_async("both sides pruned to keep", ROUND, || {
        let (mut zfs_a, mut zfs_b) = (zfs_a.clone(), zfs_b.clone());
        let volume_id = volume_id.clone();
        async move {
            let a = repl_snapshots(&mut zfs_a, &volume_id).await;
            let b = repl_snapshots(&mut zfs_b, &volume_id).await;
            (!a.is_empty() && !b.is_empty() && a.len() <= KEEP && b.len() <= KEEP).then_some(())
        }
    })
    .await;

    // Agent restart on A: the schedule resumes with an increment (a full stream onto the
    // existing replica would be refused and reported).
    agent_a.stop().await;
    let before = rest.get(&format!("/v1/replications/{id}")).await["status"]["replicas"][0].clone();
    let agent_a = Agent::start(config_a);
    let resumed = wait_report(&rest, &id, "a replication after the agent restart", |r| {
        r["last_snapshot_id"] != before["last_snapshot_id"]
            && r["last_replicated_at"].is_string()
            && r.get("last_error").is_none()
    })
    .await;
    assert_eq!(resumed["last_incremental"], true, "{resumed}");
    let newest_b = repl_snapshots(&mut zfs_b, &volume_id).await;
    assert!(
        newest_b
            .iter()
            .any(|s| Some(s.as_str()) == resumed["last_snapshot_id"].as_str()),
        "node B holds the resumed round's snapshot: {newest_b:?} {resumed}"
    );

    // Deleting the schedule stops it; the replica stays.
    rest.delete(&format!("/v1/replications/{id}")).await;
    rest.delete(&format!("/v1/vms/{vm_id}")).await;
    assert!(
        replica(&mut zfs_b, &volume_id).await.is_some(),
        "the replica stays"
    );
    let vmm =
        mvirt_vmm::proto::vm_service_client::VmServiceClient::connect(host_a.endpoints.vmm.clone())
            .await
            .unwrap();
    wait_until_async("the VM to be deleted", Duration::from_secs(60), || {
        let mut vmm = vmm.clone();
        async move {
            let vms = vmm
                .list_vms(mvirt_vmm::proto::ListVmsRequest::default())
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
