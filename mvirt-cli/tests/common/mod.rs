//! Test fixtures: a real single-member mvirt-api in-process (Raft, SQLite, REST, NodeService,
//! all over TLS with the cluster CA it creates at bootstrap) and a runner for the `mvirt`
//! binary pointed at it with an isolated config file and that CA (`MVIRT_CA_FILE`).
#![allow(dead_code)]

pub mod pods;

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use mvirt_api::proto::node_agent_server::{NodeAgent, NodeAgentServer};
use mvirt_api::proto::{self, node_service_client::NodeServiceClient, ConsoleFrame};
use mvirt_api::server::{self, Running, ServerConfig};
use serde_json::Value;

pub const GIB: u64 = 1 << 30;

pub struct Api {
    pub running: Option<Running>,
    pub url: String,
    pub grpc_url: String,
    pub token: String,
    pub dir: tempfile::TempDir,
    /// The CLI's config file for this test (never the user's).
    pub config: PathBuf,
    /// The API serves TLS (not `--insecure-plaintext`).
    pub tls: bool,
    /// The cluster CA the member created (`<data-dir>/tls/ca.pem`; empty PEM when plaintext).
    pub ca_file: PathBuf,
    pub ca_pem: String,
    /// Node certificates (chain, key) of the nodes [`Api::register_node`] registered.
    node_certs: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

/// The outcome of one `mvirt` invocation.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "mvirt failed: {self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

pub async fn start_api() -> Api {
    start_api_with(|_| {}).await
}

pub async fn start_api_with(tweak: impl FnOnce(&mut ServerConfig)) -> Api {
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::for_tests(IpAddr::from([127, 0, 0, 1]), &dir.path().join("api"));
    tweak(&mut config);
    let running = server::start(config, mvirt_common::Shutdown::new())
        .await
        .expect("start mvirt-api");
    let token = running
        .admin_token()
        .expect("admin token written at bootstrap");
    let ca_file = dir.path().join("api").join("tls").join("ca.pem");
    let tls = running.api_url().starts_with("https://");
    let ca_pem = if tls {
        std::fs::read_to_string(&ca_file).expect("the member created its cluster CA")
    } else {
        String::new()
    };
    let api = Api {
        tls,
        url: running.api_url(),
        grpc_url: running.grpc_url(),
        running: Some(running),
        token,
        config: dir.path().join("config.toml"),
        ca_file,
        ca_pem,
        node_certs: Default::default(),
        dir,
    };
    let http = api.http();
    mvirt_testsupport::process::wait_until_async(
        "admin token accepted",
        Duration::from_secs(20),
        || async {
            let r = http
                .get(format!("{}/v1/projects", api.url))
                .bearer_auth(&api.token)
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    api
}

impl Drop for Api {
    fn drop(&mut self) {
        // Stopping is async; dropping `Running` signals its tasks to end with the runtime.
        self.running.take();
    }
}

impl Api {
    /// A REST client that trusts exactly this cluster's CA.
    pub fn http(&self) -> reqwest::Client {
        if self.tls {
            mvirt_testsupport::tls::reqwest_client(&self.ca_pem)
        } else {
            reqwest::Client::new()
        }
    }

    /// Runs `mvirt` with this API's URL and token in the environment.
    pub async fn mvirt(&self, args: &[&str]) -> Out {
        self.mvirt_env(
            args,
            &[
                ("MVIRT_URL", self.url.as_str()),
                ("MVIRT_TOKEN", self.token.as_str()),
            ],
        )
        .await
    }

    /// Runs `mvirt` with only the given environment (plus the isolated config path and the
    /// cluster CA in `MVIRT_CA_FILE`; an empty value given for `MVIRT_CA_FILE` unsets it).
    pub async fn mvirt_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mvirt"));
        cmd.args(args)
            .env_remove("MVIRT_URL")
            .env_remove("MVIRT_TOKEN")
            .env_remove("MVIRT_PROJECT")
            .env_remove("MVIRT_REMOTE")
            .env_remove("MVIRT_CA_FILE")
            .env("MVIRT_CONFIG", &self.config)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null());
        if self.tls {
            cmd.env("MVIRT_CA_FILE", &self.ca_file);
        }
        for (k, v) in env {
            if *k == "MVIRT_CA_FILE" && v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = cmd.output().await.expect("run mvirt");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `mvirt <args> -o json`, asserting success.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        self.mvirt(&a).await.json()
    }

    /// Asserts that `mvirt <args>` fails with `code` and an error message containing `needle`.
    pub async fn fails(&self, args: &[&str], code: i32, needle: &str) -> Out {
        let out = self.mvirt(args).await;
        assert_eq!(out.code, code, "exit code of mvirt {args:?}: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "stderr of mvirt {args:?} lacks {needle:?}: {}",
            out.stderr
        );
        out
    }

    /// A NodeService client over TLS, presenting `node`'s certificate (from its registration)
    /// when given; every call but Register needs one.
    pub fn node_client(&self, node: Option<&str>) -> NodeServiceClient<tonic::transport::Channel> {
        let store = node.map(|id| {
            let certs = self.node_certs.lock().unwrap();
            let (chain, key) = certs
                .get(id)
                .unwrap_or_else(|| panic!("node {id} was not registered by this test"));
            mvirt_common::tls::CertStore::from_pem(chain, key).expect("node certificate")
        });
        let config = self
            .tls
            .then(|| mvirt_common::tls::client_config(&self.ca_pem, store).expect("TLS config"));
        let channel =
            mvirt_common::tls::grpc_channel(&self.grpc_url, config).expect("NodeService channel");
        NodeServiceClient::new(channel)
    }

    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .expect("token header"),
        );
        r
    }

    /// Registers a node like a node agent would; returns its id.
    pub async fn register_node(
        &self,
        name: &str,
        console_endpoint: &str,
        console_secret: &str,
    ) -> String {
        let mut c = self.node_client(None);
        let (csr_pem, key_pem) =
            mvirt_common::tls::generate_csr(name, &["127.0.0.1".into()]).expect("CSR");
        let registered = c
            .register(
                self.req(proto::RegisterRequest {
                    name: name.into(),
                    address: "127.0.0.1".into(),
                    labels: [("zone".to_string(), "a".to_string())]
                        .into_iter()
                        .collect(),
                    capacity: Some(proto::NodeCapacity {
                        vcpus: 16,
                        memory_bytes: 64 * GIB,
                        storage_bytes: 1000 * GIB,
                    }),
                    agent_version: "cli-test".into(),
                    pod_artefacts_version: "pods-cli-test".into(),
                    console_endpoint: console_endpoint.into(),
                    console_secret: console_secret.into(),
                    csr_pem,
                    ..Default::default()
                }),
            )
            .await
            .expect("register node")
            .into_inner();
        assert!(
            !self.tls || !registered.certificate_pem.is_empty(),
            "a registration with a CSR gets a node certificate"
        );
        self.node_certs.lock().unwrap().insert(
            registered.node_id.clone(),
            (registered.certificate_pem, key_pem),
        );
        registered.node_id
    }

    /// Reports a status for one resource, as the node agent does.
    pub async fn report(&self, node_id: &str, status: proto::ResourceStatus) {
        let mut c = self.node_client(Some(node_id));
        c.update_resource_status(self.req(proto::UpdateResourceStatusRequest {
            node_id: node_id.into(),
            statuses: vec![status],
        }))
        .await
        .expect("update resource status");
    }
}

pub fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// The `name`s of a JSON list.
pub fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect()
}

/// A real mvirt-log daemon in-process on a unix socket in `dir` (as on a host, where the API
/// reaches it at `unix:/run/mvirt/log.sock`); returns its endpoint. It stops with `shutdown`.
pub async fn start_log(dir: &std::path::Path, shutdown: mvirt_common::Shutdown) -> String {
    let config = mvirt_log::server::Config {
        listen: mvirt_common::listen::ListenAddr::Unix(dir.join("log.sock")),
        data_dir: dir.to_path_buf(),
        retention: mvirt_log::retention::RetentionPolicy {
            max_age: None,
            max_rows: None,
            interval: Duration::from_secs(3600),
        },
    };
    let bound = mvirt_log::server::BoundServer::bind(config)
        .await
        .expect("bind mvirt-log");
    let endpoint = bound.endpoint();
    tokio::spawn(bound.serve(shutdown));
    endpoint
}

/// Test double for the node agent's console relay (mvirt-node's `NodeAgent.Console`): a VM
/// console cannot run behind a fake node here, so this plays the guest: it greets with a
/// login prompt (the "scrollback") and echoes input back upper-cased. Its `GetStats` reads
/// real numbers from /proc: the host's, and for each VM in `guests` those of a process the
/// test started in the VM's place (no hypervisor runs behind this double).
pub struct EchoConsole {
    pub secret: String,
    pub guests: Guests,
}

/// VM id → pid of the process that stands in for its hypervisor.
pub type Guests = std::sync::Arc<std::sync::Mutex<Vec<(String, u32)>>>;

/// `/proc/<pid>` read as the node agent reads a hypervisor process (`None` once it is gone).
fn proc_usage(id: &str, pid: u32) -> Option<proto::GuestUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = mvirt_common::metrics::clock_ticks_per_second();
    let cpu = (fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?) as f64 / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    Some(proto::GuestUsage {
        id: id.to_string(),
        running: true,
        pid,
        cpu_seconds: cpu,
        memory_rss_bytes: field(&status, "VmRSS:") * 1024,
        threads: field(&status, "Threads:") as u32,
        disk_read_bytes: field(&io, "read_bytes:"),
        disk_write_bytes: field(&io, "write_bytes:"),
        io_read_bytes: field(&io, "rchar:"),
        io_write_bytes: field(&io, "wchar:"),
        nics: vec![],
    })
}

/// The host's CPU, memory and load from /proc, as the node agent reads them.
fn host_usage() -> proto::HostUsage {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = mvirt_common::metrics::clock_ticks_per_second();
    let mut busy = 0.0;
    let mut idle = 0.0;
    if let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) {
        for (i, v) in cpu.split_whitespace().skip(1).take(8).enumerate() {
            let v = v.parse::<f64>().unwrap_or(0.0) / ticks;
            if i == 3 || i == 4 {
                idle += v;
            } else {
                busy += v;
            }
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    proto::HostUsage {
        cpus: stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count() as u32,
        cpu_busy_seconds: busy,
        cpu_idle_seconds: idle,
        memory_total_bytes: kib("MemTotal:"),
        memory_available_bytes: kib("MemAvailable:"),
        load1: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0),
    }
}

pub type FrameStream =
    Pin<Box<dyn futures::Stream<Item = Result<ConsoleFrame, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for EchoConsole {
    type ConsoleStream = FrameStream;
    type PodLogsStream = pods::LogStream;
    type PodExecStream = pods::ExecStream;

    async fn pod_logs(
        &self,
        req: tonic::Request<mvirt_api::proto::PodLogsRequest>,
    ) -> Result<tonic::Response<pods::LogStream>, tonic::Status> {
        pods::logs(&self.secret, req).await
    }

    async fn pod_exec(
        &self,
        req: tonic::Request<tonic::Streaming<mvirt_api::proto::PodExecInput>>,
    ) -> Result<tonic::Response<pods::ExecStream>, tonic::Status> {
        pods::exec(&self.secret, req).await
    }

    async fn get_stats(
        &self,
        req: tonic::Request<mvirt_api::proto::GetStatsRequest>,
    ) -> Result<tonic::Response<mvirt_api::proto::NodeStats>, tonic::Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth != format!("Bearer {}", self.secret) {
            return Err(tonic::Status::unauthenticated("bad node secret"));
        }
        let wanted = req.into_inner().vm_ids;
        let guests = self.guests.lock().unwrap().clone();
        let vms = guests
            .iter()
            .filter(|(id, _)| wanted.is_empty() || wanted.contains(id))
            .filter_map(|(id, pid)| proc_usage(id, *pid))
            .collect();
        let sampled_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        Ok(tonic::Response::new(proto::NodeStats {
            node_id: String::new(),
            sampled_at_ms,
            host: Some(host_usage()),
            vms,
            pods: vec![],
        }))
    }

    async fn get_host(
        &self,
        _: tonic::Request<mvirt_api::proto::GetHostRequest>,
    ) -> Result<tonic::Response<mvirt_api::proto::HostInfo>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the CLI tests' console double has no host",
        ))
    }

    async fn console(
        &self,
        req: tonic::Request<tonic::Streaming<ConsoleFrame>>,
    ) -> Result<tonic::Response<FrameStream>, tonic::Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if auth != format!("Bearer {}", self.secret) {
            return Err(tonic::Status::unauthenticated("bad console secret"));
        }
        let mut input = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(ConsoleFrame {
                    vm_id: String::new(),
                    data: b"guest login: ".to_vec(),
                }))
                .await;
            while let Ok(Some(frame)) = input.message().await {
                if frame.data.is_empty() {
                    continue;
                }
                let echoed = frame.data.to_ascii_uppercase();
                if tx
                    .send(Ok(ConsoleFrame {
                        vm_id: frame.vm_id,
                        data: echoed,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Serves [`EchoConsole`] on a free loopback port as a node agent does: TLS with a node
/// certificate of this cluster's CA, a client certificate of the CA required (the API dials
/// with its member certificate). Returns its `https://` endpoint and the server task.
pub async fn start_echo_console(
    api: &Api,
    secret: &str,
) -> (
    String,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    start_echo_console_with(api, secret, Guests::default()).await
}

/// [`start_echo_console`] whose `GetStats` reports the processes in `guests` as VMs.
pub async fn start_echo_console_with(
    api: &Api,
    secret: &str,
    guests: Guests,
) -> (
    String,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    use mvirt_common::tls;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let echo = NodeAgentServer::new(EchoConsole {
        secret: secret.to_string(),
        guests,
    });
    if !api.tls {
        let server = tonic::transport::Server::builder()
            .add_service(echo)
            .serve_with_incoming(tls::TlsIncoming::new(listener, None));
        return (format!("http://{addr}"), tokio::spawn(server));
    }
    let ca =
        tls::ClusterCa::load(&api.dir.path().join("api").join("tls")).expect("the member's CA");
    let issued = ca
        .issue(
            tls::PeerIdentity::Node("echo-console".into()),
            &["127.0.0.1".into()],
            std::time::Duration::from_secs(3600),
        )
        .expect("issue the console's certificate");
    let store = tls::CertStore::from_issued(&issued).expect("certificate store");
    let config = tls::server_config(&store, tls::ClientAuth::Required(api.ca_pem.clone()))
        .expect("server TLS config");
    let server = tonic::transport::Server::builder()
        .add_service(echo)
        .serve_with_incoming(tls::TlsIncoming::new(listener, Some(config)));
    (format!("https://{addr}"), tokio::spawn(server))
}
