//! The local-mode harness: mvirt-one's server started in-process against a real registry, a
//! client, and helpers to build container specs and read logs.

use std::path::PathBuf;
use std::time::Duration;

use mvirt_common::Shutdown;
use mvirt_one::grpc::Mode;
use mvirt_one::proto;
use mvirt_one::proto::one_service_client::OneServiceClient;
use mvirt_one::runtime::RuntimeConfig;
use mvirt_one::server::{self, BoundListener, DaemonConfig, Listen};
use mvirt_testsupport::process::wait_until_async;
use mvirt_testsupport::registry::Registry;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub struct Harness {
    pub registry: Registry,
    pub client: OneServiceClient<Channel>,
    pub shutdown: Shutdown,
    pub server: tokio::task::JoinHandle<()>,
    pub data: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(Registry::start()).await
    }

    pub async fn start_with(registry: Registry) -> Self {
        mvirt_testsupport::require_root();
        mvirt_common::telemetry::init_for_tests();
        let data = tempfile::Builder::new()
            .prefix("mvirt-one-test-")
            .tempdir()
            .unwrap();
        let config = DaemonConfig {
            mode: Mode::Local,
            listen: Listen::Tcp("127.0.0.1:0".parse().unwrap()),
            runtime: RuntimeConfig {
                data_dir: data.path().to_path_buf(),
                launcher: PathBuf::from(env!("CARGO_BIN_EXE_mvirt-one")),
                insecure_registries: vec![],
                resolv_conf: None,
            },
            log_endpoint: String::new(),
        };
        let listener = BoundListener::bind(&config.listen).await.unwrap();
        let BoundListener::Tcp(tcp) = &listener else {
            unreachable!()
        };
        let addr = tcp.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                server::serve(config, listener, shutdown).await.unwrap();
            }
        });
        let client = OneServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            registry,
            client,
            shutdown,
            server,
            data,
        }
    }

    pub fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:latest", self.registry.host())
    }

    pub async fn create(&mut self, containers: Vec<proto::ContainerSpec>) -> proto::Pod {
        let id = uuid();
        self.client
            .create_pod(proto::CreatePodRequest {
                id: id.clone(),
                hostname: "testpod".into(),
                containers,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// StartPod's answer.
    pub async fn start_pod(&mut self, id: &str) -> proto::Pod {
        self.client
            .start_pod(proto::StartPodRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn pod(&mut self, id: &str) -> proto::Pod {
        self.client
            .get_pod(proto::GetPodRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn wait_container(
        &mut self,
        id: &str,
        what: &str,
        check: impl Fn(&proto::ContainerStatus) -> bool,
    ) -> proto::ContainerStatus {
        let mut client = self.client.clone();
        wait_until_async(what, Duration::from_secs(60), || {
            let id = id.to_string();
            let mut client = client.clone();
            let check = &check;
            async move {
                let pod = client
                    .get_pod(proto::GetPodRequest { id })
                    .await
                    .ok()?
                    .into_inner();
                pod.containers.into_iter().find(|c| check(c))
            }
        })
        .await;
        let _ = &mut client;
        let pod = self.pod(id).await;
        pod.containers.into_iter().find(|c| check(c)).unwrap()
    }

    pub async fn logs(&mut self, id: &str, container: &str, tail: u32) -> Vec<proto::LogEntry> {
        let mut stream = self
            .client
            .logs(proto::LogsRequest {
                pod_id: id.into(),
                container: container.into(),
                tail,
                follow: false,
                timestamps: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(entry) = stream.next().await {
            out.push(entry.unwrap());
        }
        out
    }

    pub async fn exec(
        &mut self,
        id: &str,
        container: &str,
        command: &[&str],
        tty: bool,
        input: Vec<proto::exec_input::Input>,
    ) -> Result<(Vec<u8>, Vec<u8>, i32), tonic::Status> {
        let mut messages = vec![proto::ExecInput {
            input: Some(proto::exec_input::Input::Start(proto::ExecStart {
                pod_id: id.into(),
                container: container.into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                tty,
                rows: 24,
                cols: 80,
                ..Default::default()
            })),
        }];
        messages.extend(
            input
                .into_iter()
                .map(|i| proto::ExecInput { input: Some(i) }),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for m in messages {
            tx.send(m).await.unwrap();
        }
        // Keep the request stream open with a TTY (closing it is not EOF there).
        let keep = if tty { Some(tx) } else { None };
        let mut stream = self
            .client
            .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
        while let Some(message) = stream.next().await {
            match message?.output {
                Some(proto::exec_output::Output::Stdout(b)) => out.extend(b),
                Some(proto::exec_output::Output::Stderr(b)) => err.extend(b),
                Some(proto::exec_output::Output::ExitCode(c)) => code = Some(c),
                None => {}
            }
        }
        drop(keep);
        Ok((out, err, code.expect("exec stream ends with an exit code")))
    }

    pub async fn stop(mut self) {
        let pods = self
            .client
            .list_pods(proto::ListPodsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pods;
        for pod in pods {
            let _ = self
                .client
                .delete_pod(proto::DeletePodRequest {
                    id: pod.id,
                    timeout_seconds: 1,
                })
                .await;
        }
        self.shutdown.trigger();
        let _ = self.server.await;
        drop(self.data);
    }
}

pub fn uuid() -> String {
    let n: u128 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        ^ ((std::process::id() as u128) << 64)
        ^ (rand_u64() as u128);
    let h = format!("{:032x}", n);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    N.fetch_add(0x1234_5678_9abc_def1, Ordering::Relaxed)
        .wrapping_mul(6364136223846793005)
}

pub fn sh(
    name: &str,
    image: &str,
    script: &str,
    policy: proto::RestartPolicy,
) -> proto::ContainerSpec {
    proto::ContainerSpec {
        name: name.into(),
        image: image.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        restart_policy: policy as i32,
        ..Default::default()
    }
}

pub fn text(entries: &[proto::LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.line).to_string())
        .collect()
}

pub const EXITED: i32 = proto::ContainerState::Exited as i32;
pub const RUNNING: i32 = proto::ContainerState::Running as i32;
