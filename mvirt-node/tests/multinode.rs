//! Two nodes, each with its own agent, data dir and local daemons (its own zfs-fuse pool,
//! eBPF daemon with its own pinned maps and tables, vmm), under one control plane: VMs are
//! spread over both, a node selector is honoured, and a VM that fits nowhere stays Pending
//! with the reason. On the same booted pair: objects created in one millisecond (UUIDv7 ids
//! that share their first 13 characters) never share a tunnel key, TAP or local name.

mod common;

use std::collections::{BTreeMap, HashSet};
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

/// The booted pair: one control plane, two hosts with their daemons and agents.
struct TwoNodes {
    _dir: tempfile::TempDir,
    rest: Rest,
    api: mvirt_api::server::Running,
    host_a: HostDaemons,
    host_b: HostDaemons,
    agent_a: Agent,
    agent_b: Agent,
    node_a: String,
    node_b: String,
    log_shutdown: mvirt_common::Shutdown,
}

impl TwoNodes {
    async fn start() -> TwoNodes {
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

        let api = mvirt_api::server::start(
            mvirt_api::server::ServerConfig::for_tests(
                "127.0.0.1".parse().unwrap(),
                &root.join("api"),
            ),
            mvirt_common::Shutdown::new(),
        )
        .await
        .expect("mvirt-api starts");
        let token = api.admin_token().expect("admin token");
        let rest = Rest::for_member(&api, &token);
        rest.wait_ready().await;

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
        let mut config_b = agent_config(
            "node-b",
            &root.join("b/agent"),
            &host_b.endpoints,
            &api,
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
        TwoNodes {
            _dir: dir,
            rest,
            api,
            host_a,
            host_b,
            agent_a,
            agent_b,
            node_a,
            node_b,
            log_shutdown,
        }
    }

    async fn stop(self) {
        for host in [&self.host_a, &self.host_b] {
            let vmm = mvirt_vmm::proto::vm_service_client::VmServiceClient::connect(
                host.endpoints.vmm.clone(),
            )
            .await
            .unwrap();
            wait_until_async("every VM to be deleted", Duration::from_secs(60), || {
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
        self.agent_a.stop().await;
        self.agent_b.stop().await;
        self.api.stop().await;
        mvirt_testsupport::process::assert_no_hypervisor_outlives(
            self._dir.path(),
            Duration::from_secs(10),
        )
        .await;
        self.log_shutdown.trigger();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_place_vms_by_capacity_and_selector_and_never_share_a_derived_name() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let c = TwoNodes::start().await;
    let template_id = c.rest.create_template("tiny", &c.host_a.images).await;
    vms_spread_honour_selectors_and_wait_for_capacity(&c, &template_id).await;
    objects_of_one_millisecond_never_share_a_derived_name(&c, &template_id).await;
    template_imports_are_cancelled_on_every_node_by_cancel_and_by_delete(&c).await;
    c.stop().await;
}

async fn vms_spread_honour_selectors_and_wait_for_capacity(c: &TwoNodes, template_id: &str) {
    let (rest, host_a, host_b) = (&c.rest, &c.host_a, &c.host_b);
    let (node_a, node_b) = (c.node_a.clone(), c.node_b.clone());
    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "shared", "spec": {"ipv4_prefix": "10.88.0.0/24"}}),
        )
        .await;
    let network_id = network["id"].as_str().unwrap().to_string();

    // Two VMs without a selector: spread puts one on each node.
    let one = rest
        .post("/v1/vms", vm_body("one", template_id, &network_id, 1, None))
        .await;
    let two = rest
        .post("/v1/vms", vm_body("two", template_id, &network_id, 1, None))
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
            vm_body("three", template_id, &network_id, 1, Some("zone=b")),
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
            vm_body("huge", template_id, &network_id, 64, None),
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
}

/// UUIDv7 ids minted in one millisecond share their first 13 characters: nothing a node derives
/// from an id may collide. 50 networks created at once get 50 tunnel keys, which each node uses
/// as they are; a VM with 8 NICs on each node gets 8 TAPs; same-named VMs and volumes in two
/// projects, created at once, all become ready with distinct local objects.
async fn objects_of_one_millisecond_never_share_a_derived_name(c: &TwoNodes, template_id: &str) {
    let rest = &c.rest;
    let networks: Vec<Value> = futures::future::join_all((0..50).map(|i| {
        rest.post(
            "/v1/networks",
            json!({"name": format!("burst-{i}"), "spec": {"ipv4_prefix": format!("10.120.{i}.0/24")}}),
        )
    }))
    .await;
    let keys: HashSet<u64> = networks
        .iter()
        .map(|n| {
            n["spec"]["tunnel_key"]
                .as_u64()
                .expect("tunnel_key in the spec")
        })
        .collect();
    assert_eq!(keys.len(), 50, "50 networks, 50 tunnel keys");
    let shared_prefix = {
        let mut ids: Vec<&str> = networks.iter().map(|n| n["id"].as_str().unwrap()).collect();
        ids.sort();
        ids.windows(2).filter(|w| w[0][..13] == w[1][..13]).count()
    };
    eprintln!("{shared_prefix} pairs of network ids share their millisecond");
    let net_id = |i: usize| networks[i]["id"].as_str().unwrap().to_string();

    // One VM with 8 NICs on each node; the two share networks 4..8 (tunnelled between nodes).
    let eight_nics = |name: &str, zone: &str, first: usize| {
        json!({"name": name, "spec": {
            "vcpus": 1,
            "memory_bytes": 128u64 << 20,
            "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
            "network_interfaces": (first..first + 8)
                .map(|i| json!({"network_id": net_id(i)}))
                .collect::<Vec<_>>(),
            "node_selector": format!("zone={zone}"),
        }})
    };
    let (a, b) = tokio::join!(
        rest.post("/v1/vms", eight_nics("octo-a", "a", 0)),
        rest.post("/v1/vms", eight_nics("octo-b", "b", 4)),
    );

    // Same names in two projects, at once: a volume `data` attached to a VM `web` in each.
    for p in ["team-1", "team-2"] {
        rest.post("/v1/projects", json!({"name": p})).await;
    }
    let volumes = futures::future::join_all(["team-1", "team-2"].map(|p| {
        rest.post(
            "/v1/volumes",
            json!({"name": "data", "project": p, "spec": {"size_bytes": 16u64 << 20}}),
        )
    }))
    .await;
    let webs =
        futures::future::join_all(["team-1", "team-2"].iter().zip(&volumes).map(|(p, v)| {
            rest.post(
                "/v1/vms",
                json!({"name": "web", "project": p, "spec": {
                    "vcpus": 1,
                    "memory_bytes": 128u64 << 20,
                    "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
                    "volume_ids": [v["id"]],
                }}),
            )
        }))
        .await;

    let mut running = Vec::new();
    for vm in [&a, &b].into_iter().chain(webs.iter()) {
        let id = vm["id"].as_str().unwrap();
        running.push(rest.wait_vm_phase(id, "running", BOOT).await);
    }
    assert_eq!(running[0]["node_id"], json!(c.node_a));
    assert_eq!(running[1]["node_id"], json!(c.node_b));
    for vm in &running {
        for nic in vm["spec"]["nic_ids"].as_array().unwrap() {
            let nic = rest
                .get(&format!("/v1/nics/{}", nic.as_str().unwrap()))
                .await;
            assert_eq!(nic["status"]["phase"], "ready", "{nic:#}");
        }
        for vol in vm["spec"]["volume_ids"].as_array().unwrap() {
            let vol = rest
                .get(&format!("/v1/volumes/{}", vol.as_str().unwrap()))
                .await;
            assert_eq!(vol["status"]["phase"], "ready", "{vol:#}");
        }
    }
    for v in &volumes {
        let v = rest
            .get(&format!("/v1/volumes/{}", v["id"].as_str().unwrap()))
            .await;
        assert_eq!(v["status"]["phase"], "ready", "{v:#}");
    }

    // On each node: the tunnel keys are the API's, 8 distinct TAPs per VM, distinct volumes.
    let api_keys: BTreeMap<String, u32> = networks
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap().to_string();
            (id, n["spec"]["tunnel_key"].as_u64().unwrap() as u32)
        })
        .collect();
    for (host, vm) in [(&c.host_a, &running[0]), (&c.host_b, &running[1])] {
        let mut net = mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(
            host.endpoints.ebpf.clone(),
        )
        .await
        .unwrap();
        let local = net
            .list_networks(mvirt_ebpf::proto::ListNetworksRequest {})
            .await
            .unwrap()
            .into_inner()
            .networks;
        for n in &local {
            if let Some(k) = api_keys.get(&n.id) {
                assert_eq!(n.tunnel_key, *k, "network {} uses the API's key", n.id);
            }
        }
        let nics = net
            .list_nics(mvirt_ebpf::proto::ListNicsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nics;
        let vm_nics: HashSet<&str> = vm["spec"]["nic_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let taps: HashSet<&str> = nics
            .iter()
            .filter(|n| vm_nics.contains(n.id.as_str()))
            .map(|n| n.tap_name.as_str())
            .collect();
        assert_eq!(taps.len(), 8, "8 NICs, 8 TAPs: {taps:?}");
        for tap in &taps {
            assert!(mvirt_ebpf::ip::link_exists(tap), "TAP {tap} exists");
        }
        // The guest sees all eight (asked once its shell runs: what is typed while the kernel
        // boots can be lost — CI saw the first two characters go).
        let vm_id = vm["id"].as_str().unwrap();
        console_until(&host.endpoints.vmm, vm_id, b"", "MVIRT-GUEST-BOOTED", BOOT).await;
        let seen = console_until(
            &host.endpoints.vmm,
            vm_id,
            b"echo NICS-$(ls /sys/class/net | grep -c '^eth')-END\n",
            "NICS-8-END",
            BOOT,
        )
        .await;
        assert!(seen.contains("NICS-8-END"), "{seen}");
    }
    let mut zfs_names = HashSet::new();
    for host in [&c.host_a, &c.host_b] {
        let mut zfs = mvirt_zfs::proto::zfs_service_client::ZfsServiceClient::connect(
            host.endpoints.zfs.clone(),
        )
        .await
        .unwrap();
        for v in zfs
            .list_volumes(mvirt_zfs::proto::ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .volumes
        {
            assert!(
                zfs_names.insert(v.name.clone()),
                "local volume name {} twice",
                v.name
            );
        }
    }

    for vm in &running {
        rest.delete(&format!("/v1/vms/{}", vm["id"].as_str().unwrap()))
            .await;
    }
}

/// A template is imported on every node; `POST /v1/templates/{id}/cancel`, or deleting it,
/// while the imports run cancels each of them (nothing is finished and then thrown away). Each
/// node's progress is its own entry in the template's status.
async fn template_imports_are_cancelled_on_every_node_by_cancel_and_by_delete(c: &TwoNodes) {
    let http = mvirt_testsupport::http::HttpServer::start(&c.host_a.images).await;
    for delete in [false, true] {
        template_import_cancelled(c, &http, delete).await;
    }
}

async fn template_import_cancelled(
    c: &TwoNodes,
    http: &mvirt_testsupport::http::HttpServer,
    delete: bool,
) {
    let name = if delete {
        "stalled-deleted"
    } else {
        "stalled-cancelled"
    };
    let template = c
        .rest
        .post(
            "/v1/templates",
            json!({"name": name, "spec": {"source_url": http.url("stall/disk.raw"), "format": "raw"}}),
        )
        .await;
    let id = template["id"].as_str().unwrap().to_string();
    let path = format!("/v1/templates/{id}");
    let zfs = |host: &HostDaemons| {
        let endpoint = host.endpoints.zfs.clone();
        async move {
            mvirt_zfs::proto::zfs_service_client::ZfsServiceClient::connect(endpoint)
                .await
                .unwrap()
        }
    };
    let clients = [zfs(&c.host_a).await, zfs(&c.host_b).await];
    let jobs_of = |client: &mvirt_zfs::proto::zfs_service_client::ZfsServiceClient<
        tonic::transport::Channel,
    >,
                   id: String| {
        let mut client = client.clone();
        async move {
            client
                .list_import_jobs(mvirt_zfs::proto::ListImportJobsRequest {})
                .await
                .ok()
                .map(|r| {
                    r.into_inner()
                        .jobs
                        .into_iter()
                        .filter(|j| j.template_id == id)
                        .collect::<Vec<_>>()
                })
        }
    };
    wait_until_async(
        "both nodes to be importing, each in the template's status",
        Duration::from_secs(60),
        || {
            let rest = c.rest.clone();
            let path = path.clone();
            let (a, b) = (
                jobs_of(&clients[0], id.clone()),
                jobs_of(&clients[1], id.clone()),
            );
            async move {
                let t = rest.get(&path).await;
                let per_node = t["status"]["nodes"].as_object()?.clone();
                let importing = per_node
                    .values()
                    .filter(|n| n["phase"] == "importing")
                    .count();
                let downloading = |jobs: Vec<mvirt_zfs::proto::ImportJob>| {
                    jobs.iter().any(|j| {
                        j.phase == mvirt_zfs::proto::ImportPhase::Downloading as i32
                            && j.bytes_done > 0
                    })
                };
                (importing == 2 && downloading(a.await?) && downloading(b.await?)).then_some(())
            }
        },
    )
    .await;
    if delete {
        c.rest.delete(&path).await;
    } else {
        let (status, body) = c
            .rest
            .call(
                reqwest::Method::POST,
                &format!("{path}/cancel"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["import_cancelled"], true, "{body}");
    }
    for client in &clients {
        wait_until_async(
            "the import to be cancelled",
            Duration::from_secs(60),
            || {
                let jobs = jobs_of(client, id.clone());
                let mut client = client.clone();
                let id = id.clone();
                async move {
                    let jobs = jobs.await?;
                    let all_cancelled = !jobs.is_empty()
                        && jobs
                            .iter()
                            .all(|j| j.phase == mvirt_zfs::proto::ImportPhase::Cancelled as i32);
                    let templates = client
                        .list_templates(mvirt_zfs::proto::ListTemplatesRequest {})
                        .await
                        .ok()?
                        .into_inner()
                        .templates;
                    (all_cancelled && !templates.iter().any(|t| t.id == id)).then_some(())
                }
            },
        )
        .await;
    }
    if !delete {
        let t = wait_until_async(
            "both nodes to report the cancel",
            Duration::from_secs(30),
            || {
                let (rest, path) = (c.rest.clone(), path.clone());
                async move {
                    let t = rest.get(&path).await;
                    let nodes = t["status"]["nodes"].as_object()?.clone();
                    (nodes.len() == 2
                        && nodes
                            .values()
                            .all(|n| n["phase"] == "failed" && n["message"] == "import cancelled"))
                    .then_some(t)
                }
            },
        )
        .await;
        assert_eq!(t["status"]["phase"], "failed", "{t:#}");
        c.rest.delete(&path).await;
    }
}
