//! OneService: translates between proto messages and the runtime's domain types, and maps
//! errors to gRPC statuses. No work happens here.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use mvirt_common::Shutdown;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::cgroup::Limits;
use crate::image::Credentials;
use crate::logs;
use crate::proto;
use crate::proto::one_service_server::OneService;
use crate::runtime::{
    ContainerSpec, ContainerState, ContainerStatus, ExecInput, ExecOutput, ExecRequest, PodPhase,
    PodSpec, PodStatus, PortSpec, RestartPolicy, Runtime, RuntimeError, DEFAULT_STOP_TIMEOUT,
};

/// Whether this instance is PID 1 of a microVM or a local development/test instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Init,
    Local,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Init => "init",
            Mode::Local => "local",
        }
    }
}

pub struct OneServiceImpl {
    runtime: Arc<Runtime>,
    mode: Mode,
    started: Instant,
    ready_after_boot_ms: u64,
    /// Fired by `Shutdown` once the pods are stopped; the server then drains and exits.
    shutdown: Shutdown,
}

impl OneServiceImpl {
    pub fn new(runtime: Arc<Runtime>, mode: Mode, shutdown: Shutdown) -> Self {
        Self {
            runtime,
            mode,
            started: Instant::now(),
            ready_after_boot_ms: crate::init::kernel_uptime_ms(),
            shutdown,
        }
    }
}

/// Resident set size of this process (`VmRSS` in `/proc/self/status`).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn status_from(err: RuntimeError) -> Status {
    if err.is_digest_mismatch() {
        let message = mvirt_common::error::error_chain(&err);
        tracing::error!(error = %message, "image digest mismatch");
        return Status::data_loss(message);
    }
    mvirt_common::error::to_status(&err)
}

fn timeout_from(seconds: u32) -> Duration {
    if seconds == 0 {
        DEFAULT_STOP_TIMEOUT
    } else {
        Duration::from_secs(seconds.into())
    }
}

fn restart_policy_from(value: i32) -> Result<RestartPolicy, Status> {
    match proto::RestartPolicy::try_from(value) {
        Ok(proto::RestartPolicy::Never) => Ok(RestartPolicy::Never),
        Ok(proto::RestartPolicy::OnFailure) => Ok(RestartPolicy::OnFailure),
        Ok(proto::RestartPolicy::Always | proto::RestartPolicy::Unspecified) => {
            Ok(RestartPolicy::Always)
        }
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown restart policy {value}"
        ))),
    }
}

fn container_spec_from(c: proto::ContainerSpec) -> Result<ContainerSpec, Status> {
    let credentials = match c.registry_auth {
        Some(a) if !a.username.is_empty() => Credentials::Basic {
            username: a.username,
            password: a.password,
        },
        Some(a) if !a.token.is_empty() => Credentials::Bearer(a.token),
        _ => Credentials::Anonymous,
    };
    let ports = c
        .ports
        .into_iter()
        .map(|p| {
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    Status::invalid_argument(format!("invalid port {}", p.container_port))
                })?;
            let protocol = match p.protocol.to_ascii_uppercase().as_str() {
                "" | "TCP" => "TCP",
                "UDP" => "UDP",
                other => {
                    return Err(Status::invalid_argument(format!(
                        "invalid port protocol {other:?}"
                    )))
                }
            };
            Ok(PortSpec {
                name: p.name,
                container_port: port,
                protocol: protocol.to_string(),
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(ContainerSpec {
        restart_policy: restart_policy_from(c.restart_policy)?,
        name: c.name,
        image: c.image,
        command: c.command,
        args: c.args,
        env: c.env.into_iter().collect(),
        working_dir: c.working_dir,
        ports,
        credentials,
        user: c.user,
        limits: Limits {
            cpu_millicores: c.cpu_millicores,
            memory_bytes: c.memory_limit_bytes,
            pids: c.pids_limit,
        },
    })
}

fn container_status_to(s: ContainerStatus) -> proto::ContainerStatus {
    proto::ContainerStatus {
        name: s.name,
        image: s.image,
        image_digest: s.image_digest,
        state: match s.state {
            ContainerState::Created => proto::ContainerState::Created,
            ContainerState::Running => proto::ContainerState::Running,
            ContainerState::Exited => proto::ContainerState::Exited,
        } as i32,
        pid: s.pid,
        exit_code: s.exit_code,
        restart_count: s.restart_count,
        restarting: s.restarting,
        started_at_ns: s.started_at_ns,
        finished_at_ns: s.finished_at_ns,
        message: s.message,
        oom_killed: s.oom_killed,
    }
}

fn pod_to(p: PodStatus) -> proto::Pod {
    proto::Pod {
        id: p.id,
        hostname: p.hostname,
        phase: match p.phase {
            PodPhase::Created => proto::PodPhase::Created,
            PodPhase::Running => proto::PodPhase::Running,
            PodPhase::Succeeded => proto::PodPhase::Succeeded,
            PodPhase::Failed => proto::PodPhase::Failed,
            PodPhase::Stopped => proto::PodPhase::Stopped,
        } as i32,
        containers: p.containers.into_iter().map(container_status_to).collect(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A follower stops once the container exited and will not restart (a container not started
/// yet is waited for).
fn terminal(status: &ContainerStatus) -> bool {
    status.state == ContainerState::Exited && !status.restarting
}

#[tonic::async_trait]
impl OneService for OneServiceImpl {
    async fn create_pod(
        &self,
        request: Request<proto::CreatePodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let r = request.into_inner();
        tracing::info!(pod = %r.id, containers = r.containers.len(), "CreatePod received");
        let containers = r
            .containers
            .into_iter()
            .map(container_spec_from)
            .collect::<Result<Vec<_>, _>>()?;
        let spec = PodSpec {
            id: r.id,
            hostname: r.hostname,
            containers,
        };
        let pod = self.runtime.create_pod(spec).await.map_err(status_from)?;
        Ok(Response::new(pod_to(pod)))
    }

    async fn start_pod(
        &self,
        request: Request<proto::StartPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let pod = self
            .runtime
            .start_pod(&request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pod_to(pod)))
    }

    async fn stop_pod(
        &self,
        request: Request<proto::StopPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let r = request.into_inner();
        let pod = self
            .runtime
            .stop_pod(&r.id, timeout_from(r.timeout_seconds))
            .await
            .map_err(status_from)?;
        Ok(Response::new(pod_to(pod)))
    }

    async fn delete_pod(
        &self,
        request: Request<proto::DeletePodRequest>,
    ) -> Result<Response<proto::DeletePodResponse>, Status> {
        let r = request.into_inner();
        self.runtime
            .delete_pod(&r.id, timeout_from(r.timeout_seconds))
            .await
            .map_err(status_from)?;
        Ok(Response::new(proto::DeletePodResponse {}))
    }

    async fn get_pod(
        &self,
        request: Request<proto::GetPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let pod = self
            .runtime
            .get_pod(&request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pod_to(pod)))
    }

    async fn list_pods(
        &self,
        _request: Request<proto::ListPodsRequest>,
    ) -> Result<Response<proto::ListPodsResponse>, Status> {
        let pods = self.runtime.list_pods().await;
        Ok(Response::new(proto::ListPodsResponse {
            pods: pods.into_iter().map(pod_to).collect(),
        }))
    }

    type LogsStream = BoxStream<proto::LogEntry>;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        let (log, mut status) = self
            .runtime
            .log_source(&r.pod_id, &r.container)
            .await
            .map_err(status_from)?;
        let mut written = log.subscribe();
        let path = log.path().to_path_buf();
        let (records, mut offset) = logs::read_records(&path, 0)
            .map_err(|e| Status::internal(format!("cannot read log: {e}")))?;
        let skip = if r.tail == 0 {
            0
        } else {
            records.len().saturating_sub(r.tail as usize)
        };
        let timestamps = r.timestamps;
        let to_entry = move |rec: logs::LogRecord| proto::LogEntry {
            timestamp_ns: if timestamps { rec.timestamp_ns } else { 0 },
            stream: rec.stream,
            line: rec.content,
        };
        let follow = r.follow;
        let stream = async_stream::stream! {
            for rec in records.into_iter().skip(skip) {
                yield Ok(to_entry(rec));
            }
            if !follow {
                return;
            }
            loop {
                written.borrow_and_update();
                let done = terminal(&status.borrow_and_update());
                match logs::read_records(&path, offset) {
                    Ok((records, next)) => {
                        offset = next;
                        for rec in records {
                            yield Ok(to_entry(rec));
                        }
                    }
                    Err(e) => {
                        yield Err(Status::internal(format!("cannot read log: {e}")));
                        return;
                    }
                }
                // The supervisor marks a container exited only after its output is captured.
                if done {
                    return;
                }
                tokio::select! {
                    changed = written.changed() => if changed.is_err() { return; },
                    changed = status.changed() => if changed.is_err() { return; },
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    type ExecStream = BoxStream<proto::ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<proto::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("exec stream ended before start"))?;
        let Some(proto::exec_input::Input::Start(start)) = first.input else {
            return Err(Status::invalid_argument(
                "the first exec message must be start",
            ));
        };
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let exec = ExecRequest {
            pod_id: start.pod_id,
            container: start.container,
            command: start.command,
            tty: start.tty,
            env: start.env.into_iter().collect::<BTreeMap<_, _>>(),
            working_dir: start.working_dir,
            rows: clamp(start.rows),
            cols: clamp(start.cols),
        };
        let tty = exec.tty;
        let (in_tx, mut out_rx) = self.runtime.exec(exec).await.map_err(status_from)?;
        tokio::spawn(async move {
            while let Some(Ok(message)) = input.next().await {
                let forwarded = match message.input {
                    Some(proto::exec_input::Input::Stdin(bytes)) => ExecInput::Stdin(bytes),
                    Some(proto::exec_input::Input::Resize(size)) => ExecInput::Resize {
                        rows: clamp(size.rows),
                        cols: clamp(size.cols),
                    },
                    Some(proto::exec_input::Input::CloseStdin(true)) => ExecInput::CloseStdin,
                    _ => continue,
                };
                if in_tx.send(forwarded).await.is_err() {
                    return;
                }
            }
            // The client closed its side: without a TTY that is the command's EOF.
            if !tty {
                let _ = in_tx.send(ExecInput::CloseStdin).await;
            }
        });
        let stream = async_stream::stream! {
            while let Some(output) = out_rx.recv().await {
                let output = match output {
                    ExecOutput::Stdout(b) => proto::exec_output::Output::Stdout(b),
                    ExecOutput::Stderr(b) => proto::exec_output::Output::Stderr(b),
                    ExecOutput::Exit(code) => proto::exec_output::Output::ExitCode(code),
                };
                yield Ok(proto::ExecOutput { output: Some(output) });
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn shutdown(
        &self,
        request: Request<proto::ShutdownRequest>,
    ) -> Result<Response<proto::ShutdownResponse>, Status> {
        let timeout = timeout_from(request.into_inner().timeout_seconds);
        tracing::info!(
            mode = self.mode.as_str(),
            "shutdown requested: stopping pods"
        );
        self.runtime.stop_all(timeout).await;
        self.shutdown.trigger();
        Ok(Response::new(proto::ShutdownResponse {}))
    }

    async fn health(
        &self,
        _request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        Ok(Response::new(proto::HealthResponse {
            ready: true,
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: self.mode.as_str().to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            pods: self.runtime.pod_count().await as u32,
            ready_after_boot_ms: self.ready_after_boot_ms,
            rss_bytes: rss_bytes(),
            init_after_boot_ms: crate::init::init_after_boot_ms(),
        }))
    }

    async fn get_network_info(
        &self,
        _request: Request<proto::GetNetworkInfoRequest>,
    ) -> Result<Response<proto::NetworkInfo>, Status> {
        let info = crate::netinfo::collect()
            .map_err(|e| Status::internal(format!("cannot read interfaces: {e}")))?;
        Ok(Response::new(info))
    }
}
