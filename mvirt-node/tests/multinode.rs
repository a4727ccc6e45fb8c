//! Two nodes, each with its own agent, data dir and local daemons (its own zfs-fuse pool,
//! eBPF daemon with its own pinned maps and tables, vmm), under one control plane: VMs are
//! spread over both, a node selector is honoured, and a VM that fits nowhere stays Pending
//! with the reason.

mod common;

use std::time::Duration;

use common::*;
use mvirt_log::server::{BoundServer, Config as LogConfig};
use mvirt_testsupport::process::wait_until_async;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(180);

fn vm_body(
    name: &str,
    template_id: &str,
    network_id: &str,
    vcpus: u32,
    selector: Option<&str>,
) -> Value {
    let mut spec = json!({
        "vcpus": vcpus,
        "memory_bytes": 128u64 << 20,
        "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
        "network_interfaces": [{"network_id": network_id}],
    });
    if let Some(selector) = selector {
        spec["node_selector"] = json!(selector);
    }
    json!({"name": name, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vms_spread_over_two_nodes_honour_selectors_and_wait_for_capacity() {
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

    let api = mvirt_api::server::start(
        mvirt_api::server::ServerConfig::for_tests("127.0.0.1".parse().unwrap(), &root.join("api")),
        mvirt_common::Shutdown::new(),
    )
    .await
    .expect("mvirt-api starts");
    let token = api.admin_token().expect("admin token");
    let rest = Rest::new(&api.api_url(), &token);
    rest.wait_ready().await;

    let host_a = HostDaemons::start(&root.join("a"), &root.join("images"), &log_endpoint).await;
    let host_b = HostDaemons::start(&root.join("b"), &root.join("images"), &log_endpoint).await;
    let mut config_a = agent_config(
        "node-a",
        &root.join("a/agent"),
        &host_a.endpoints,
        &api.grpc_url(),
        &token,
    );
    config_a.labels.insert("zone".into(), "a".into());
    let mut config_b = agent_config(
        "node-b",
        &root.join("b/agent"),
        &host_b.endpoints,
        &api.grpc_url(),
        &token,
    );
    config_b.labels.insert("zone".into(), "b".into());
    let agent_a = Agent::start(config_a);
    let agent_b = Agent::start(config_b);

    let nodes = wait_until_async("both nodes online", Duration::from_secs(30), || {
        let rest = rest.clone();
        async move {
            let nodes = rest.get("/v1/nodes").await;
            let items = nodes["items"].as_array()?.clone();
            (items.len() == 2 && items.iter().all(|n| n["status"]["state"] == "online"))
                .then_some(items)
        }
    })
    .await;
    let id_of = |name: &str| -> String {
        nodes
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["id"].as_str())
            .unwrap_or_else(|| panic!("node {name} registered"))
            .to_string()
    };
    let (node_a, node_b) = (id_of("node-a"), id_of("node-b"));

    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "shared", "spec": {"ipv4_prefix": "10.88.0.0/24"}}),
        )
        .await;
    let network_id = network["id"].as_str().unwrap().to_string();
    let template_id = rest.create_template("tiny", &host_a.images).await;

    // Two VMs without a selector: spread puts one on each node.
    let one = rest
        .post(
            "/v1/vms",
            vm_body("one", &template_id, &network_id, 1, None),
        )
        .await;
    let two = rest
        .post(
            "/v1/vms",
            vm_body("two", &template_id, &network_id, 1, None),
        )
        .await;
    let one_id = one["id"].as_str().unwrap().to_string();
    let two_id = two["id"].as_str().unwrap().to_string();
    let one = rest.wait_vm_phase(&one_id, "running", BOOT).await;
    let two = rest.wait_vm_phase(&two_id, "running", BOOT).await;
    let mut placed = vec![
        one["node_id"].as_str().unwrap().to_string(),
        two["node_id"].as_str().unwrap().to_string(),
    ];
    placed.sort();
    let mut both = vec![node_a.clone(), node_b.clone()];
    both.sort();
    assert_eq!(placed, both, "spread placed one VM on each node");

    // A selector by label wins over spreading.
    let three = rest
        .post(
            "/v1/vms",
            vm_body("three", &template_id, &network_id, 1, Some("zone=b")),
        )
        .await;
    let three_id = three["id"].as_str().unwrap().to_string();
    let three = rest.wait_vm_phase(&three_id, "running", BOOT).await;
    assert_eq!(
        three["node_id"],
        json!(node_b),
        "node selector zone=b honoured"
    );

    // A remote-group rule reaches across nodes: "web" on one node admits ssh from "bastion"
    // members; the bastion NIC lives on the other node, so that node's agent cannot expand it
    // locally — the control plane sends its address and the eBPF daemon holds it.
    let bastion = rest
        .post(
            "/v1/security-groups",
            json!({"name": "bastion", "spec": {"rules": []}}),
        )
        .await;
    let web = rest
        .post(
            "/v1/security-groups",
            json!({"name": "web", "spec": {"rules": [{"direction": "ingress", "protocol": "tcp",
                "port_min": 22, "port_max": 22, "remote_group_id": bastion["id"]}]}}),
        )
        .await;
    let web_id = web["id"].as_str().unwrap().to_string();
    let nic_of = |vm: &Value| vm["spec"]["nic_ids"][0].as_str().unwrap().to_string();
    let (web_vm, bastion_vm) = if one["node_id"] == json!(node_a) {
        (&one, &two)
    } else {
        (&two, &one)
    };
    let bastion_nic = rest.get(&format!("/v1/nics/{}", nic_of(bastion_vm))).await;
    for (vm, sg) in [(web_vm, &web), (bastion_vm, &bastion)] {
        rest.put(
            &format!("/v1/nics/{}", nic_of(vm)),
            json!({"spec": {"network_id": network_id, "security_group_ids": [sg["id"]]}}),
        )
        .await;
    }
    let bastion_address = bastion_nic["spec"]["ipv4_address"]
        .as_str()
        .unwrap()
        .to_string();
    let net_a = mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(
        host_a.endpoints.ebpf.clone(),
    )
    .await
    .unwrap();
    wait_until_async(
        "node a's eBPF daemon to hold the bastion's address from node b",
        Duration::from_secs(30),
        || {
            let mut net_a = net_a.clone();
            let (web_id, want) = (web_id.clone(), bastion_address.clone());
            async move {
                let sg = net_a
                    .get_security_group(mvirt_ebpf::proto::GetSecurityGroupRequest { id: web_id })
                    .await
                    .ok()?
                    .into_inner();
                (sg.rules.len() == 1 && sg.rules[0].remote_addresses == vec![want]).then_some(())
            }
        },
    )
    .await;

    // More vCPUs than any node has: Pending with the reason, never placed, never started.
    let huge = rest
        .post(
            "/v1/vms",
            vm_body("huge", &template_id, &network_id, 64, None),
        )
        .await;
    let huge_id = huge["id"].as_str().unwrap().to_string();
    let huge = wait_until_async(
        "the scheduler to say why the huge VM is pending",
        Duration::from_secs(20),
        || {
            let rest = rest.clone();
            let path = format!("/v1/vms/{huge_id}");
            async move {
                // Before the first scheduling round the reason is "waiting for the scheduler";
                // after it, the reason names what is missing.
                let vm = rest.get(&path).await;
                let reason = vm["scheduling"]["reason"].as_str()?.to_lowercase();
                (vm["scheduling"]["state"] == "pending"
                    && !reason.is_empty()
                    && !reason.contains("waiting for the scheduler"))
                .then_some(vm)
            }
        },
    )
    .await;
    assert!(huge["node_id"].is_null(), "{huge:#}");
    let reason = huge["scheduling"]["reason"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        reason.contains("cpu"),
        "the reason names the missing capacity: {reason}"
    );

    // Each node runs exactly the VMs placed on it, and nothing else.
    for (host, node_id) in [(&host_a, &node_a), (&host_b, &node_b)] {
        let mut vmm = mvirt_vmm::proto::vm_service_client::VmServiceClient::connect(
            host.endpoints.vmm.clone(),
        )
        .await
        .unwrap();
        let mut local: Vec<String> = vmm
            .list_vms(mvirt_vmm::proto::ListVmsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .vms
            .into_iter()
            .map(|v| v.id)
            .collect();
        local.sort();
        let mut expected: Vec<String> = [&one, &two, &three]
            .iter()
            .filter(|vm| vm["node_id"] == json!(node_id))
            .map(|vm| vm["id"].as_str().unwrap().to_string())
            .collect();
        expected.sort();
        assert_eq!(local, expected, "VMs on node {node_id}");
    }

    for id in [&one_id, &two_id, &three_id] {
        rest.delete(&format!("/v1/vms/{id}")).await;
    }
    for host in [&host_a, &host_b] {
        let vmm = mvirt_vmm::proto::vm_service_client::VmServiceClient::connect(
            host.endpoints.vmm.clone(),
        )
        .await
        .unwrap();
        wait_until_async("the VMs to be deleted", Duration::from_secs(60), || {
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
    }
    agent_a.stop().await;
    agent_b.stop().await;
    api.stop().await;
    log_shutdown.trigger();
}
