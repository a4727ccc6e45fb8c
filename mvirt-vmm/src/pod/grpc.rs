//! `PodService`: translates between proto messages and the pod domain types, and relays logs,
//! exec and the serial console. No pod logic lives here.

use std::collections::BTreeMap;

use mvirt_one::proto as one;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::grpc::{console_stream, invalid, nic_from_proto, nic_to_proto, timeout, BoxStream};
use crate::proto;
use crate::proto::pod_service_server::PodService;

use super::model::{
    ContainerPort, ContainerSpec, ContainerState, PodRecord, PodSpec, PodState, RegistryAuth,
    RestartPolicy,
};
use super::{PodEventKind, PodManager};

pub struct PodGrpc {
    pods: PodManager,
}

impl PodGrpc {
    pub fn new(pods: PodManager) -> Self {
        Self { pods }
    }
}

fn restart_policy_from_proto(value: i32) -> RestartPolicy {
    match proto::PodRestartPolicy::try_from(value) {
        Ok(proto::PodRestartPolicy::Never) => RestartPolicy::Never,
        Ok(proto::PodRestartPolicy::OnFailure) => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    }
}

fn restart_policy_to_proto(policy: RestartPolicy) -> proto::PodRestartPolicy {
    match policy {
        RestartPolicy::Always => proto::PodRestartPolicy::Always,
        RestartPolicy::OnFailure => proto::PodRestartPolicy::OnFailure,
        RestartPolicy::Never => proto::PodRestartPolicy::Never,
    }
}

fn container_from_proto(c: proto::PodContainer) -> ContainerSpec {
    ContainerSpec {
        name: c.name,
        image: c.image,
        command: c.command,
        args: c.args,
        env: c.env.into_iter().collect(),
        working_dir: c.working_dir,
        ports: c
            .ports
            .into_iter()
            .map(|p| ContainerPort {
                name: p.name,
                container_port: p.container_port,
                protocol: p.protocol,
            })
            .collect(),
        restart_policy: restart_policy_from_proto(c.restart_policy),
        registry_auth: c
            .registry_auth
            .map(|a| RegistryAuth {
                username: a.username,
                password: a.password,
                token: a.token,
            })
            .filter(|a| a != &RegistryAuth::default()),
        user: c.user,
        cpu_millicores: c.cpu_millicores,
        memory_limit_bytes: c.memory_limit_bytes,
        pids_limit: c.pids_limit,
    }
}

fn container_to_proto(c: &ContainerSpec) -> proto::PodContainer {
    proto::PodContainer {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env: c.env.clone().into_iter().collect(),
        working_dir: c.working_dir.clone(),
        ports: c
            .ports
            .iter()
            .map(|p| proto::PodContainerPort {
                name: p.name.clone(),
                container_port: p.container_port,
                protocol: p.protocol.clone(),
            })
            .collect(),
        restart_policy: restart_policy_to_proto(c.restart_policy) as i32,
        // Secrets are write-only: a read shows that credentials exist, not what they are.
        registry_auth: c.registry_auth.as_ref().map(|a| proto::PodRegistryAuth {
            username: a.username.clone(),
            password: String::new(),
            token: String::new(),
        }),
        user: c.user.clone(),
        cpu_millicores: c.cpu_millicores,
        memory_limit_bytes: c.memory_limit_bytes,
        pids_limit: c.pids_limit,
    }
}

pub fn spec_from_proto(config: proto::PodConfig) -> PodSpec {
    PodSpec {
        name: config.name,
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        nics: config.nics.into_iter().map(nic_from_proto).collect(),
        hostname: config.hostname,
        labels: config.labels.into_iter().collect(),
        containers: config
            .containers
            .into_iter()
            .map(container_from_proto)
            .collect(),
    }
}

fn spec_to_proto(spec: &PodSpec) -> proto::PodConfig {
    proto::PodConfig {
        name: spec.name.clone(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        nics: spec.nics.iter().map(nic_to_proto).collect(),
        hostname: spec.hostname.clone(),
        labels: spec.labels.clone().into_iter().collect(),
        containers: spec.containers.iter().map(container_to_proto).collect(),
    }
}

fn state_to_proto(state: PodState) -> proto::PodState {
    match state {
        PodState::Created => proto::PodState::Created,
        PodState::Starting => proto::PodState::Starting,
        PodState::Running => proto::PodState::Running,
        PodState::Stopping => proto::PodState::Stopping,
        PodState::Stopped => proto::PodState::Stopped,
        PodState::Failed => proto::PodState::Failed,
    }
}

fn container_state_to_proto(state: ContainerState) -> proto::PodContainerState {
    match state {
        ContainerState::Unknown => proto::PodContainerState::Unspecified,
        ContainerState::Created => proto::PodContainerState::Created,
        ContainerState::Running => proto::PodContainerState::Running,
        ContainerState::Exited => proto::PodContainerState::Exited,
    }
}

/// The pod as the API shows it; `pid` and `hypervisor` come from its microVM.
fn pod_to_proto(pods: &PodManager, pod: &PodRecord) -> proto::Pod {
    let vm = pods.vmm().store().get(&pod.id).ok().flatten();
    proto::Pod {
        id: pod.id.clone(),
        config: Some(spec_to_proto(&pod.spec)),
        state: state_to_proto(pod.state) as i32,
        state_reason: pod.state_reason.clone(),
        pid: vm
            .as_ref()
            .and_then(|v| v.process)
            .filter(|_| pod.state.is_active())
            .map(|p| p.pid)
            .unwrap_or(0),
        hypervisor: vm
            .map(|v| v.hypervisor)
            .unwrap_or_else(|| pods.vmm().hypervisor_name().to_string()),
        artefacts_version: pod.artefacts_version.clone(),
        containers: pod
            .containers
            .iter()
            .map(|c| proto::PodContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                image_digest: c.image_digest.clone(),
                state: container_state_to_proto(c.state) as i32,
                exit_code: c.exit_code,
                restart_count: c.restart_count,
                restarting: c.restarting,
                oom_killed: c.oom_killed,
                message: c.message.clone(),
                started_at_ns: c.started_at_ns,
                finished_at_ns: c.finished_at_ns,
            })
            .collect(),
        interfaces: pod
            .interfaces
            .iter()
            .map(|i| proto::PodInterface {
                name: i.name.clone(),
                mac: i.mac.clone(),
                addresses: i.addresses.clone(),
            })
            .collect(),
        created_at_ms: pod.created_at_ms,
        updated_at_ms: pod.updated_at_ms,
        started_at_ms: pod.started_at_ms,
    }
}

fn exec_input_to_one(input: proto::pod_exec_input::Input) -> one::exec_input::Input {
    use one::exec_input::Input as O;
    use proto::pod_exec_input::Input as P;
    match input {
        P::Start(s) => O::Start(one::ExecStart {
            pod_id: s.pod_id,
            container: s.container,
            command: s.command,
            tty: s.tty,
            env: s.env,
            working_dir: s.working_dir,
            rows: s.rows,
            cols: s.cols,
        }),
        P::Stdin(data) => O::Stdin(data),
        P::Resize(size) => O::Resize(one::TerminalSize {
            rows: size.rows,
            cols: size.cols,
        }),
        P::CloseStdin(close) => O::CloseStdin(close),
    }
}

fn exec_output_from_one(output: one::exec_output::Output) -> proto::pod_exec_output::Output {
    use one::exec_output::Output as O;
    use proto::pod_exec_output::Output as P;
    match output {
        O::Stdout(data) => P::Stdout(data),
        O::Stderr(data) => P::Stderr(data),
        O::ExitCode(code) => P::ExitCode(code),
    }
}

#[tonic::async_trait]
impl PodService for PodGrpc {
    async fn create_pod(
        &self,
        request: Request<proto::CreatePodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let req = request.into_inner();
        let config = req.config.ok_or_else(|| invalid("config is required"))?;
        let pod = self.pods.create(&req.id, spec_from_proto(config)).await?;
        Ok(Response::new(pod_to_proto(&self.pods, &pod)))
    }

    async fn get_pod(
        &self,
        request: Request<proto::GetPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let pod = self.pods.get(&request.into_inner().id).await?;
        Ok(Response::new(pod_to_proto(&self.pods, &pod)))
    }

    async fn list_pods(
        &self,
        request: Request<proto::ListPodsRequest>,
    ) -> Result<Response<proto::ListPodsResponse>, Status> {
        let selector: BTreeMap<String, String> =
            request.into_inner().label_selector.into_iter().collect();
        let pods = self.pods.list(&selector)?;
        Ok(Response::new(proto::ListPodsResponse {
            pods: pods.iter().map(|p| pod_to_proto(&self.pods, p)).collect(),
        }))
    }

    async fn start_pod(
        &self,
        request: Request<proto::StartPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let pod = self.pods.start(&request.into_inner().id).await?;
        Ok(Response::new(pod_to_proto(&self.pods, &pod)))
    }

    async fn stop_pod(
        &self,
        request: Request<proto::StopPodRequest>,
    ) -> Result<Response<proto::Pod>, Status> {
        let req = request.into_inner();
        let pod = self
            .pods
            .stop(&req.id, timeout(req.timeout_seconds))
            .await?;
        Ok(Response::new(pod_to_proto(&self.pods, &pod)))
    }

    async fn delete_pod(
        &self,
        request: Request<proto::DeletePodRequest>,
    ) -> Result<Response<proto::DeletePodResponse>, Status> {
        let req = request.into_inner();
        self.pods.delete(&req.id, req.force).await?;
        Ok(Response::new(proto::DeletePodResponse {}))
    }

    type WatchPodsStream = BoxStream<proto::PodEvent>;

    async fn watch_pods(
        &self,
        request: Request<proto::WatchPodsRequest>,
    ) -> Result<Response<Self::WatchPodsStream>, Status> {
        // Subscribe before listing so that no change falls between the two.
        let mut events = self.pods.subscribe();
        let initial = if request.into_inner().include_initial {
            self.pods.list(&BTreeMap::new())?
        } else {
            Vec::new()
        };
        let stop = self.pods.vmm().shutdown_token();
        let pods = self.pods.clone();
        let output = async_stream::stream! {
            for pod in initial {
                yield Ok(proto::PodEvent {
                    r#type: proto::PodEventType::Initial as i32,
                    pod: Some(pod_to_proto(&pods, &pod)),
                });
            }
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = events.recv() => next,
                };
                match next {
                    Ok(event) => {
                        let kind = match event.kind {
                            PodEventKind::Created => proto::PodEventType::Created,
                            PodEventKind::StateChanged => proto::PodEventType::StateChanged,
                            PodEventKind::Updated => proto::PodEventType::Updated,
                            PodEventKind::Deleted => proto::PodEventType::Deleted,
                        };
                        yield Ok(proto::PodEvent { r#type: kind as i32, pod: Some(pod_to_proto(&pods, &event.pod)) });
                    }
                    Err(RecvError::Lagged(n)) => {
                        yield Err(Status::data_loss(format!("watcher fell behind by {n} events: watch again with include_initial")));
                        break;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(output)))
    }

    type PodLogsStream = BoxStream<proto::PodLogEntry>;

    async fn pod_logs(
        &self,
        request: Request<proto::PodLogsRequest>,
    ) -> Result<Response<Self::PodLogsStream>, Status> {
        let req = request.into_inner();
        let mut client = self.pods.client(&req.pod_id, "logs").await?;
        let stream = client
            .logs(one::LogsRequest {
                pod_id: req.pod_id,
                container: req.container,
                tail: req.tail,
                follow: req.follow,
                timestamps: req.timestamps,
            })
            .await?
            .into_inner();
        let stop = self.pods.vmm().shutdown_token();
        let mut stream = stream;
        // Ends with the guest's stream, or when the daemon shuts down (a followed log would
        // otherwise hold the server open).
        let output = async_stream::stream! {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = stream.next() => next,
                };
                match next {
                    Some(entry) => yield entry.map(|e| proto::PodLogEntry {
                        timestamp_ns: e.timestamp_ns,
                        stream: e.stream,
                        line: e.line,
                    }),
                    None => break,
                }
            }
        };
        Ok(Response::new(Box::pin(output)))
    }

    type PodExecStream = BoxStream<proto::PodExecOutput>;

    async fn pod_exec(
        &self,
        request: Request<Streaming<proto::PodExecInput>>,
    ) -> Result<Response<Self::PodExecStream>, Status> {
        let mut inputs = request.into_inner();
        let first = inputs
            .next()
            .await
            .ok_or_else(|| invalid("the first exec message must be start"))??;
        let Some(proto::pod_exec_input::Input::Start(start)) = first.input else {
            return Err(invalid("the first exec message must be start"));
        };
        let mut client = self.pods.client(&start.pod_id, "exec").await?;
        let first = one::ExecInput {
            input: Some(exec_input_to_one(proto::pod_exec_input::Input::Start(
                start,
            ))),
        };
        let rest = inputs.map_while(|m| m.ok()).map(|m| one::ExecInput {
            input: m.input.map(exec_input_to_one),
        });
        let outputs = client
            .exec(tokio_stream::once(first).chain(rest))
            .await?
            .into_inner();
        let output = outputs.map(|o| {
            o.map(|o| proto::PodExecOutput {
                output: o.output.map(exec_output_from_one),
            })
        });
        Ok(Response::new(Box::pin(output)))
    }

    type PodConsoleStream = BoxStream<proto::ConsoleOutput>;

    async fn pod_console(
        &self,
        request: Request<Streaming<proto::PodConsoleInput>>,
    ) -> Result<Response<Self::PodConsoleStream>, Status> {
        let mut inputs = request.into_inner();
        let first = inputs
            .next()
            .await
            .ok_or_else(|| invalid("the first console message must name the pod"))??;
        // The pod must exist (NOT_FOUND names a pod, not a VM).
        self.pods.get_stored(&first.pod_id)?;
        let inputs = inputs.map(|m| m.map(|m| m.data));
        console_stream(self.pods.vmm(), &first.pod_id, first.data, inputs).await
    }
}
