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
        listen: common::socket(root, "log"),
        data_dir: root.join("log"),
        retention: Default::default(),
    })
    .await
    .unwrap();
    let log_endpoint = log.endpoint();
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
    let rest = Rest::for_member(&api, &token);
    rest.wait_ready().await;

    let agent_dir = root.join("agent");
    let config = agent_config("node-a", &agent_dir, &host.endpoints, &api, &token);
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
    // A kernel checksum travels REST → NodeService → agent → mvirt-zfs, which refuses the
    // download and says which file was wrong.
    let bad_template = rest
        .create_template_with_kernel_sha256("bad-kernel", &host.images, &"0".repeat(64))
        .await;
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
    let failed = wait_until_async(
        "the template with a wrong kernel checksum to fail",
        Duration::from_secs(60),
        || {
            let (rest, path) = (rest.clone(), format!("/v1/templates/{bad_template}"));
            async move {
                let t = rest.get(&path).await;
                (t["status"]["phase"] == "failed").then_some(t)
            }
        },
    )
    .await;
    let reason = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("kernel checksum mismatch: expected sha256 0000"),
        "{failed:#}"
    );
    rest.delete(&format!("/v1/templates/{bad_template}")).await;

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
    let (status, body) = rest
        .with_token("not-a-token")
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

    // The node's host facts and pool use, read live through the API.
    let node_id = running["node_id"].as_str().unwrap();
    let host_info = rest.get(&format!("/v1/nodes/{node_id}/host")).await;
    assert!(
        host_info["cpu_cores"].as_u64().unwrap() >= 1,
        "{host_info:#}"
    );
    assert!(!host_info["cpu_model"].as_str().unwrap().is_empty());
    assert!(host_info["numa_nodes"].as_u64().unwrap() >= 1);
    assert!(host_info["memory_total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(host_info["running_vms"], 1);
    let pool = &host_info["pool"];
    assert!(pool["size_bytes"].as_u64().unwrap() > 0, "{host_info:#}");
    assert!(pool["compression_ratio"].as_f64().unwrap() >= 1.0);
    // Thin provisioning: the template and the 64 MiB root volume count at their full size.
    assert!(
        pool["provisioned_bytes"].as_u64().unwrap() >= 64 << 20,
        "{host_info:#}"
    );
    assert_eq!(pool["volume_count"], 1);
    assert!(pool["template_count"].as_u64().unwrap() >= 1);

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

    // Stop, then start again through REST; while stopped, the root volume is rolled back to a
    // snapshot taken while it ran, and the snapshot is promoted to a template.
    let root_id = running["spec"]["volume_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let scratch_id = vm_changes_reach_the_guest(&rest, &host, &vm_id, &network_id).await;
    snapshot_rollback_and_promote(&rest, &mut zfs, &vm_id, &root_id).await;
    rest.post(&format!("/v1/vms/{vm_id}/start"), json!({}))
        .await;
    let restarted = rest.wait_vm_phase(&vm_id, "running", BOOT).await;
    // The memory change waited for this boot: applied now, the condition is gone.
    let conditions = restarted["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !conditions.iter().any(|c| c["type"] == "restart_required"),
        "{restarted:#}"
    );
    let config = vmm
        .get_vm(mvirt_vmm::proto::GetVmRequest { id: vm_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.memory_mib, 320);
    assert!(config.disks.iter().any(|d| d.id == scratch_id));

    // Delete: the VM, its own volume and its own NIC all go; the attached volume outlives it
    // until it is deleted itself.
    rest.delete(&format!("/v1/vms/{vm_id}")).await;
    rest.delete(&format!("/v1/volumes/{scratch_id}")).await;
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
    // No QEMU started for this test (its command line names paths under `root`) outlives it.
    mvirt_testsupport::process::assert_no_hypervisor_outlives(root, Duration::from_secs(5)).await;
    log_shutdown.trigger();
}

/// Volume snapshots reach ZFS, each with its own status; a rollback is refused while the VM runs,
/// carried out by the node once it is stopped (the disk's bytes come back), and a snapshot
/// becomes a template that a new volume is cloned from. Leaves the VM stopped.
async fn snapshot_rollback_and_promote(
    rest: &Rest,
    zfs: &mut mvirt_zfs::proto::zfs_service_client::ZfsServiceClient<tonic::transport::Channel>,
    vm_id: &str,
    root_id: &str,
) {
    let volume_path = format!("/v1/volumes/{root_id}");
    let snap = rest
        .post(
            &format!("{volume_path}/snapshots"),
            json!({"name": "before"}),
        )
        .await;
    assert_eq!(snap["status"]["phase"], "pending", "{snap:#}");
    let snap_id = snap["id"].as_str().unwrap().to_string();
    wait_until_async("the snapshot to be ready", Duration::from_secs(60), || {
        let (rest, path) = (rest.clone(), volume_path.clone());
        async move {
            let v = rest.get(&path).await;
            (v["snapshots"][0]["status"]["phase"] == "ready").then_some(())
        }
    })
    .await;
    let in_zfs = zfs
        .list_snapshots(mvirt_zfs::proto::ListSnapshotsRequest {
            volume_id: root_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(in_zfs.len(), 1);
    assert_eq!(in_zfs[0].id, snap_id);

    let (status, body) = rest
        .call(
            reqwest::Method::POST,
            &format!("{volume_path}/snapshots/before/rollback"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409, "no rollback under a running VM: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stop the VM"),
        "{body}"
    );

    rest.post(&format!("/v1/vms/{vm_id}/stop"), json!({})).await;
    rest.wait_vm_phase(vm_id, "stopped", Duration::from_secs(60))
        .await;

    // Scribble on the disk while the VM is stopped; the rollback must undo it.
    let image = zfs
        .get_volume(mvirt_zfs::proto::GetVolumeRequest {
            id: root_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .path;
    let marker = b"MVIRT-WRITTEN-AFTER-THE-SNAPSHOT";
    let offset = 3 << 20;
    let read_at = |len: usize| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&image).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    };
    let original = read_at(marker.len());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.write_all_at(marker, offset).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(read_at(marker.len()), marker);
    let (status, body) = rest
        .call(
            reqwest::Method::POST,
            &format!("{volume_path}/snapshots/before/rollback"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["rollback"]["generation"], 1, "{body}");
    wait_until_async(
        "the node to roll the volume back",
        Duration::from_secs(60),
        || {
            let (rest, path) = (rest.clone(), volume_path.clone());
            async move {
                let v = rest.get(&path).await;
                (v["status"]["rollback_generation"] == 1).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        read_at(marker.len()),
        original,
        "the rollback restored the bytes"
    );

    // Promote the snapshot; a volume cloned from the template lands on the same node.
    let template = rest
        .post(
            &format!("{volume_path}/snapshots/{snap_id}/promote"),
            json!({"name": "golden"}),
        )
        .await;
    let template_id = template["id"].as_str().unwrap().to_string();
    assert_eq!(
        template["spec"]["source_snapshot"]["snapshot_id"],
        snap_id.as_str()
    );
    wait_until_async(
        "the promoted template to be ready",
        Duration::from_secs(60),
        || {
            let (rest, path) = (rest.clone(), format!("/v1/templates/{template_id}"));
            async move {
                let t = rest.get(&path).await;
                (t["status"]["phase"] == "ready").then_some(t)
            }
        },
    )
    .await;
    let vm = rest.get(&format!("/v1/vms/{vm_id}")).await;
    let clone = rest
        .post(
            "/v1/volumes",
            json!({"name": "from-golden", "spec": {"size_bytes": 64u64 << 20, "template_id": template_id}}),
        )
        .await;
    assert_eq!(clone["node_id"], vm["node_id"], "{clone:#}");
    let clone_id = clone["id"].as_str().unwrap().to_string();
    wait_until_async(
        "the clone of the promoted template",
        Duration::from_secs(60),
        || {
            let (rest, path) = (rest.clone(), format!("/v1/volumes/{clone_id}"));
            async move {
                let v = rest.get(&path).await;
                (v["status"]["phase"] == "ready").then_some(())
            }
        },
    )
    .await;
    rest.delete(&format!("/v1/volumes/{clone_id}")).await;

    // Deleting the snapshot removes it from ZFS.
    rest.delete(&format!("{volume_path}/snapshots/before"))
        .await;
    wait_until_async("the snapshot to leave ZFS", Duration::from_secs(60), || {
        let mut zfs = zfs.clone();
        let volume_id = root_id.to_string();
        async move {
            let snaps = zfs
                .list_snapshots(mvirt_zfs::proto::ListSnapshotsRequest { volume_id })
                .await
                .ok()?
                .into_inner()
                .snapshots;
            snaps.is_empty().then_some(())
        }
    })
    .await;
}

/// Changes to a running VM reach the host: a NIC and a volume attached through REST are
/// hot-plugged into the guest; a memory change QEMU cannot apply live waits for the next boot
/// with the condition `restart_required`; a detached NIC leaves the guest first and its TAP goes
/// after. Returns the attached volume's id.
async fn vm_changes_reach_the_guest(
    rest: &Rest,
    host: &HostDaemons,
    vm_id: &str,
    network_id: &str,
) -> String {
    let vm_path = format!("/v1/vms/{vm_id}");
    let extra = rest
        .post(
            "/v1/nics",
            json!({"name": "extra", "spec": {"network_id": network_id, "routed_prefixes": ["10.99.0.0/24"]}}),
        )
        .await;
    let extra_id = extra["id"].as_str().unwrap().to_string();
    let extra_mac = extra["spec"]["mac_address"].as_str().unwrap().to_string();
    let scratch = rest
        .post(
            "/v1/volumes",
            json!({"name": "scratch", "spec": {"size_bytes": 16u64 << 20}}),
        )
        .await;
    let scratch_id = scratch["id"].as_str().unwrap().to_string();

    let vm = rest.get(&vm_path).await;
    let mut spec = vm["spec"].clone();
    spec["nic_ids"]
        .as_array_mut()
        .unwrap()
        .push(json!(extra_id));
    spec["volume_ids"]
        .as_array_mut()
        .unwrap()
        .push(json!(scratch_id));
    spec["memory_bytes"] = json!(320u64 << 20);
    rest.put(&vm_path, json!({"spec": spec})).await;

    let vm = wait_until_async(
        "the memory change to wait for a restart",
        Duration::from_secs(60),
        || {
            let (rest, path) = (rest.clone(), vm_path.clone());
            async move {
                let vm = rest.get(&path).await;
                let conditions = vm["status"]["conditions"].as_array()?.clone();
                conditions
                    .iter()
                    .any(|c| c["type"] == "restart_required")
                    .then_some(vm)
            }
        },
    )
    .await;
    assert_eq!(vm["status"]["phase"], "running", "{vm:#}");
    // mvirt-vmm has both devices in the VM's config (attached live: no restart needed for them).
    let mut vmm =
        mvirt_vmm::proto::vm_service_client::VmServiceClient::connect(host.endpoints.vmm.clone())
            .await
            .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let config = vmm
            .get_vm(mvirt_vmm::proto::GetVmRequest {
                id: vm_id.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let c = config.config.as_ref().unwrap();
        if c.disks.iter().any(|d| d.id == scratch_id) && c.nics.iter().any(|n| n.id == extra_id) {
            assert!(
                !config.pending_changes.iter().any(|p| p.contains("attach")),
                "{:?}",
                config.pending_changes
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let vm = rest.get(&vm_path).await;
            panic!("devices not attached: {config:#?}\n{vm:#}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The new disk is the one of 16 MiB (32768 sectors); vdb is the cloud-init seed.
    let want = format!("HOTPLUG-{extra_mac}-1-42");
    console_until(
        &host.endpoints.vmm,
        vm_id,
        b"for i in $(seq 1 300); do [ -e /sys/class/net/eth1 ] && grep -qx 32768 /sys/block/vd*/size && break; sleep 0.2; done; cat /sys/block/vd*/size; echo HOTPLUG-$(cat /sys/class/net/eth1/address)-$(grep -lx 32768 /sys/block/vd*/size | wc -l)-$((40+2))\n",
        &want,
        Duration::from_secs(90),
    )
    .await;
    let tap = rest.get(&format!("/v1/nics/{extra_id}")).await;
    assert_eq!(tap["status"]["phase"], "ready", "{tap:#}");
    let mut net = mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(
        host.endpoints.ebpf.clone(),
    )
    .await
    .unwrap();
    let local_nic = net
        .get_nic(mvirt_ebpf::proto::GetNicRequest {
            id: extra_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // The NIC's routed prefix reached mvirt-ebpf.
    assert_eq!(local_nic.routed_prefixes, vec!["10.99.0.0/24".to_string()]);
    let tap_name = local_nic.tap_name;
    assert!(mvirt_ebpf::ip::link_exists(&tap_name));

    // Detach the NIC: it leaves the guest, then its TAP goes.
    let vm = rest.get(&vm_path).await;
    let mut spec = vm["spec"].clone();
    spec["nic_ids"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n != &json!(extra_id));
    rest.put(&vm_path, json!({"spec": spec})).await;
    console_until(
        &host.endpoints.vmm,
        vm_id,
        b"for i in $(seq 1 100); do [ -e /sys/class/net/eth1 ] || break; sleep 0.2; done; [ -e /sys/class/net/eth1 ] || echo UNPLUGGED-$((6*7))\n",
        "UNPLUGGED-42",
        Duration::from_secs(90),
    )
    .await;
    wait_until_async(
        "the detached NIC's TAP to go",
        Duration::from_secs(60),
        || {
            let tap_name = tap_name.clone();
            async move { (!mvirt_ebpf::ip::link_exists(&tap_name)).then_some(()) }
        },
    )
    .await;
    rest.delete(&format!("/v1/nics/{extra_id}")).await;
    scratch_id
}
