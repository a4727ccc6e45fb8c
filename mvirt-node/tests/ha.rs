//! HA restart with fencing end to end (issue 23): one control plane, two hosts (each its own
//! zfs-fuse pool, daemons and agent), an `ha` VM on node A replicated to node B every 5 s.
//! Node A's agent reaches the API only through a TCP proxy in this test; cutting the proxy
//! partitions A from the control plane while A's daemons (and its VM) keep running.
//!
//! Proves (fencing 6 s, margin 4 s): A's hypervisor process for the VM exits (A fenced
//! itself) before the VM's hypervisor process starts on B (the exit is observed by polling
//! /proc; B's process start time is read from /proc/<pid>/stat); the VM runs on B from the
//! promoted replica, which holds the write replicated before the cut; its `ha_status` shows the
//! failover and the data-loss window; once A is reconnected it does not start the old copy
//! (no hypervisor process for the VM on A) and removes the VM and its volume.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use mvirt_testsupport::process::wait_until_async;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use mvirt_zfs::proto as zfs;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const BOOT: Duration = Duration::from_secs(180);
const ROUND: Duration = Duration::from_secs(90);
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

/// A TCP proxy to `target` that can be cut (open connections closed, new ones dropped) and
/// restored.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = tokio::sync::watch::channel(0u64).0;
        let (cut2, generation2) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = generation2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            cut,
            generation,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The hypervisor process of `vm_id` on a host, if mvirt-vmm shows one running.
async fn hypervisor_pid(
    vmm: &mut VmServiceClient<tonic::transport::Channel>,
    vm_id: &str,
) -> Option<u32> {
    vmm.list_vms(vmm::ListVmsRequest::default())
        .await
        .ok()?
        .into_inner()
        .vms
        .into_iter()
        .find(|v| v.id == vm_id && v.pid != 0)
        .map(|v| v.pid)
}

/// Whether process `pid` is gone (or a zombie).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// When process `pid` started, as seconds since the epoch (from /proc/<pid>/stat and btime).
fn process_start(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    // Fields after the command: state is field 3, starttime field 22.
    let ticks: f64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    btime + ticks / hz
}

fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

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
    let vm = rest
        .post(
            "/v1/vms",
            json!({"name": "web", "spec": {
                "vcpus": 1, "memory_bytes": 128u64 << 20, "node_selector": "zone=a", "ha": true,
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
                "network_interfaces": [{"network_id": network["id"]}],
            }}),
        )
        .await;
    assert_eq!(vm["spec"]["ha"], true, "{vm}");
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let vm = rest.wait_vm_phase(&vm_id, "running", BOOT).await;
    assert_eq!(vm["node_id"], node_a.as_str());
    let volume_id = vm["spec"]["volume_ids"][0].as_str().unwrap().to_string();
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
    let source_path = zfs_a
        .get_volume(zfs::GetVolumeRequest {
            id: volume_id.clone(),
        })
        .await
        .expect("the VM's volume on node A")
        .into_inner()
        .path;
    write_tag(Path::new(&source_path), "before-the-cut");

    let created = rest
        .post(
            "/v1/replications",
            json!({"name": "web-dr", "spec": {"vm_id": "web", "targets": ["node-b"], "interval_secs": 5, "keep": 2}}),
        )
        .await;
    let schedule_id = created["id"].as_str().unwrap().to_string();
    wait_until_async("a replica on node B with the write", ROUND, || {
        let rest = rest.clone();
        let mut zfs_b = zfs_b.clone();
        let (schedule_id, volume_id) = (schedule_id.clone(), volume_id.clone());
        async move {
            let r = rest.get(&format!("/v1/replications/{schedule_id}")).await;
            let report = r["status"]["replicas"].get(0)?.clone();
            (report["last_replicated_at"].is_string() && report.get("last_error").is_none())
                .then_some(())?;
            let held = zfs_b
                .list_replicas(zfs::ListReplicasRequest {})
                .await
                .ok()?
                .into_inner()
                .volumes
                .into_iter()
                .find(|v| v.id == volume_id)?;
            has_tag(Path::new(&held.path), "before-the-cut").then_some(())
        }
    })
    .await;
    let pid_a = hypervisor_pid(&mut vmm_a, &vm_id)
        .await
        .expect("the VM runs on node A");

    // The partition: A's agent loses the API; A's daemons and VM keep running.
    proxy.cut();
    let cut_at = epoch_secs();
    let mut exited_a: Option<f64> = None;
    let mut pid_b: Option<u32> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while pid_b.is_none() || exited_a.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no failover: A's process gone = {exited_a:?}, B's pid = {pid_b:?}"
        );
        if exited_a.is_none() && process_gone(pid_a) {
            exited_a = Some(epoch_secs());
        }
        if pid_b.is_none() {
            pid_b = hypervisor_pid(&mut vmm_b, &vm_id).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (exited_a, pid_b) = (exited_a.unwrap(), pid_b.unwrap());
    let started_b = process_start(pid_b);
    eprintln!(
        "cut at {cut_at:.2}; A's hypervisor gone by {:.2} s after; B's started {:.2} s after",
        exited_a - cut_at,
        started_b - cut_at
    );
    assert!(
        exited_a < started_b,
        "A's copy (seen gone at {exited_a:.2}) must stop before B's starts ({started_b:.2})"
    );

    // The VM runs on B, from the promoted replica.
    let vm = rest.wait_vm_phase(&vm_id, "running", BOOT).await;
    assert_eq!(vm["node_id"], node_b.as_str(), "{vm}");
    let ha = &vm["ha_status"];
    assert_eq!(ha["state"], "failed_over", "{vm}");
    assert_eq!(ha["from_node_id"], node_a.as_str(), "{vm}");
    assert_eq!(ha["to_node_id"], node_b.as_str(), "{vm}");
    assert!(
        ha["data_loss_secs"].is_u64() && ha["replicated_at"].is_string(),
        "{vm}"
    );
    let promoted = zfs_b
        .get_volume(zfs::GetVolumeRequest {
            id: volume_id.clone(),
        })
        .await
        .expect("the volume on node B")
        .into_inner();
    assert!(!promoted.replica, "promoted: {promoted:?}");
    assert!(
        has_tag(Path::new(&promoted.path), "before-the-cut"),
        "the replicated write is there"
    );

    // Reconnect A: the old copy never starts again; the VM and its volume leave node A.
    proxy.restore();
    let watch_until = std::time::Instant::now() + Duration::from_secs(90);
    let mut removed = false;
    let mut quiet_since: Option<std::time::Instant> = None;
    while !(removed && quiet_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(8))) {
        assert!(
            std::time::Instant::now() < watch_until,
            "node A did not clean up its copy"
        );
        let listed = vmm_a
            .list_vms(vmm::ListVmsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .vms;
        let copy = listed.iter().find(|v| v.id == vm_id);
        assert!(
            copy.is_none_or(|v| v.pid == 0),
            "node A started the old copy again: {copy:?}"
        );
        let volume = zfs_a
            .get_volume(zfs::GetVolumeRequest {
                id: volume_id.clone(),
            })
            .await;
        if copy.is_none() && volume.is_err_and(|e| e.code() == tonic::Code::NotFound) {
            removed = true;
        }
        let a = rest.get("/v1/nodes/node-a").await;
        if a["status"]["state"] == "online" {
            quiet_since.get_or_insert_with(std::time::Instant::now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let vm = rest.get(&format!("/v1/vms/{vm_id}")).await;
    assert_eq!(vm["node_id"], node_b.as_str(), "{vm}");
    assert_eq!(vm["status"]["phase"], "running", "{vm}");

    rest.delete(&format!("/v1/replications/{schedule_id}"))
        .await;
    rest.delete(&format!("/v1/vms/{vm_id}")).await;
    wait_until_async("the VM deleted on node B", Duration::from_secs(60), || {
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
