//! One request, one trace id, across processes: a VM created through REST with a client's
//! `X-Request-Id` keeps that id in the Raft command (the VM's and its owned objects'
//! `meta.trace_id`), in the node spec, in the agent's reconcile span and its calls to the
//! local daemons (`x-mvirt-trace-id`), and in the audit entries every one of them writes:
//! `GET /v1/logs?trace_id=` finds the API's, the agent's, mvirt-zfs', mvirt-ebpf's and
//! mvirt-vmm's entries, and mvirt-ebpf's and mvirt-vmm's own log lines carry the id in their
//! `rpc` span (mvirt-vmm runs the create on a task of its own, which inherits the trace). The VM
//! is created stopped: the create reaching mvirt-vmm is the point, no guest boots. Also: a request without (or with an
//! unusable) `X-Request-Id` gets a fresh one, echoed in the answer and in error bodies. The API's
//! direct calls to the agent (the stats relay, host info, the console WebSocket) carry the
//! request's id too: the agent serves them in an `rpc{trace_id=…}` span. Then the
//! VM's DELETE, with an id of its own: the agent deletes the VM, its NIC and its root volume in
//! that trace (the node spec names removed objects' trace ids), and mvirt-vmm's, mvirt-ebpf's
//! and mvirt-zfs' audit entries of the deletes carry it.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mvirt_log::server::{BoundServer, Config as LogConfig};
use mvirt_testsupport::process::wait_until_async;
use serde_json::{json, Value};

/// Everything the process's tracing subscriber writes (every daemon runs in this process).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install() -> Captured {
        use tracing_subscriber::prelude::*;
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::registry()
            // The agent's NodeAgent calls log at debug (stats are asked every 2 s).
            .with(tracing_subscriber::EnvFilter::new(
                "info,mvirt_node::console=debug",
            ))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            )
            .try_init()
            .expect("the test's tracing subscriber is the first");
        captured
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Opens the VM's console WebSocket through the API with `X-Request-Id: trace` and waits for
/// the API to close it or for 10 s (the VM is stopped: the relay ends soon after it opens).
async fn open_console(rest: &Rest, vm_id: &str, trace: &str) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/v1/vms/{vm_id}/console",
        rest.base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {}", rest.token).parse().unwrap(),
    );
    headers.insert("x-request-id", trace.parse().unwrap());
    let connector = rest.ca_pem.as_ref().map(|ca| {
        tokio_tungstenite::Connector::Rustls(
            mvirt_common::tls::client_config(ca, None).expect("TLS client config"),
        )
    });
    let (mut socket, response) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
            .expect("console WebSocket opens");
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(trace)
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// `GET path` with extra headers: (status, `X-Request-Id` of the answer, body).
async fn call(
    rest: &Rest,
    method: reqwest::Method,
    path: &str,
    request_id: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut request = rest
        .http
        .request(method, format!("{}{path}", rest.base))
        .bearer_auth(&rest.token);
    if let Some(id) = request_id {
        request = request.header("X-Request-Id", id);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("REST call");
    let status = response.status().as_u16();
    let echoed = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    (
        status,
        echoed,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_create_is_followed_by_its_request_id_across_every_process() {
    mvirt_testsupport::require_root();
    let captured = Captured::install();
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
    let shutdown = mvirt_common::Shutdown::new();
    tokio::spawn(log.serve(shutdown.clone()));

    let host = HostDaemons::start(root, &root.join("images"), &log_endpoint).await;
    let mut config =
        mvirt_api::server::ServerConfig::for_tests("127.0.0.1".parse().unwrap(), &root.join("api"));
    config.log_endpoint = log_endpoint.clone();
    let api = mvirt_api::server::start(config, mvirt_common::Shutdown::new())
        .await
        .expect("mvirt-api starts");
    let token = api.admin_token().expect("admin token");
    let rest = Rest::for_member(&api, &token);
    rest.wait_ready().await;
    // The agent writes its audit entries to the host's mvirt-log (`endpoints.log`).
    let agent = Agent::start(agent_config(
        "node-t",
        &root.join("agent"),
        &host.endpoints,
        &api,
        &token,
    ));

    // Without a usable X-Request-Id, the API mints one, echoes it and names it in errors.
    let (status, minted, _) = call(&rest, reqwest::Method::GET, "/v1/vms", None, None).await;
    assert_eq!(status, 200);
    let minted = minted.expect("an answer without X-Request-Id asked still gets one");
    assert_eq!(minted.len(), 32, "{minted}");
    let (status, replaced, body) = call(
        &rest,
        reqwest::Method::GET,
        "/v1/vms/no-such-vm",
        Some("not a token!"),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let replaced = replaced.unwrap();
    assert_ne!(replaced, "not a token!");
    assert_eq!(body["error"]["request_id"], replaced.as_str(), "{body}");
    let (status, _, body) = call(
        &rest,
        reqwest::Method::GET,
        "/v1/logs?trace_id=bad%20id",
        None,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("trace_id"),
        "{body}"
    );

    // The VM, created stopped with a request id of the client's choosing.
    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "t-net", "spec": {"ipv4_prefix": "10.83.0.0/24"}}),
        )
        .await;
    let template_id = rest.create_template("t-tiny", &host.images).await;
    let trace = format!("trace-test-{}", mvirt_testsupport::unique_suffix());
    let (status, echoed, vm) = call(
        &rest,
        reqwest::Method::POST,
        "/v1/vms",
        Some(&trace),
        Some(json!({
            "name": "traced",
            "spec": {
                "vcpus": 1,
                "memory_bytes": 128u64 << 20,
                "root_volume": {"template_id": template_id, "size_bytes": 64u64 << 20},
                "network_interfaces": [{"network_id": network["id"]}],
                "desired_state": "stopped",
            }
        })),
    )
    .await;
    assert_eq!(status, 201, "{vm}");
    assert_eq!(echoed.as_deref(), Some(trace.as_str()));
    assert_eq!(
        vm["trace_id"],
        trace.as_str(),
        "the answer carries it: {vm}"
    );
    let vm_id = vm["id"].as_str().unwrap().to_string();

    // The owned root volume and NIC were changed by the same request.
    let vm = rest
        .wait_vm_phase(&vm_id, "stopped", Duration::from_secs(120))
        .await;
    assert_eq!(vm["trace_id"], trace.as_str(), "{vm}");
    let volume_id = vm["spec"]["volume_ids"][0].as_str().unwrap();
    let nic_id = vm["spec"]["nic_ids"][0].as_str().unwrap();
    let volume = rest.get(&format!("/v1/volumes/{volume_id}")).await;
    assert_eq!(volume["trace_id"], trace.as_str(), "{volume}");
    let nic = rest.get(&format!("/v1/nics/{nic_id}")).await;
    assert_eq!(nic["trace_id"], trace.as_str(), "{nic}");

    // The audit log: the API's entry for the command, the agent's for what it created (volume,
    // NIC, VM, in the resource's trace) and mvirt-vmm's, written inside the traced gRPC call.
    let entries = wait_until_async(
        "audit entries of the API, the agent, mvirt-zfs, mvirt-ebpf and mvirt-vmm",
        Duration::from_secs(30),
        || {
            let (rest, path) = (rest.clone(), format!("/v1/logs?trace_id={trace}&limit=100"));
            async move {
                let page = rest.get(&path).await;
                let entries = page["entries"].as_array().unwrap().clone();
                let has = |component: &str| entries.iter().any(|e| e["component"] == component);
                (has("mvirt-api")
                    && has("mvirt-node")
                    && has("mvirt-zfs")
                    && has("mvirt-ebpf")
                    && has("mvirt-vmm"))
                .then_some(entries)
            }
        },
    )
    .await;
    for entry in &entries {
        assert_eq!(entry["trace_id"], trace.as_str(), "{entry}");
    }
    let messages: Vec<String> = entries
        .iter()
        .map(|e| format!("{}: {}", e["component"], e["message"].as_str().unwrap()))
        .collect();
    let said = |component: &str, text: &str| {
        messages
            .iter()
            .any(|m| m.starts_with(&format!("\"{component}\"")) && m.contains(text))
    };
    assert!(said("mvirt-api", "create_vm"), "{messages:#?}");
    assert!(
        said("mvirt-node", &format!("created VM {vm_id}")),
        "{messages:#?}"
    );
    assert!(
        said("mvirt-node", &format!("created NIC {nic_id}")),
        "{messages:#?}"
    );
    assert!(said("mvirt-zfs", "cloned volume"), "{messages:#?}");
    assert!(said("mvirt-vmm", "created VM traced"), "{messages:#?}");
    assert!(
        said("mvirt-ebpf", &format!("created NIC {nic_id}")),
        "{messages:#?}"
    );
    // An unrelated request's id finds none of them.
    let other = rest.get(&format!("/v1/logs?trace_id={minted}")).await;
    assert!(
        other["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["trace_id"] == minted.as_str()),
        "{other}"
    );

    // The log lines: the agent's reconcile span and mvirt-vmm's rpc span name the id.
    let lines = captured.lines();
    let with_trace: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&format!("trace_id={trace}")))
        .collect();
    assert!(
        with_trace.iter().any(|l| l.contains("rpc{")
            && l.contains("method=CreateNic")
            && l.contains("mvirt_ebpf")),
        "no mvirt-ebpf CreateNic line in the trace: {with_trace:#?}"
    );
    assert!(
        with_trace.iter().any(|l| l.contains("rpc{")
            && l.contains("method=CreateVm")
            && l.contains("created VM traced")),
        "no mvirt-vmm CreateVm line in the trace: {with_trace:#?}"
    );
    assert!(
        with_trace
            .iter()
            .any(|l| l.contains("reconcile{") && l.contains(&vm_id)),
        "no agent reconcile line in the trace: {with_trace:#?}"
    );

    // The API's own calls to the node agent (the stats relay, host info, the console) carry the
    // request's id: the agent serves each inside an `rpc{trace_id=…}` span, which only exists
    // when the call brought `x-mvirt-trace-id`.
    let node_id = vm["node_id"]
        .as_str()
        .expect("the VM is placed")
        .to_string();
    let stats_trace = format!("trace-stats-{}", mvirt_testsupport::unique_suffix());
    let (status, echoed, body) = call(
        &rest,
        reqwest::Method::GET,
        &format!("/v1/vms/{vm_id}/stats"),
        Some(&stats_trace),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed.as_deref(), Some(stats_trace.as_str()));
    let host_trace = format!("trace-host-{}", mvirt_testsupport::unique_suffix());
    let (status, _, body) = call(
        &rest,
        reqwest::Method::GET,
        &format!("/v1/nodes/{node_id}/host"),
        Some(&host_trace),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let console_trace = format!("trace-console-{}", mvirt_testsupport::unique_suffix());
    open_console(&rest, &vm_id, &console_trace).await;
    let agent_line = |trace: &str, method: &str, message: &str| {
        captured.lines().into_iter().any(|l| {
            l.contains(&format!("rpc{{trace_id={trace} method={method}}}"))
                && l.contains("mvirt_node::console")
                && l.contains(message)
        })
    };
    wait_until_async(
        "the agent's GetStats, GetHost and Console lines in the requests' traces",
        Duration::from_secs(15),
        || {
            let found = agent_line(&stats_trace, "GetStats", "stats asked")
                && agent_line(&host_trace, "GetHost", "host info asked")
                && agent_line(&console_trace, "Console", "console relay opened");
            async move { found.then_some(()) }
        },
    )
    .await;

    // The DELETE's own id reaches the agent's deletes (the node spec names removed objects'
    // trace ids) and the daemons' audit entries: the VM in mvirt-vmm, its NIC in mvirt-ebpf,
    // its root volume in mvirt-zfs.
    let removal = format!("trace-delete-{}", mvirt_testsupport::unique_suffix());
    let (status, echoed, body) = call(
        &rest,
        reqwest::Method::DELETE,
        &format!("/v1/vms/{vm_id}"),
        Some(&removal),
        None,
    )
    .await;
    assert!((200..300).contains(&status), "DELETE: {status} {body}");
    assert_eq!(echoed.as_deref(), Some(removal.as_str()));
    let entries = wait_until_async(
        "the delete's audit entries of the API, the agent, mvirt-vmm, mvirt-ebpf and mvirt-zfs",
        Duration::from_secs(60),
        || {
            let (rest, path) = (
                rest.clone(),
                format!("/v1/logs?trace_id={removal}&limit=100"),
            );
            let wanted = [
                ("mvirt-node", format!("deleted vm {vm_id}")),
                ("mvirt-node", format!("deleted nic {nic_id}")),
                ("mvirt-node", format!("deleted volume {volume_id}")),
                ("mvirt-vmm", "deleted VM traced".to_string()),
                ("mvirt-ebpf", format!("deleted NIC {nic_id}")),
                ("mvirt-zfs", "deleted volume".to_string()),
                ("mvirt-api", "delete".to_string()),
            ];
            async move {
                let page = rest.get(&path).await;
                let entries = page["entries"].as_array().unwrap().clone();
                let has = |component: &str, text: &str| {
                    entries.iter().any(|e| {
                        e["component"] == component
                            && e["message"].as_str().is_some_and(|m| m.contains(text))
                    })
                };
                wanted
                    .iter()
                    .all(|(component, text)| has(component, text))
                    .then_some(entries)
            }
        },
    )
    .await;
    for entry in &entries {
        assert_eq!(entry["trace_id"], removal.as_str(), "{entry}");
    }
    let lines = captured.lines();
    assert!(
        lines.iter().any(|l| l.contains("delete{")
            && l.contains(&format!("trace_id={removal}"))
            && l.contains(&vm_id)),
        "no agent delete line in the DELETE's trace"
    );

    agent.stop().await;
    shutdown.trigger();
}
