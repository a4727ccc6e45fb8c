//! Control-plane + agent latency: from `POST /v1/vms` to the VM's hypervisor process running
//! (not guest boot), p50 and p99 over 50 VMs, on one host with every daemon real (zfs-fuse clone,
//! eBPF NIC/TAP, QEMU under TCG). Side by side in the same run, the baseline: the same kind of
//! VM created and started directly on mvirt-vmm (`CreateVm` + `StartVm`), so the ratio is what
//! the API, Raft, the scheduler, WatchSpecs and the agent's reconcile add.
//!
//! Run as root: `cargo bench -p mvirt-node --bench vm_create`. Target: p50 <= 100 ms.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use mvirt_log::server::{BoundServer, Config as LogConfig};
use mvirt_vmm::proto as vmm;
use serde_json::json;

/// `MVIRT_BENCH_VMS` overrides (e.g. 3 with `RUST_LOG=debug` to trace one path).
fn vms() -> usize {
    std::env::var("MVIRT_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

async fn wait_running(
    client: &mut vmm::vm_service_client::VmServiceClient<tonic::transport::Channel>,
    id: &str,
) {
    loop {
        if let Ok(vm) = client
            .get_vm(vmm::GetVmRequest { id: id.to_string() })
            .await
        {
            if vm.into_inner().pid != 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init("vm_create", mvirt_common::telemetry::LogFormat::Text);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let log = BoundServer::bind(LogConfig {
        listen: common::socket(root, "log"),
        data_dir: root.join("log"),
        retention: Default::default(),
    })
    .await
    .expect("log");
    let log_endpoint = log.endpoint();
    tokio::spawn(log.serve(mvirt_common::Shutdown::new()));
    let host = HostDaemons::start(root, &root.join("images"), &log_endpoint).await;
    let api = mvirt_api::server::start(
        mvirt_api::server::ServerConfig::for_tests(
            "127.0.0.1".parse().expect("ip"),
            &root.join("api"),
        ),
        mvirt_common::Shutdown::new(),
    )
    .await
    .expect("api");
    let token = api.admin_token().expect("token");
    let rest = Rest::for_member(&api, &token);
    rest.wait_ready().await;
    let agent = Agent::start(agent_config(
        "bench",
        &root.join("agent"),
        &host.endpoints,
        &api,
        &token,
    ));
    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "bench", "spec": {"ipv4_prefix": "10.99.0.0/24"}}),
        )
        .await;
    let network_id = network["id"].as_str().expect("id").to_string();
    let template_id = rest.create_template("tiny", &host.images).await;
    // Warm up: the first VM waits for the template import.
    let warm = rest
        .post(
            "/v1/vms",
            json!({"name": "warm", "spec": {"vcpus": 1, "memory_bytes": 64u64 << 20,
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
                "network_interfaces": [{"network_id": network_id}]}}),
        )
        .await;
    let warm_id = warm["id"].as_str().expect("id").to_string();
    rest.wait_vm_phase(&warm_id, "running", Duration::from_secs(120))
        .await;
    rest.delete(&format!("/v1/vms/{warm_id}")).await;
    wait_clean(&host).await;

    let mut client = vmm::vm_service_client::VmServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .expect("vmm");
    let mut through_api = Vec::new();
    let mut direct = Vec::new();
    for i in 0..vms() {
        // Through the control plane.
        let start = Instant::now();
        tracing::debug!(i, "POST /v1/vms");
        let vm = rest
            .post(
                "/v1/vms",
                json!({"name": format!("vm-{i}"), "spec": {"vcpus": 1, "memory_bytes": 64u64 << 20,
                    "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
                    "network_interfaces": [{"network_id": network_id}]}}),
            )
            .await;
        let id = vm["id"].as_str().expect("id").to_string();
        tracing::debug!(i, "POST answered");
        wait_running(&mut client, &id).await;
        tracing::debug!(i, "hypervisor running");
        through_api.push(start.elapsed());
        // Baseline: the same guest straight on mvirt-vmm, reusing the VM's disk and TAP.
        let config = client
            .get_vm(vmm::GetVmRequest { id: id.clone() })
            .await
            .expect("get")
            .into_inner()
            .config
            .expect("config");
        rest.delete(&format!("/v1/vms/{id}")).await;
        loop {
            let gone = client
                .get_vm(vmm::GetVmRequest { id: id.clone() })
                .await
                .is_err();
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wait_clean(&host).await;
        let direct_id = uuid_like(i);
        let mut config = config;
        config.nics.clear();
        config.disks.retain(|d| !d.path.contains("cidata"));
        config.cloud_init = None;
        if let Some(disk) = config.disks.first_mut() {
            disk.path = host.images.join("disk.raw").display().to_string();
            disk.read_only = true;
        }
        if let Some(vmm::vm_config::Boot::Kernel(kernel)) = config.boot.as_mut() {
            kernel.kernel = host.images.join("vmlinuz").display().to_string();
            kernel.initramfs = host.images.join("initramfs.img").display().to_string();
        }
        let start = Instant::now();
        client
            .create_vm(vmm::CreateVmRequest {
                id: direct_id.clone(),
                config: Some(config),
            })
            .await
            .expect("create direct");
        client
            .start_vm(vmm::StartVmRequest {
                id: direct_id.clone(),
            })
            .await
            .expect("start direct");
        wait_running(&mut client, &direct_id).await;
        direct.push(start.elapsed());
        let _ = client
            .kill_vm(vmm::KillVmRequest {
                id: direct_id.clone(),
            })
            .await;
        let _ = client
            .delete_vm(vmm::DeleteVmRequest {
                id: direct_id,
                force: true,
            })
            .await;
    }
    let (p50, p99) = (
        percentile(&mut through_api, 0.5),
        percentile(&mut through_api, 0.99),
    );
    let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    println!(
        "POST /v1/vms -> hypervisor running, {} VMs: p50 {:.0} ms, p99 {:.0} ms (target p50 <= 100 ms)",
        through_api.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "baseline CreateVm+StartVm on mvirt-vmm: p50 {:.0} ms, p99 {:.0} ms; ratio p50 {:.2}, p99 {:.2}",
        d50.as_secs_f64() * 1e3,
        d99.as_secs_f64() * 1e3,
        p50.as_secs_f64() / d50.as_secs_f64(),
        p99.as_secs_f64() / d99.as_secs_f64()
    );
    agent.stop().await;
    api.stop().await;
}

/// Waits until the agent has removed every volume and NIC, so each create is measured alone.
async fn wait_clean(host: &HostDaemons) {
    let mut zfs =
        mvirt_zfs::proto::zfs_service_client::ZfsServiceClient::connect(host.endpoints.zfs.clone())
            .await
            .expect("zfs");
    let mut net = mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(
        host.endpoints.ebpf.clone(),
    )
    .await
    .expect("ebpf");
    loop {
        let volumes = zfs
            .list_volumes(mvirt_zfs::proto::ListVolumesRequest {})
            .await
            .map(|r| r.into_inner().volumes.len())
            .unwrap_or(1);
        let nics = net
            .list_nics(mvirt_ebpf::proto::ListNicsRequest::default())
            .await
            .map(|r| r.into_inner().nics.len())
            .unwrap_or(1);
        if volumes == 0 && nics == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn uuid_like(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}
