//! The fence lease end to end (issue 23): a node agent that dies while mvirt-vmm keeps its
//! guests running still fences its HA VMs, through mvirt-vmm's lease.
//!
//! One control plane, one host (zfs-fuse pool, daemons, agent with a fencing time of 6 s;
//! the API counts the node lost after 12 s). An HA VM runs; the agent is killed the way
//! `kill -9` would (its task aborted: no graceful shutdown, no further renewal). mvirt-vmm
//! kills the VM's hypervisor itself once the agent's last lease runs out — before the API's
//! lost time — and GetVm shows the reason. Then the lease's edges: bad renewals are
//! INVALID_ARGUMENT, and a lease survives an mvirt-vmm restart (the restarted daemon adopts
//! the guest and still fences it, no later than the stored deadline).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mvirt_testsupport::process::wait_until_async;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(180);
const FENCING: Duration = Duration::from_secs(6);
const LOST: Duration = Duration::from_secs(12);
const REASON: &str = "fenced: the node agent's lease expired";

fn alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

async fn vm(client: &mut VmServiceClient<tonic::transport::Channel>, id: &str) -> vmm::Vm {
    client
        .get_vm(vmm::GetVmRequest { id: id.into() })
        .await
        .expect("GetVm")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_agents_ha_vm_is_fenced_by_mvirt_vmm_before_the_api_counts_the_node_lost() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let (log_endpoint, log_shutdown) = start_log(root).await;
    let (api, token, rest) = start_api(root, |config| {
        config.node_offline_after = Duration::from_secs(5);
        config.ha_lost_after = LOST;
    })
    .await;
    let mut host = HostDaemons::start(&root.join("a"), &root.join("images"), &log_endpoint).await;
    let mut config = agent_config(
        "node-a",
        &root.join("a/agent"),
        &host.endpoints,
        &api,
        &token,
    );
    config.ha_fencing = FENCING;
    let agent = Agent::start(config);
    rest.wait_nodes_online(&["node-a"]).await;
    let template_id = rest.create_template("tiny", &host.images).await;
    let created = rest
        .post(
            "/v1/vms",
            json!({"name": "web", "spec": {
                "vcpus": 1, "memory_bytes": 128u64 << 20, "ha": true,
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
            }}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    rest.wait_vm_phase(&id, "running", BOOT).await;
    let mut client = VmServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .unwrap();
    let running = vm(&mut client, &id).await;
    assert_eq!(running.state, vmm::VmState::Running as i32, "{running:?}");
    assert!(alive(running.pid), "{running:?}");

    // The agent renews every tick; a few seconds in contact, then kill -9.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        alive(vm(&mut client, &id).await.pid),
        "the VM runs while its agent renews the lease"
    );
    let killed_at = Instant::now();
    agent.kill();
    let fenced = wait_until_async("mvirt-vmm fences the HA VM", LOST, || {
        let (mut client, id) = (client.clone(), id.clone());
        async move {
            let vm = vm(&mut client, &id).await;
            (vm.state != vmm::VmState::Running as i32).then_some(vm)
        }
    })
    .await;
    let after = killed_at.elapsed();
    eprintln!("fenced {after:?} after the agent died: {fenced:?}");
    assert_eq!(fenced.state_reason, REASON, "{fenced:?}");
    assert_eq!(fenced.state, vmm::VmState::Stopped as i32, "{fenced:?}");
    assert!(!alive(running.pid), "the hypervisor is gone");
    // At most the fencing time after the last renewal (the last contact was before the kill),
    // well before the API's lost time; not long before the fencing time (heartbeats: 1 s).
    assert!(after <= FENCING + Duration::from_secs(1), "{after:?}");
    assert!(after >= FENCING - Duration::from_secs(3), "{after:?}");

    // Bad renewals are refused and change nothing.
    for (ttl_ms, ids) in [
        (0, vec![id.clone()]),
        (600_001, vec![id.clone()]),
        (1000, vec![String::new()]),
    ] {
        let err = client
            .renew_fence_lease(vmm::RenewFenceLeaseRequest {
                ttl_ms,
                vm_ids: ids,
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }

    // A lease survives an mvirt-vmm restart: start the guest again (the agent is dead: nothing
    // else touches it), lease it for 4 s, restart mvirt-vmm 1 s later; the restarted daemon
    // adopts the guest and fences it at the stored deadline.
    let started = client
        .start_vm(vmm::StartVmRequest { id: id.clone() })
        .await
        .expect("StartVm")
        .into_inner();
    assert!(alive(started.pid), "{started:?}");
    let leased_at = Instant::now();
    let lease = client
        .renew_fence_lease(vmm::RenewFenceLeaseRequest {
            ttl_ms: 4000,
            vm_ids: vec![id.clone(), "not-a-vm-here".into()],
        })
        .await
        .expect("RenewFenceLease")
        .into_inner();
    assert!(lease.expires_at_ms > 0, "{lease:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    host.restart_vmm().await;
    let mut client = VmServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .unwrap();
    let adopted = vm(&mut client, &id).await;
    assert_eq!(
        adopted.pid, started.pid,
        "adopted, not restarted: {adopted:?}"
    );
    assert!(alive(adopted.pid), "{adopted:?}");
    let fenced = wait_until_async("the restarted mvirt-vmm fences", BOOT, || {
        let (mut client, id) = (client.clone(), id.clone());
        async move {
            let vm = vm(&mut client, &id).await;
            (vm.state != vmm::VmState::Running as i32).then_some(vm)
        }
    })
    .await;
    let after = leased_at.elapsed();
    eprintln!("fenced {after:?} after the lease (mvirt-vmm restarted at +1 s): {fenced:?}");
    assert_eq!(fenced.state_reason, REASON, "{fenced:?}");
    assert!(!alive(started.pid), "the hypervisor is gone");
    assert!(after >= Duration::from_millis(3500), "{after:?}");
    assert!(
        after <= Duration::from_millis(5500),
        "not extended by the restart: {after:?}"
    );

    api.stop().await;
    drop(host);
    mvirt_testsupport::process::assert_no_hypervisor_outlives(root, Duration::from_secs(10)).await;
    log_shutdown.trigger();
}
