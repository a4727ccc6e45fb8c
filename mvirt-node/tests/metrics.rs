//! Observability on one host: a real Prometheus (Debian's `prometheus`), started by the test
//! with a generated scrape config, scrapes every daemon of a one-node cluster (mvirt-log,
//! -zfs, -ebpf, -vmm, the API and the agent, each on its own `/metrics` listener). After a VM
//! is created and started through REST, Prometheus' query API shows the VM count, the
//! start-latency histogram, the VM's CPU time increasing and its NIC's bytes growing while the
//! guest pings (bytes and packets). Also: Raft's commit, applied and last log indexes and the
//! proposals gauge, the agent's converge-time histogram, the pool's use and the template
//! import's bytes, mvirt-vmm's pods by state and mvirt-ebpf's conntrack gauge are exported.
//! `GET /v1/vms/{id}/stats` and `/v1/nodes/{id}/stats` are checked against /proc
//! of the hypervisor process and of the host, for a running and a stopped VM, and bad input.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use mvirt_testsupport::process::wait_until_async;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);
const DAEMONS: [&str; 6] = [
    "mvirt-log",
    "mvirt-zfs",
    "mvirt-ebpf",
    "mvirt-vmm",
    "mvirt-api",
    "mvirt-node",
];

/// A Prometheus server run by the test; killed on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `prometheus` scraping each `(job, address)` every second.
    async fn start(dir: &Path, targets: &[(&str, SocketAddr)]) -> Prometheus {
        let binary = Path::new("/usr/bin/prometheus");
        assert!(
            binary.exists(),
            "{} is missing: run scripts/setup.sh (Debian package prometheus)",
            binary.display()
        );
        std::fs::create_dir_all(dir).unwrap();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = mvirt_testsupport::net::free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        let http = prometheus.http.clone();
        wait_until_async("Prometheus to be ready", Duration::from_secs(30), || {
            let (http, ready) = (http.clone(), ready.clone());
            async move {
                let r = http.get(&ready).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        prometheus
    }

    /// The instant vector of `query` as (labels, value).
    async fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .expect("query Prometheus")
            .json()
            .await
            .expect("Prometheus answers JSON");
        assert_eq!(body["status"], "success", "{query}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// Waits until `query` has a sample that `ok` accepts; returns its value.
    async fn wait_for(&self, what: &str, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(query).await;
            if let Some((_, v)) = result.iter().find(|(_, v)| ok(*v)) {
                return *v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{what}: {query} gave {result:?} after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// user + system CPU seconds of `pid` from /proc.
fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = mvirt_common::metrics::clock_ticks_per_second();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / ticks
}

/// A `key:   N kB` field of a /proc file, in bytes.
fn proc_kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Runs this checkout's `mvirt top --once -o json` against `rest`'s member with a config of
/// its own (`mvirt login` with the token from a 0600 file and, over TLS, the CA's fingerprint
/// accepted) and returns its rows.
async fn mvirt_top_once(rest: &Rest, home: &Path) -> Vec<Value> {
    use std::os::unix::fs::PermissionsExt;
    let cli = tokio::task::spawn_blocking(mvirt_testsupport::cli::mvirt_cli_binary)
        .await
        .unwrap();
    let config = home.join("mvirt-cli.toml");
    let token_file = home.join("mvirt-cli-token");
    std::fs::write(&token_file, &rest.token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut login = tokio::process::Command::new(&cli);
    login
        .env("MVIRT_CONFIG", &config)
        .args(["login", &rest.base, "--name", "metrics", "--token-file"])
        .arg(&token_file);
    if let Some(ca) = &rest.ca_pem {
        login
            .arg("--accept-fingerprint")
            .arg(mvirt_common::tls::fingerprint_pem(ca).unwrap());
    }
    let out = login.output().await.unwrap();
    assert!(
        out.status.success(),
        "mvirt login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new(&cli)
        .env("MVIRT_CONFIG", &config)
        .args(["top", "--once", "-o", "json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mvirt top: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "mvirt top -o json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_every_daemon_and_stats_match_proc() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let OneNode {
        log_shutdown: shutdown,
        host,
        // Bound (not `..`): the member must outlive the test body.
        api: _api,
        rest,
        agent,
        ..
    } = OneNode::start(root, "node-m").await;

    // Every daemon runs in this process; each gets the /metrics listener its binary opens
    // with --metrics-listen, serving its own registry.
    let mut targets = Vec::new();
    for daemon in DAEMONS {
        let server =
            mvirt_common::metrics::serve(daemon, "127.0.0.1:0".parse().unwrap(), shutdown.clone())
                .await
                .unwrap();
        targets.push((daemon, server.addr));
    }
    let jobs: Vec<(String, SocketAddr)> = targets
        .iter()
        .map(|(d, a)| (d.replace('-', "_"), *a))
        .collect();
    let job_refs: Vec<(&str, SocketAddr)> = jobs.iter().map(|(j, a)| (j.as_str(), *a)).collect();
    let prometheus = Prometheus::start(&root.join("prometheus"), &job_refs).await;

    // Two networks; a VM that runs (one NIC) and one that stays stopped (a NIC on the other
    // network); a third that cannot be placed.
    let mut networks = Vec::new();
    for (name, prefix) in [("m-a", "10.81.0.0/24"), ("m-b", "10.82.0.0/24")] {
        let n = rest
            .post(
                "/v1/networks",
                json!({"name": name, "spec": {"ipv4_prefix": prefix}}),
            )
            .await;
        networks.push(n["id"].as_str().unwrap().to_string());
    }
    let template_id = rest.create_template("tiny", &host.images).await;
    let vm = |name: &str, network: &str, desired: &str| {
        json!({
            "name": name,
            "spec": {
                "vcpus": 1,
                "memory_bytes": 256u64 << 20,
                "root_volume": {"template_id": template_id, "size_bytes": 64u64 << 20},
                "network_interfaces": [{"network_id": network}],
                "desired_state": desired,
            }
        })
    };
    let running = rest
        .post("/v1/vms", vm("busy", &networks[0], "running"))
        .await;
    let vm_id = running["id"].as_str().unwrap().to_string();
    let stopped = rest
        .post("/v1/vms", vm("idle", &networks[1], "stopped"))
        .await;
    let stopped_id = stopped["id"].as_str().unwrap().to_string();
    let mut unplaceable = vm("nowhere", &networks[1], "stopped");
    unplaceable["spec"]["node_selector"] = json!("no-such-node");
    let unplaceable = rest.post("/v1/vms", unplaceable).await;
    let unplaceable_id = unplaceable["id"].as_str().unwrap().to_string();

    let vm_json = rest.wait_vm_phase(&vm_id, "running", BOOT).await;
    rest.wait_vm_phase(&stopped_id, "stopped", BOOT).await;
    let nic_id = vm_json["spec"]["nic_ids"][0].as_str().unwrap().to_string();
    let node_id = vm_json["node_id"].as_str().unwrap().to_string();

    // Every daemon is scraped.
    for (job, _) in &jobs {
        prometheus
            .wait_for(
                &format!("{job} to be up"),
                &format!("up{{job=\"{job}\"}}"),
                |v| v == 1.0,
            )
            .await;
    }
    // The VM count (vmm and API), the start-latency histogram, REST and gRPC traffic, Raft,
    // the scheduler, the pool, the log's ingest.
    prometheus
        .wait_for("one running VM", "mvirt_vmm_vms{state=\"running\"}", |v| {
            v == 1.0
        })
        .await;
    prometheus
        .wait_for("one stopped VM", "mvirt_vmm_vms{state=\"stopped\"}", |v| {
            v == 1.0
        })
        .await;
    prometheus
        .wait_for("three VMs in the API", "mvirt_api_vms", |v| v == 3.0)
        .await;
    prometheus
        .wait_for("one pending VM", "mvirt_scheduler_pending_vms", |v| {
            v == 1.0
        })
        .await;
    prometheus
        .wait_for(
            "a VM start observed",
            "mvirt_vmm_vm_start_duration_seconds_count",
            |v| v >= 1.0,
        )
        .await;
    let buckets = prometheus
        .query("mvirt_vmm_vm_start_duration_seconds_bucket")
        .await;
    assert!(buckets.len() > 10, "start-latency buckets: {buckets:?}");
    let start_seconds = prometheus
        .wait_for(
            "the start latency's sum",
            "mvirt_vmm_vm_start_duration_seconds_sum",
            |v| v > 0.0,
        )
        .await;
    assert!(start_seconds < BOOT.as_secs_f64(), "{start_seconds}");
    prometheus
        .wait_for(
            "VM creates counted by route",
            "mvirt_http_requests_total{route=\"/v1/vms\",method=\"POST\",status=\"201\"}",
            |v| v == 3.0,
        )
        .await;
    prometheus
        .wait_for(
            "StartVm calls counted by code",
            "mvirt_grpc_requests_total{job=\"mvirt_vmm\",method=\"StartVm\",code=\"Ok\"}",
            |v| v >= 1.0,
        )
        .await;
    prometheus
        .wait_for("a Raft term", "mvirt_raft_term", |v| v >= 1.0)
        .await;
    prometheus
        .wait_for("the leader", "mvirt_raft_is_leader", |v| v == 1.0)
        .await;
    prometheus
        .wait_for(
            "log appends timed",
            "mvirt_raft_log_append_duration_seconds_count",
            |v| v > 0.0,
        )
        .await;
    prometheus
        .wait_for("the pool's size", "mvirt_zfs_pool_size_bytes", |v| v > 0.0)
        .await;
    prometheus
        .wait_for(
            "entries ingested by mvirt-log",
            "sum(mvirt_log_entries_ingested_total)",
            |v| v > 0.0,
        )
        .await;
    prometheus
        .wait_for(
            "reconcile passes",
            "mvirt_node_reconcile_passes_total",
            |v| v > 0.0,
        )
        .await;
    // Raft's indexes (every write above went through the log) and the proposals gauge.
    let commit = prometheus
        .wait_for("a commit index", "mvirt_raft_commit_index", |v| v > 0.0)
        .await;
    prometheus
        .wait_for("an applied index", "mvirt_raft_applied_index", |v| v > 0.0)
        .await;
    let last_log = prometheus
        .wait_for("the last log index", "mvirt_raft_last_log_index", |v| {
            v >= commit
        })
        .await;
    assert!(last_log >= commit, "{last_log} < {commit}");
    prometheus
        .wait_for(
            "the proposals-in-flight gauge",
            "mvirt_raft_proposals_in_flight",
            |v| v >= 0.0,
        )
        .await;
    // The agent timed converging to a new spec (the VMs' creates left nothing in progress).
    prometheus
        .wait_for(
            "the agent's converge time",
            "mvirt_node_converge_duration_seconds_count",
            |v| v > 0.0,
        )
        .await;
    // The pool holds the template and the volumes; the template's import moved at least its
    // disk image and ended completed.
    prometheus
        .wait_for("the pool's use", "mvirt_zfs_pool_used_bytes", |v| v > 0.0)
        .await;
    let image_bytes = std::fs::metadata(host.images.join("disk.raw"))
        .unwrap()
        .len() as f64;
    prometheus
        .wait_for(
            "the template import's bytes",
            "sum(mvirt_zfs_import_bytes_total)",
            |v| v >= image_bytes,
        )
        .await;
    prometheus
        .wait_for(
            "the completed import",
            "mvirt_zfs_imports_total{outcome=\"completed\"}",
            |v| v >= 1.0,
        )
        .await;
    // mvirt-vmm's pods by state: a series per state, all 0 (no pod on this host).
    prometheus
        .wait_for("a pod series per state", "count(mvirt_vmm_pods)", |v| {
            v == 6.0
        })
        .await;
    prometheus
        .wait_for("no pods", "sum(mvirt_vmm_pods)", |v| v == 0.0)
        .await;
    // The datapath's conntrack table size is exported (the pings below go to the gateway,
    // which userspace answers: no tracked flow, so only its presence is asserted).
    prometheus
        .wait_for(
            "the conntrack entries gauge",
            "mvirt_ebpf_conntrack_entries",
            |v| v >= 0.0,
        )
        .await;

    // The VM's CPU time increases.
    let cpu = format!("mvirt_node_vm_cpu_seconds_total{{vm=\"{vm_id}\"}}");
    let first = prometheus
        .wait_for("the VM's CPU time", &cpu, |v| v > 0.0)
        .await;
    prometheus
        .wait_for("the VM's CPU time to increase", &cpu, |v| v > first)
        .await;
    let memory = prometheus
        .wait_for(
            "the VM's memory",
            &format!("mvirt_node_vm_memory_resident_bytes{{vm=\"{vm_id}\"}}"),
            |v| v > 0.0,
        )
        .await;
    assert!(memory > (16u64 << 20) as f64, "{memory}");

    // The NIC's bytes grow while the guest pings its gateway.
    console_until(&host.endpoints.vmm, &vm_id, b"", "MVIRT-GUEST-BOOTED", BOOT).await;
    console_until(
        &host.endpoints.vmm,
        &vm_id,
        b"for i in $(seq 1 60); do ip -o -4 addr show dev eth0 | grep -q inet && break; sleep 1; done; echo NET-$((20+1))\n",
        "NET-21",
        BOOT,
    )
    .await;
    let ebpf_bytes =
        format!("mvirt_ebpf_nic_bytes_total{{nic=\"{nic_id}\",direction=\"from_guest\"}}");
    let node_bytes = format!(
        "mvirt_node_vm_nic_bytes_total{{vm=\"{vm_id}\",nic=\"{nic_id}\",direction=\"from_guest\"}}"
    );
    let before = prometheus
        .wait_for("the NIC's bytes", &ebpf_bytes, |v| v >= 0.0)
        .await;
    let before_node = prometheus
        .wait_for("the VM's NIC bytes", &node_bytes, |v| v >= 0.0)
        .await;
    let ebpf_packets =
        format!("mvirt_ebpf_nic_packets_total{{nic=\"{nic_id}\",direction=\"from_guest\"}}");
    let packets_before = prometheus
        .wait_for("the NIC's packets", &ebpf_packets, |v| v >= 0.0)
        .await;
    console_until(
        &host.endpoints.vmm,
        &vm_id,
        b"ping -c 20 -i 0.2 -s 1000 169.254.0.1 >/dev/null 2>&1 & echo PING-$((3+4))\n",
        "PING-7",
        Duration::from_secs(30),
    )
    .await;
    let after = prometheus
        .wait_for("the NIC's bytes to grow by the pings", &ebpf_bytes, |v| {
            v >= before + 5_000.0
        })
        .await;
    prometheus
        .wait_for("the VM's NIC bytes to grow", &node_bytes, |v| {
            v >= before_node + 5_000.0
        })
        .await;
    assert!(after > before);
    // 20 echo requests, each one packet from the guest.
    prometheus
        .wait_for(
            "the NIC's packets to grow by the pings",
            &ebpf_packets,
            |v| v >= packets_before + 20.0,
        )
        .await;

    // GET /v1/vms/{id}/stats against /proc of the hypervisor process.
    let mut vmm =
        mvirt_vmm::proto::vm_service_client::VmServiceClient::connect(host.endpoints.vmm.clone())
            .await
            .unwrap();
    let pid = vmm
        .get_vm(mvirt_vmm::proto::GetVmRequest { id: vm_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .pid;
    assert_ne!(pid, 0);
    let cpu_before = proc_cpu_seconds(pid);
    let stats = rest.get(&format!("/v1/vms/{vm_id}/stats")).await;
    let cpu_after = proc_cpu_seconds(pid);
    let rss_now = proc_kib(&format!("/proc/{pid}/status"), "VmRSS:");
    assert_eq!(stats["id"], vm_id.as_str(), "{stats:#}");
    assert_eq!(stats["node_id"], node_id.as_str());
    assert_eq!(stats["running"], true);
    assert_eq!(stats["pid"], pid);
    let cpu = stats["cpu_seconds"].as_f64().unwrap();
    assert!(
        cpu_before <= cpu && cpu <= cpu_after,
        "/proc says {cpu_before}..{cpu_after} s, the API {cpu}"
    );
    let rss = stats["memory_rss_bytes"].as_u64().unwrap();
    assert!(
        rss.abs_diff(rss_now) <= rss_now / 5,
        "/proc VmRSS {rss_now}, the API {rss}"
    );
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let io_field = |key: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(stats["io_read_bytes"].as_u64().unwrap() <= io_field("rchar:"));
    assert!(stats["io_read_bytes"].as_u64().unwrap() > 0, "{stats:#}");
    assert!(stats["disk_write_bytes"].as_u64().unwrap() <= io_field("write_bytes:"));
    let nics = stats["nics"].as_array().unwrap();
    assert_eq!(nics.len(), 1, "{stats:#}");
    assert_eq!(nics[0]["nic_id"], nic_id.as_str());
    assert!(
        nics[0]["rx_bytes"].as_u64().unwrap() as f64 >= after,
        "{stats:#}"
    );

    // By name too; the stopped VM has no process but its NIC; the unplaced one is a conflict;
    // an unknown one is not found.
    let by_name = rest.get("/v1/vms/busy/stats").await;
    assert_eq!(by_name["id"], vm_id.as_str());
    let idle = rest.get(&format!("/v1/vms/{stopped_id}/stats")).await;
    assert_eq!(idle["running"], false, "{idle:#}");
    assert_eq!(idle["pid"], 0);
    assert_eq!(idle["nics"].as_array().unwrap().len(), 1, "{idle:#}");
    let (status, body) = rest
        .call(
            reqwest::Method::GET,
            &format!("/v1/vms/{unplaceable_id}/stats"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("not placed"), "{body}");
    let (status, body) = rest
        .call(reqwest::Method::GET, "/v1/vms/no-such-vm/stats", None)
        .await;
    assert_eq!(status, 404, "{body}");

    // The node's stats: the host against /proc, both VMs of the node.
    let node = rest.get(&format!("/v1/nodes/{node_id}/stats")).await;
    assert_eq!(
        node["host"]["memory_total_bytes"].as_u64().unwrap(),
        proc_kib("/proc/meminfo", "MemTotal:"),
        "{node:#}"
    );
    assert!(node["host"]["cpu_busy_seconds"].as_f64().unwrap() > 0.0);
    let mut ids: Vec<&str> = node["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![vm_id.as_str(), stopped_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "{node:#}");
    let (status, body) = rest
        .call(reqwest::Method::GET, "/v1/nodes/no-such-node/stats", None)
        .await;
    assert_eq!(status, 404, "{body}");

    // `mvirt top --once`, as an operator runs it (this checkout's CLI, logged in with the
    // cluster's CA pinned): the node's row and both VMs', the running one with a CPU share from
    // its two samples and its hypervisor's resident memory, the stopped one without usage.
    let rows = mvirt_top_once(&rest, root).await;
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no row for {id} in {rows:#?}"))
    };
    let node_row = row(&node_id);
    assert_eq!(node_row["kind"], "node", "{node_row:#}");
    assert!(node_row["memory_total_bytes"].as_u64().unwrap() > 0);
    let busy = row(&vm_id);
    assert_eq!(busy["kind"], "vm", "{busy:#}");
    assert_eq!(busy["name"], "busy", "{busy:#}");
    assert!(
        // A share from two samples (an idle guest may use under a clock tick between them).
        busy["cpu_percent"].as_f64().is_some_and(|c| c >= 0.0),
        "{busy:#}"
    );
    let resident = busy["memory_bytes"].as_u64().unwrap();
    let proc_rss = proc_kib(&format!("/proc/{pid}/status"), "VmRSS:");
    assert!(
        resident > proc_rss / 2 && resident < proc_rss * 2,
        "top says {resident} B resident, /proc says {proc_rss} B"
    );
    let stopped = row(&stopped_id);
    assert!(
        stopped["cpu_percent"].is_null()
            && stopped["memory_bytes"] == 0
            && stopped["disk_read_bytes_per_sec"].is_null(),
        "a stopped VM has no hypervisor to sample: {stopped:#}"
    );

    // The agent's metrics name both VMs' phases.
    prometheus
        .wait_for(
            "VM resources by phase",
            "mvirt_node_resources{kind=\"vm\",phase=\"running\"}",
            |v| v == 1.0,
        )
        .await;

    agent.stop().await;
    shutdown.trigger();
    drop(prometheus);
    drop(host);
}
