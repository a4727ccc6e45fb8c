//! End to end on one host: a VM asked for through REST boots under QEMU TCG with its volume
//! cloned from a template (mvirt-zfs), its NIC on a TAP (mvirt-ebpf), cloud-init from the API's
//! spec, gets its address by DHCP and pings the gateway; stop, start and delete converge; the
//! agent and mvirt-vmm can be restarted at any moment without duplicates or losses.

mod common;

use std::time::Duration;

use common::*;
use mvirt_log::server::{BoundServer, Config as LogConfig};
use mvirt_testsupport::process::wait_until_async;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_created_through_rest_boots_gets_its_address_and_everything_is_cleaned_up_on_delete() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let log = BoundServer::bind(LogConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: root.join("log"),
        retention: Default::default(),
    })
    .await
    .unwrap();
    let log_endpoint = format!("http://{}", log.local_addr());
    let log_shutdown = mvirt_common::Shutdown::new();
    tokio::spawn(log.serve(log_shutdown.clone()));

    let mut host = HostDaemons::start(root, &root.join("images"), &log_endpoint).await;
    let api = mvirt_api::server::start(
        mvirt_api::server::ServerConfig::for_tests("127.0.0.1".parse().unwrap(), &root.join("api")),
        mvirt_common::Shutdown::new(),
    )
    .await
    .expect("mvirt-api starts");
    let token = api.admin_token().expect("admin token");
    let rest = Rest::new(&api.api_url(), &token);
    rest.wait_ready().await;

    let agent_dir = root.join("agent");
    let config = agent_config(
        "node-a",
        &agent_dir,
        &host.endpoints,
        &api.grpc_url(),
        &token,
    );
    let agent = Agent::start(config.clone());

    // Network, template, VM.
    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "net-a", "spec": {"ipv4_prefix": "10.77.0.0/24"}}),
        )
        .await;
    let network_id = network["id"].as_str().unwrap().to_string();
    let template_id = rest.create_template("tiny", &host.images).await;
    let vm = rest
        .post(
            "/v1/vms",
            json!({
                "name": "web",
                "spec": {
                    "vcpus": 1,
                    "memory_bytes": 256u64 << 20,
                    "hostname": "web-one",
                    "root_volume": {"template_id": template_id, "size_bytes": 64u64 << 20},
                    "network_interfaces": [{"network_id": network_id}],
                    "user_data": "#cloud-config\nmvirt-e2e: hello\n",
                }
            }),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();

    // Kill the agent while it is reconciling, then restart it: it must converge with no
    // duplicate volume, NIC or VM.
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.kill();
    let agent = Agent::start(config.clone());

    let running = rest.wait_vm_phase(&vm_id, "running", BOOT).await;
    let address = running["status"]["ipv4_addresses"][0]
        .as_str()
        .expect("the VM's status shows its address")
        .to_string();
    assert!(address.starts_with("10.77.0."), "address {address}");

    // The guest's init applied the NoCloud seed and runs DHCP (udhcpc) on eth0: the address it
    // got from mvirt-ebpf is the one the API assigned.
    let boot = console_until(&host.endpoints.vmm, &vm_id, b"", "MVIRT-GUEST-BOOTED", BOOT).await;
    assert!(boot.contains("MVIRT-CIDATA-HOSTNAME web-one"), "{boot}");
    assert!(boot.contains("mvirt-e2e: hello"), "{boot}");
    assert!(
        boot.contains(&format!("MVIRT-CIDATA-INSTANCE-ID {vm_id}")),
        "{boot}"
    );
    let check = format!(
        "for i in $(seq 1 60); do ip -o addr show dev eth0 | grep -q 'inet {address}/' && break; sleep 1; done; \
         ip -o addr show dev eth0; echo ADDR-$((40+2))\n"
    );
    let seen = console_until(
        &host.endpoints.vmm,
        &vm_id,
        check.as_bytes(),
        "ADDR-42",
        BOOT,
    )
    .await;
    assert!(
        seen.contains(&format!("inet {address}/")),
        "eth0 has the API's address by DHCP:\n{seen}"
    );
    console_until(
        &host.endpoints.vmm,
        &vm_id,
        b"ping -c 2 -W 3 169.254.0.1 && echo GATEWAY-$((1+1))\n",
        "GATEWAY-2",
        Duration::from_secs(60),
    )
    .await;

    // The console WebSocket through the API (API -> agent relay -> vmm) shows the guest's
    // output, including the scrollback, and accepts input.
    let through_api = ws_console_until(
        &rest,
        &vm_id,
        "GATEWAY-2",
        b"echo WS-$((5+5))\n",
        "WS-10",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        through_api.contains("MVIRT-GUEST-BOOTED"),
        "scrollback: {through_api}"
    );
    let (status, body) = Rest::new(&rest.base, "not-a-token")
        .call(
            reqwest::Method::GET,
            &format!("/v1/vms/{vm_id}/console"),
            None,
        )
        .await;
    assert_eq!(status, 401, "{body}");

    // Exactly one of everything, created with the API's ids.
    let mut vmm =
        mvirt_vmm::proto::vm_service_client::VmServiceClient::connect(host.endpoints.vmm.clone())
            .await
            .unwrap();
    let vms = vmm
        .list_vms(mvirt_vmm::proto::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .vms;
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].id, vm_id);
    let mut zfs =
        mvirt_zfs::proto::zfs_service_client::ZfsServiceClient::connect(host.endpoints.zfs.clone())
            .await
            .unwrap();
    let volumes = zfs
        .list_volumes(mvirt_zfs::proto::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes;
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let mut net = mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(
        host.endpoints.ebpf.clone(),
    )
    .await
    .unwrap();
    let nics = net
        .list_nics(mvirt_ebpf::proto::ListNicsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nics;
    assert_eq!(nics.len(), 1, "{nics:?}");
    assert_eq!(nics[0].ipv4_address, address);

    // Restart mvirt-vmm: the guest keeps running and is adopted.
    let pid_before = vms[0].pid;
    host.restart_vmm().await;
    let mut vmm =
        mvirt_vmm::proto::vm_service_client::VmServiceClient::connect(host.endpoints.vmm.clone())
            .await
            .unwrap();
    let adopted = vmm
        .get_vm(mvirt_vmm::proto::GetVmRequest { id: vm_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(adopted.pid, pid_before, "the same guest process");
    assert_eq!(adopted.state, mvirt_vmm::proto::VmState::Running as i32);
    console_until(
        &host.endpoints.vmm,
        &vm_id,
        b"echo ALIVE-$((3+4))\n",
        "ALIVE-7",
        Duration::from_secs(30),
    )
    .await;

    // Stop, then start again through REST.
    rest.post(&format!("/v1/vms/{vm_id}/stop"), json!({})).await;
    rest.wait_vm_phase(&vm_id, "stopped", Duration::from_secs(60))
        .await;
    rest.post(&format!("/v1/vms/{vm_id}/start"), json!({}))
        .await;
    rest.wait_vm_phase(&vm_id, "running", BOOT).await;

    // Delete: the VM, its own volume and its own NIC all go.
    rest.delete(&format!("/v1/vms/{vm_id}")).await;
    wait_until_async(
        "the VM, its volume and NIC to be removed",
        Duration::from_secs(60),
        || {
            let (mut vmm, mut zfs, mut net) = (vmm.clone(), zfs.clone(), net.clone());
            async move {
                let vms = vmm
                    .list_vms(mvirt_vmm::proto::ListVmsRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .vms;
                let volumes = zfs
                    .list_volumes(mvirt_zfs::proto::ListVolumesRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .volumes;
                let nics = net
                    .list_nics(mvirt_ebpf::proto::ListNicsRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .nics;
                (vms.is_empty() && volumes.is_empty() && nics.is_empty()).then_some(())
            }
        },
    )
    .await;

    agent.stop().await;
    api.stop().await;
    log_shutdown.trigger();
}
