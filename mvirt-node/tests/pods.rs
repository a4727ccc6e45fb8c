//! Pods end to end on one host, every part real: mvirt-api (REST), the node agent, mvirt-vmm
//! booting the pod artefacts (built from this checkout's mvirt-one) under QEMU TCG with
//! vhost-device-vsock, mvirt-zfs and a QEMU TCG guest VM, mvirt-ebpf (DHCP, security groups, a
//! public network whose traffic reaches the host stack), mvirt-log, and two real OCI registries
//! (one anonymous, one with basic auth) on the address of the host's uplink, which the pod
//! reaches through its public network.
//!
//! One pod with two containers (an HTTP server from the anonymous registry, a line writer from
//! the private one) is booted once and shared by the checks: logs, exec, its DHCP address, a VM
//! on the same network fetching its page until a security-group change cuts it off, the agent's
//! and mvirt-vmm's restarts (adopted, not restarted), its usage (REST stats, the agent's
//! metrics), stop, start and restart (a new microVM each time), delete (nothing left). Two pods
//! that must fail (wrong registry credentials, an unknown image) boot first, side by side, and
//! are deleted before the VM and the shared pod are created (a node's capacity is its host's
//! cores). Neither registry password appears in any log: every mvirt-log entry, everything the
//! in-process daemons trace, the pods' console and process logs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mvirt_log::server::{BoundServer, Config as LogConfig};
use mvirt_testsupport::pod;
use mvirt_testsupport::process::wait_until_async;
use mvirt_testsupport::registry::{Registry, TestImage};
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::pod_service_client::PodServiceClient;
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// A microVM boot under TCG plus the pulls, on a shared 2-core machine.
const BOOT: Duration = Duration::from_secs(300);
const PULL_USER: &str = "puller";
const PULL_PASSWORD: &str = "right-password";
const WRONG_PASSWORD: &str = "wrong-password";

/// Everything the daemons in this process trace (the mvirt crates at DEBUG), kept to be searched
/// for secrets. The test harness still gets WARN and above (or `RUST_LOG`).
#[derive(Clone, Default)]
struct Traced(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Traced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Traced {
    /// Installs the process's tracing subscriber (this test binary has one test).
    fn install() -> Traced {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{fmt, EnvFilter, Layer};
        let traced = Traced::default();
        let writer = traced.clone();
        let daemons = "warn,mvirt_api=debug,mvirt_node=debug,mvirt_vmm=debug,mvirt_log=debug,\
                       mvirt_ebpf=debug,mvirt_zfs=debug,mvirt_common=debug,mvirt_podimage=debug";
        tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .with_filter(EnvFilter::new(daemons)),
            )
            .with(fmt::layer().with_test_writer().with_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
            ))
            .try_init()
            .expect("the test's tracing subscriber is the process's first");
        traced
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every entry mvirt-log holds, of every level and component, oldest first (all pages).
async fn all_log_entries(endpoint: &str) -> Vec<mvirt_log::proto::LogEntry> {
    use mvirt_log::proto::query_response::Item;
    let mut client =
        mvirt_log::proto::log_service_client::LogServiceClient::connect(endpoint.to_string())
            .await
            .expect("mvirt-log");
    let (mut entries, mut cursor) = (Vec::new(), String::new());
    loop {
        let mut stream = client
            .query(mvirt_log::proto::QueryRequest {
                order: mvirt_log::proto::Order::OldestFirst as i32,
                limit: 10_000,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .expect("query mvirt-log")
            .into_inner();
        let mut next = String::new();
        while let Some(item) = stream.message().await.expect("a log page") {
            match item.item {
                Some(Item::Entry(entry)) => entries.push(entry),
                Some(Item::PageEnd(end)) => next = end.next_cursor,
                None => {}
            }
        }
        if next.is_empty() {
            return entries;
        }
        cursor = next;
    }
}

/// The logs mvirt-vmm keeps of a pod's processes (serial console: the guest kernel and
/// mvirt-one; QEMU's and vhost-device-vsock's output): none may hold a password. Returns the
/// console's text (never empty for a pod that booted).
fn assert_run_logs_hold_no_secret(host: &HostDaemons, pod_id: &str) -> String {
    let run = host.dir.join("vmm").join("run").join(pod_id);
    let mut console = String::new();
    for entry in std::fs::read_dir(&run).unwrap_or_else(|e| panic!("{}: {e}", run.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        for secret in [PULL_PASSWORD, WRONG_PASSWORD] {
            assert!(
                !text.contains(secret),
                "{} holds {secret:?}",
                path.display()
            );
        }
        if path.file_name().is_some_and(|n| n == "console.log") {
            console = text;
        }
    }
    console
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// An interface holding the registries' address: the host side a public network's traffic
/// reaches (mvirt-ebpf's `--uplink`). Removed on drop.
struct Uplink {
    name: String,
    ip: std::net::Ipv4Addr,
}

impl Uplink {
    fn create() -> Uplink {
        let name = mvirt_testsupport::netns::unique_name("mvup");
        let n = (std::process::id() % 200 + 20) as u8;
        let ip = std::net::Ipv4Addr::new(10, 216, n, 1);
        // No dummy driver here: a veth pair (both ends up, so the link has a carrier).
        let peer = format!("{name}p");
        mvirt_testsupport::netns::ip(&[
            "link", "add", &name, "type", "veth", "peer", "name", &peer,
        ]);
        mvirt_testsupport::netns::ip(&["addr", "add", &format!("{ip}/24"), "dev", &name]);
        mvirt_testsupport::netns::ip(&["link", "set", &peer, "up"]);
        mvirt_testsupport::netns::ip(&["link", "set", &name, "up"]);
        Uplink { name, ip }
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// Waits until the object at `path` has status phase `phase`; on timeout the panic shows it.
async fn wait_phase(rest: &Rest, path: &str, phase: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let object = rest.get(path).await;
        if object["status"]["phase"] == phase {
            return object;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{path} not {phase} after {timeout:?}:\n{object:#}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn container(name: &str, image: &str, script: &str) -> Value {
    json!({"name": name, "image": image, "command": ["sh", "-c", script]})
}

/// `count` lines of a container's log, followed through REST (NDJSON).
async fn rest_follow(rest: &Rest, pod_id: &str, container: &str, count: usize) -> Vec<Value> {
    let url = format!(
        "{}/v1/pods/{pod_id}/logs?container={container}&follow=true&tail=1",
        rest.base
    );
    let mut response = rest
        .http
        .get(url)
        .bearer_auth(&rest.token)
        .send()
        .await
        .expect("GET logs");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let (mut buffer, mut entries) = (Vec::new(), Vec::new());
    while entries.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("a followed line")
            .expect("the stream goes on")
            .expect("the stream stays open while following");
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            entries.push(serde_json::from_slice(&line[..line.len() - 1]).expect("NDJSON"));
        }
    }
    entries
}

/// Runs a command through REST (the exec WebSocket): (stdout, stderr, exit code).
async fn rest_exec(
    rest: &Rest,
    pod_id: &str,
    container: &str,
    command: &[&str],
    tty: bool,
) -> (String, String, i32) {
    try_rest_exec(rest, pod_id, container, command, tty)
        .await
        .unwrap_or_else(|e| panic!("exec {command:?}: {e}"))
}

async fn try_rest_exec(
    rest: &Rest,
    pod_id: &str,
    container: &str,
    command: &[&str],
    tty: bool,
) -> Result<(String, String, i32), String> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut url = reqwest::Url::parse(&format!(
        "{}/v1/pods/{pod_id}/exec",
        rest.base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    ))
    .unwrap();
    url.query_pairs_mut()
        .append_pair("container", container)
        .append_pair("tty", if tty { "true" } else { "false" });
    for arg in command {
        url.query_pairs_mut().append_pair("command", arg);
    }
    let mut request = url.as_str().into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {}", rest.token).parse().unwrap(),
    );
    headers.insert(
        "sec-websocket-protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    let connector = rest.ca_pem.as_ref().map(|ca| {
        tokio_tungstenite::Connector::Rustls(
            mvirt_common::tls::client_config(ca, None).expect("TLS client config"),
        )
    });
    let (mut socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
            .map_err(|e| format!("exec WebSocket: {e}"))?;
    if !tty {
        // An empty stdin frame closes the command's stdin.
        socket
            .send(Message::binary(vec![0u8]))
            .await
            .map_err(|e| e.to_string())?;
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .map_err(|_| "no exec output for 60 s".to_string())?
            .ok_or("the exec ended without a status")?
            .map_err(|e| e.to_string())?;
        let Message::Binary(data) = message else {
            continue;
        };
        match data.first() {
            Some(1) => out.extend_from_slice(&data[1..]),
            Some(2) => err.extend_from_slice(&data[1..]),
            Some(3) => {
                let status: Value = serde_json::from_slice(&data[1..]).unwrap();
                let code = status["exit_code"]
                    .as_i64()
                    .ok_or_else(|| format!("exec status {status}"))?;
                return Ok((
                    String::from_utf8_lossy(&out).into_owned(),
                    String::from_utf8_lossy(&err).into_owned(),
                    code as i32,
                ));
            }
            other => return Err(format!("unexpected channel {other:?}")),
        }
    }
}

async fn vmm_pod(pods: &mut PodServiceClient<Channel>, id: &str) -> vmm::Pod {
    pods.get_pod(vmm::GetPodRequest { id: id.into() })
        .await
        .expect("the pod in mvirt-vmm")
        .into_inner()
}

async fn pods_in_vmm(pods: &mut PodServiceClient<Channel>) -> Vec<vmm::Pod> {
    pods.list_pods(vmm::ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods
}

/// Waits until mvirt-vmm has none of `ids`, mvirt-ebpf none of `nics` (nor their TAPs), and no
/// run directory of the pods is left.
async fn wait_gone(host: &HostDaemons, ids: &[String], nics: &[(String, String)]) {
    let (vmm_endpoint, ebpf) = (host.endpoints.vmm.clone(), host.endpoints.ebpf.clone());
    wait_until_async(
        "the pods, their NICs and TAPs to be removed",
        Duration::from_secs(90),
        || {
            let (vmm_endpoint, ebpf) = (vmm_endpoint.clone(), ebpf.clone());
            async move {
                let mut pods = PodServiceClient::connect(vmm_endpoint).await.ok()?;
                let left = pods_in_vmm(&mut pods).await;
                let mut net =
                    mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(ebpf)
                        .await
                        .ok()?;
                let local_nics = net
                    .list_nics(mvirt_ebpf::proto::ListNicsRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .nics;
                let pods_gone = !left.iter().any(|p| ids.contains(&p.id));
                let nics_gone = !local_nics
                    .iter()
                    .any(|n| nics.iter().any(|(id, _)| *id == n.id));
                let taps_gone = nics
                    .iter()
                    .all(|(_, tap)| !mvirt_ebpf::ip::link_exists(tap));
                (pods_gone && nics_gone && taps_gone).then_some(())
            }
        },
    )
    .await;
    for id in ids {
        let run = host.dir.join("vmm").join("run").join(id);
        assert!(!run.exists(), "{} is left", run.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_pull_run_serve_a_vm_and_survive_agent_and_vmm_restarts() {
    mvirt_testsupport::require_root();
    let traced = Traced::install();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let artefacts = tokio::task::spawn_blocking(pod::artefacts).await.unwrap();
    let manifest = mvirt_podimage::image::Manifest::read(&artefacts).unwrap();
    let uplink = Uplink::create();
    let registry = Registry::start_on(uplink.ip);
    registry.push_image("httpd", "1", &TestImage::busybox());
    let private = Registry::start_on_with_basic_auth(uplink.ip, PULL_USER, PULL_PASSWORD);
    private.push_image("team/logger", "1", &TestImage::busybox());

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
    // The agent's /metrics, as `mvirt-node --metrics-listen` serves it.
    let metrics = mvirt_common::metrics::serve(
        mvirt_node::metrics::DAEMON,
        "127.0.0.1:0".parse().unwrap(),
        log_shutdown.clone(),
    )
    .await
    .unwrap();

    let pods_config = mvirt_vmm::pod::PodConfig {
        artefacts_dir: artefacts.clone(),
        ready_timeout: BOOT,
        kernel_args: vec!["tsc_early_khz=2100000".into()],
        insecure_registries: vec![registry.host(), private.host()],
        ..Default::default()
    };
    let options = HostOptions {
        uplink: Some(uplink.name.clone()),
        pods: Some(pods_config),
    };
    let mut host =
        HostDaemons::start_with(root, &root.join("images"), &log_endpoint, options).await;
    let api_server = mvirt_api::server::start(
        mvirt_api::server::ServerConfig::for_tests("127.0.0.1".parse().unwrap(), &root.join("api")),
        mvirt_common::Shutdown::new(),
    )
    .await
    .expect("mvirt-api starts");
    let token = api_server.admin_token().expect("admin token");
    let rest = Rest::for_member(&api_server, &token);
    rest.wait_ready().await;
    let agent_dir = root.join("agent");
    let config = agent_config("node-a", &agent_dir, &host.endpoints, &api_server, &token);
    let mut agent = Agent::start(config.clone());

    // A public network (its traffic reaches the registries on the uplink's address), a group
    // admitting HTTP from the network, a VM client on the network (its boot overlaps the pod's).
    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "pods", "spec": {"ipv4_prefix": "10.78.0.0/24", "is_public": true}}),
        )
        .await;
    let network_id = network["id"].as_str().unwrap().to_string();
    let web_sg = rest
        .post(
            "/v1/security-groups",
            json!({"name": "web", "spec": {"rules": [{"direction": "ingress", "protocol": "tcp",
                "port_min": 80, "port_max": 80, "cidr": "10.78.0.0/24"}]}}),
        )
        .await;
    let web_sg_id = web_sg["id"].as_str().unwrap().to_string();
    // The template imports meanwhile.
    let template_id = rest.create_template("tiny", &host.images).await;
    let httpd = format!("{}/httpd:1", registry.host());
    let logger = format!("{}/team/logger:1", private.host());
    // Two pods that must fail, first: wrong credentials for the private registry, and an
    // image that does not exist. (They boot before the VM and the pod that runs: a node's
    // capacity is its host's cores, 2 on the CI machine. A failed pod no longer holds its
    // place, but while the two are starting they do.)
    let bad_credentials = rest
        .post(
            "/v1/pods",
            json!({"name": "bad-credentials", "spec": {
                "vcpus": 1, "memory_bytes": 256u64 << 20,
                "containers": [container("app", &logger, "true")],
                "network_interfaces": [{"network_id": network_id}],
                "registry_credentials": [{"registry": private.host(), "username": PULL_USER,
                    "password": WRONG_PASSWORD}],
            }}),
        )
        .await;
    let no_image = rest
        .post(
            "/v1/pods",
            json!({"name": "no-image", "spec": {
                "vcpus": 1, "memory_bytes": 256u64 << 20,
                "containers": [container("app", &format!("{}/nope:1", registry.host()), "true")],
                "network_interfaces": [{"network_id": network_id}],
            }}),
        )
        .await;

    let mut net = mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(
        host.endpoints.ebpf.clone(),
    )
    .await
    .unwrap();
    let mut pods = PodServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .unwrap();
    // The failing pods: the registry's reason in the status.
    let bad_credentials_id = bad_credentials["id"].as_str().unwrap().to_string();
    let no_image_id = no_image["id"].as_str().unwrap().to_string();
    let failed = wait_phase(
        &rest,
        &format!("/v1/pods/{bad_credentials_id}"),
        "failed",
        BOOT,
    )
    .await;
    let reason = failed["status"]["message"].as_str().unwrap().to_lowercase();
    assert!(
        reason.contains("unauthorized") || reason.contains("401"),
        "{failed:#}"
    );
    assert!(!failed.to_string().contains(WRONG_PASSWORD));
    // A failed pod runs nothing (until its back-off ends).
    assert_eq!(vmm_pod(&mut pods, &bad_credentials_id).await.pid, 0);
    // Its microVM booted and mvirt-one tried the pull: neither the console nor QEMU's output
    // has the password.
    let console = assert_run_logs_hold_no_secret(&host, &bad_credentials_id);
    assert!(console.contains("Linux version"), "{console}");
    let failed = wait_phase(&rest, &format!("/v1/pods/{no_image_id}"), "failed", BOOT).await;
    let reason = failed["status"]["message"].as_str().unwrap();
    assert!(reason.contains("nope"), "{failed:#}");
    assert_eq!(vmm_pod(&mut pods, &no_image_id).await.pid, 0);

    // The failing pods go, with everything they had.
    let nic_of = |p: &Value| p["spec"]["nic_ids"][0].as_str().unwrap().to_string();
    let mut gone_nics = Vec::new();
    for p in [&bad_credentials, &no_image] {
        let nic = nic_of(p);
        let tap = net
            .get_nic(mvirt_ebpf::proto::GetNicRequest { id: nic.clone() })
            .await
            .unwrap()
            .into_inner()
            .tap_name;
        gone_nics.push((nic, tap));
    }
    rest.delete(&format!("/v1/pods/{bad_credentials_id}")).await;
    rest.delete(&format!("/v1/pods/{no_image_id}")).await;
    wait_gone(
        &host,
        &[bad_credentials_id.clone(), no_image_id.clone()],
        &gone_nics,
    )
    .await;

    let vm = rest
        .post(
            "/v1/vms",
            json!({"name": "client", "spec": {
                "vcpus": 1, "memory_bytes": 256u64 << 20,
                "root_volume": {"template_id": template_id, "size_bytes": 64u64 << 20},
                "network_interfaces": [{"network_id": network_id}],
            }}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();

    // The pod: an HTTP server from the anonymous registry, a line writer from the private one.
    let created = rest
        .post(
            "/v1/pods",
            json!({"name": "web", "spec": {
                "vcpus": 1, "memory_bytes": 512u64 << 20,
                "containers": [
                    container("web", &httpd,
                        "mkdir -p /www && echo hello-from-pod > /www/index.html && exec busybox httpd -f -p 80 -h /www"),
                    container("logger", &logger,
                        "i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done"),
                ],
                "network_interfaces": [{"network_id": network_id, "security_group_ids": [web_sg_id]}],
                "registry_credentials": [{"registry": private.host(), "username": PULL_USER,
                    "password": PULL_PASSWORD}],
            }}),
        )
        .await;
    let pod_id = created["id"].as_str().unwrap().to_string();
    let pod_path = format!("/v1/pods/{pod_id}");
    // The secret is write-only.
    let credentials = &created["spec"]["registry_credentials"][0];
    assert_eq!(credentials["username"], PULL_USER, "{created:#}");
    assert!(credentials.get("password").is_none(), "{created:#}");
    assert!(!created.to_string().contains(PULL_PASSWORD));

    // `running` is honest: the first status that says so already has both containers'
    // processes running (mvirt-vmm records RUNNING only once mvirt-one launched them, with
    // their states in the same record, and the agent reports phase and containers from it).
    let running = wait_phase(&rest, &pod_path, "running", BOOT).await;
    assert!(!rest
        .get(&pod_path)
        .await
        .to_string()
        .contains(PULL_PASSWORD));
    assert_eq!(
        running["status"]["artefacts_version"],
        manifest.version.as_str()
    );
    let containers = running["status"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "{running:#}");
    for c in containers {
        assert_eq!(c["state"], "running", "{running:#}");
        assert!(
            c["image_digest"].as_str().unwrap().starts_with("sha256:"),
            "{c:#}"
        );
    }
    // Its address came by DHCP from mvirt-ebpf: the guest's eth0 carries the API's address.
    let nic_id = running["spec"]["nic_ids"][0].as_str().unwrap().to_string();
    let nic = rest.get(&format!("/v1/nics/{nic_id}")).await;
    let address = nic["spec"]["ipv4_address"].as_str().unwrap().to_string();
    let pod_with_address = wait_until_async(
        "the pod's guest address in its status",
        Duration::from_secs(60),
        || {
            let (rest, path, address) = (rest.clone(), pod_path.clone(), address.clone());
            async move {
                let pod = rest.get(&path).await;
                let addresses = pod["status"]["ipv4_addresses"].as_array()?.clone();
                (addresses == vec![json!(address)]).then_some(pod)
            }
        },
    )
    .await;
    assert!(address.starts_with("10.78.0."), "{pod_with_address:#}");
    let in_vmm = vmm_pod(&mut pods, &pod_id).await;
    let eth0 = in_vmm
        .interfaces
        .iter()
        .find(|i| {
            i.addresses
                .iter()
                .any(|a| a.starts_with(&format!("{address}/")))
        })
        .unwrap_or_else(|| panic!("no guest interface has {address}: {:?}", in_vmm.interfaces));
    assert_eq!(eth0.mac, nic["spec"]["mac_address"].as_str().unwrap());
    let pid = in_vmm.pid;
    assert!(pid > 0);
    let console = assert_run_logs_hold_no_secret(&host, &pod_id);
    assert!(console.contains("Linux version"), "{console}");

    // The node says which pod artefacts it has: the ones the pod booted.
    let node_id = running["node_id"].as_str().unwrap().to_string();
    let node = rest.get(&format!("/v1/nodes/{node_id}")).await;
    assert_eq!(
        node["status"]["pod_artefacts_version"],
        manifest.version.as_str(),
        "{node:#}"
    );

    // Its usage, sampled on the node: through REST, and in the agent's metrics.
    let stats = rest.get(&format!("{pod_path}/stats")).await;
    assert_eq!(stats["id"], pod_id.as_str(), "{stats:#}");
    assert_eq!(stats["node_id"], node_id.as_str(), "{stats:#}");
    assert_eq!(stats["running"], true, "{stats:#}");
    assert_eq!(stats["pid"], pid, "{stats:#}");
    assert!(stats["cpu_seconds"].as_f64().unwrap() > 0.0, "{stats:#}");
    // The microVM's RSS: at least its kernel and mvirt-one, at most its memory plus QEMU's own.
    let rss = stats["memory_rss_bytes"].as_u64().unwrap();
    assert!(rss > 16 << 20 && rss < 1 << 30, "{stats:#}");
    assert_eq!(stats["nics"][0]["nic_id"], nic_id.as_str(), "{stats:#}");
    let exposition = rest
        .http
        .get(format!("http://{}/metrics", metrics.addr))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    let cpu = sample(
        &exposition,
        &format!("mvirt_node_pod_cpu_seconds_total{{pod=\"{pod_id}\"}}"),
    );
    assert!(cpu.is_some_and(|v| v > 0.0), "{exposition}");
    let memory = sample(
        &exposition,
        &format!("mvirt_node_pod_memory_resident_bytes{{pod=\"{pod_id}\"}}"),
    );
    assert!(
        memory.is_some_and(|v| v > (16 << 20) as f64),
        "{exposition}"
    );

    // Logs and exec through REST (API -> agent -> mvirt-vmm -> mvirt-one).
    let entries = rest_follow(&rest, &pod_id, "logger", 3).await;
    for entry in &entries {
        assert_eq!(entry["container"], "logger", "{entry}");
        assert_eq!(entry["stream"], "stdout", "{entry}");
        assert!(
            entry["line"].as_str().unwrap().starts_with("line "),
            "{entry}"
        );
        assert!(entry["time"].as_str().unwrap().contains('T'), "{entry}");
    }
    assert_ne!(entries[0]["line"], entries[2]["line"]);
    let (out, err, code) = rest_exec(
        &rest,
        &pod_id,
        "logger",
        &["sh", "-c", "echo out; echo err >&2; exit 5"],
        false,
    )
    .await;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 5));
    let (out, _, code) = rest_exec(
        &rest,
        &pod_id,
        "web",
        &["sh", "-c", "test -t 1 && echo stdout-is-a-tty; exit 3"],
        true,
    )
    .await;
    assert!(out.contains("stdout-is-a-tty"), "{out:?}");
    assert_eq!(code, 3);

    // Logs need a container when the pod has several; a VM is no pod; a bad token is refused.
    let (status, body) = rest
        .call(reqwest::Method::GET, &format!("{pod_path}/logs"), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("logger"), "{body}");
    let (status, _) = rest
        .call(
            reqwest::Method::GET,
            &format!("/v1/pods/{vm_id}/logs?container=web"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = rest
        .with_token("not-a-token")
        .call(
            reqwest::Method::GET,
            &format!("{pod_path}/logs?container=web"),
            None,
        )
        .await;
    assert_eq!(status, 401);

    // A VM on the network fetches the pod's page; removing the group's rule cuts it off.
    rest.wait_vm_phase(&vm_id, "running", BOOT).await;
    console_until(&host.endpoints.vmm, &vm_id, b"", "MVIRT-GUEST-BOOTED", BOOT).await;
    // `timeout`, not `wget -T`: busybox 1.35's wget (Debian 12) segfaults with -T.
    let fetch = format!(
        "for i in $(seq 1 60); do timeout 5 wget -q -O - http://{address}/ && break; sleep 1; done; echo FETCHED-$((40+2))\n"
    );
    let seen = console_until(
        &host.endpoints.vmm,
        &vm_id,
        fetch.as_bytes(),
        "FETCHED-42",
        Duration::from_secs(120),
    )
    .await;
    assert!(seen.contains("hello-from-pod"), "{seen}");
    rest.put(
        &format!("/v1/security-groups/{web_sg_id}"),
        json!({"spec": {"rules": []}}),
    )
    .await;
    wait_until_async(
        "the rule to leave mvirt-ebpf",
        Duration::from_secs(60),
        || {
            let (mut net, id) = (net.clone(), web_sg_id.clone());
            async move {
                let sg = net
                    .get_security_group(mvirt_ebpf::proto::GetSecurityGroupRequest { id })
                    .await
                    .ok()?
                    .into_inner();
                sg.rules.is_empty().then_some(())
            }
        },
    )
    .await;
    let cut = format!("timeout 5 wget -q -O - http://{address}/ || echo CUT-OFF-$((6*7))\n");
    let seen = console_until(
        &host.endpoints.vmm,
        &vm_id,
        cut.as_bytes(),
        "CUT-OFF-42",
        Duration::from_secs(60),
    )
    .await;
    let after_cut = seen.rsplit("CUT-OFF").nth(1).unwrap_or_default();
    assert!(
        !after_cut.contains("hello-from-pod"),
        "fetched after the cut: {seen}"
    );

    // The agent is killed and started again: the pod is adopted, not started again.
    agent.kill();
    agent = Agent::start(config.clone());
    wait_until_async(
        "the restarted agent to report",
        Duration::from_secs(60),
        || {
            let (rest, node_id) = (rest.clone(), node_id.clone());
            async move {
                let node = rest.get(&format!("/v1/nodes/{node_id}")).await;
                (node["status"]["state"] == "online").then_some(())
            }
        },
    )
    .await;
    let (out, _, code) = wait_until_async(
        "exec through the restarted agent",
        Duration::from_secs(60),
        || {
            let (rest, pod_id) = (rest.clone(), pod_id.clone());
            async move {
                try_rest_exec(
                    &rest,
                    &pod_id,
                    "logger",
                    &["sh", "-c", "echo still-here"],
                    false,
                )
                .await
                .ok()
            }
        },
    )
    .await;
    assert_eq!((out.as_str(), code), ("still-here\n", 0));
    let same = vmm_pod(&mut pods, &pod_id).await;
    assert_eq!(same.pid, pid, "the same microVM");
    assert!(
        same.containers.iter().all(|c| c.restart_count == 0),
        "{same:?}"
    );

    // mvirt-vmm restarts: the microVM is adopted, the agent keeps serving it.
    host.restart_vmm().await;
    let mut pods = PodServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .unwrap();
    let adopted = vmm_pod(&mut pods, &pod_id).await;
    assert_eq!(adopted.pid, pid, "{adopted:?}");
    assert_eq!(adopted.state, vmm::PodState::Running as i32);
    let (out, _, code) = wait_until_async(
        "exec through the agent after the vmm restart",
        Duration::from_secs(30),
        || {
            let (rest, pod_id) = (rest.clone(), pod_id.clone());
            async move {
                try_rest_exec(
                    &rest,
                    &pod_id,
                    "logger",
                    &["sh", "-c", "echo adopted; exit 7"],
                    false,
                )
                .await
                .ok()
            }
        },
    )
    .await;
    assert_eq!((out.as_str(), code), ("adopted\n", 7));
    let listed = pods_in_vmm(&mut pods).await;
    assert_eq!(
        listed.iter().filter(|p| p.id == pod_id).count(),
        1,
        "{listed:?}"
    );
    assert_eq!(listed.len(), 1, "no other pod: {listed:?}");
    wait_phase(&rest, &pod_path, "running", Duration::from_secs(60)).await;

    // Stop: the microVM goes.
    rest.post(&format!("{pod_path}/stop"), json!({})).await;
    let stopped = wait_phase(&rest, &pod_path, "stopped", Duration::from_secs(90)).await;
    assert_eq!(stopped["status"]["phase"], "stopped");
    assert_eq!(vmm_pod(&mut pods, &pod_id).await.pid, 0);

    // Start: a new microVM (the images pulled again, with the stored credentials), both
    // containers running in it, their restart counts from 0 (a new mvirt-one counts anew).
    rest.post(&format!("{pod_path}/start"), json!({})).await;
    let started = wait_phase(&rest, &pod_path, "running", BOOT).await;
    let second_pid = vmm_pod(&mut pods, &pod_id).await.pid;
    assert!(
        second_pid > 0 && second_pid != pid,
        "{second_pid} after {pid}"
    );
    let containers_running = |pod: &Value| {
        let containers = pod["status"]["containers"].as_array().unwrap().clone();
        assert_eq!(containers.len(), 2, "{pod:#}");
        for c in &containers {
            assert_eq!(c["state"], "running", "{pod:#}");
            assert_eq!(c["restart_count"], 0, "{pod:#}");
        }
        containers
    };
    let before_restart = containers_running(&started);
    let (out, _, code) =
        rest_exec(&rest, &pod_id, "logger", &["echo", "started-again"], false).await;
    assert_eq!((out.as_str(), code), ("started-again\n", 0));

    // Restart: once more through a new microVM (stop, then start), containers started anew.
    let generation = started["restart_generation"].as_u64().unwrap_or(0);
    let restarted = rest.post(&format!("{pod_path}/restart"), json!({})).await;
    assert_eq!(
        restarted["restart_generation"].as_u64(),
        Some(generation + 1),
        "{restarted:#}"
    );
    let restarted = wait_until_async(
        "the pod running in a new microVM after the restart",
        BOOT,
        || {
            let (rest, path, vmm_endpoint) =
                (rest.clone(), pod_path.clone(), host.endpoints.vmm.clone());
            let (id, before) = (pod_id.clone(), before_restart.clone());
            async move {
                let mut pods = PodServiceClient::connect(vmm_endpoint).await.ok()?;
                let in_vmm = pods
                    .get_pod(vmm::GetPodRequest { id })
                    .await
                    .ok()?
                    .into_inner();
                let pod = rest.get(&path).await;
                let containers = pod["status"]["containers"].as_array()?;
                let anew = containers.iter().zip(&before).all(|(now, then)| {
                    now["state"] == "running" && now["started_at"] != then["started_at"]
                });
                (in_vmm.pid > 0
                    && in_vmm.pid != second_pid
                    && pod["status"]["phase"] == "running"
                    && anew)
                    .then_some(pod)
            }
        },
    )
    .await;
    containers_running(&restarted);
    let (out, _, code) = rest_exec(&rest, &pod_id, "web", &["echo", "restarted"], false).await;
    assert_eq!((out.as_str(), code), ("restarted\n", 0));
    assert_run_logs_hold_no_secret(&host, &pod_id);

    // Delete (the pod running): the pod, its NIC and TAP, its files.
    let tap = net
        .get_nic(mvirt_ebpf::proto::GetNicRequest { id: nic_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .tap_name;
    rest.delete(&pod_path).await;
    wait_gone(&host, std::slice::from_ref(&pod_id), &[(nic_id, tap)]).await;
    assert!(pod::vsock_backends_under(root).is_empty());

    rest.delete(&format!("/v1/vms/{vm_id}")).await;

    // No password in any log: every mvirt-log entry (every level and component), and all the
    // daemons here traced. Both hold what this test did (so the search looked at something).
    let entries = all_log_entries(&log_endpoint).await;
    assert!(
        entries
            .iter()
            .any(|e| e.object_ids.contains(&bad_credentials_id)),
        "mvirt-log has nothing about the pods: {} entries",
        entries.len()
    );
    for entry in &entries {
        let text = format!("{entry:?}");
        for secret in [PULL_PASSWORD, WRONG_PASSWORD] {
            assert!(
                !text.contains(secret),
                "mvirt-log entry holds {secret:?}: {text}"
            );
        }
    }
    let traced = traced.text();
    assert!(
        traced.contains(&pod_id),
        "the daemons traced nothing about the pod"
    );
    for secret in [PULL_PASSWORD, WRONG_PASSWORD] {
        if let Some(at) = traced.find(secret) {
            let line = traced[..at].rsplit('\n').next().unwrap_or_default();
            panic!("the daemons traced {secret:?}: {line}{secret}…");
        }
    }

    agent.stop().await;
    api_server.stop().await;
    drop(host);
    mvirt_testsupport::process::assert_no_hypervisor_outlives(root, Duration::from_secs(5)).await;
    log_shutdown.trigger();
}
