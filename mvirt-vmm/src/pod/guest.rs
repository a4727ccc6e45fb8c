//! Talking to mvirt-one inside a pod microVM: the readiness handshake (mvirt-one connects to
//! host vsock port [`READY_PORT`](super::READY_PORT), which arrives on the run directory's
//! `vsock.sock_<port>`, and writes `READY\n`), OneService over the hybrid vsock socket, and the
//! translation between pod specs/status and mvirt-one's messages. Connections are made per call:
//! nothing is lost when mvirt-vmm restarts, and an adopted pod is reached the same way.

use std::path::Path;
use std::time::Duration;

use mvirt_one::client::{connect_hybrid_vsock, ONE_VSOCK_PORT, READY_MESSAGE};
use mvirt_one::proto as one;
use mvirt_one::proto::one_service_client::OneServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tonic::transport::Channel;

use super::model::{
    ContainerSpec, ContainerState, ContainerStatus, PodInterface, PodSpec, RestartPolicy,
};

/// How long a status read may take before the stored status is shown instead.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for one readiness connection on `listener` that says `READY`.
pub async fn wait_ready(listener: &UnixListener) -> std::io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut message = Vec::new();
        // mvirt-one writes the message and closes; a few bytes at most.
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            (&mut stream)
                .take(READY_MESSAGE.len() as u64)
                .read_to_end(&mut message),
        )
        .await;
        if matches!(read, Ok(Ok(_))) && message == READY_MESSAGE {
            return Ok(());
        }
        tracing::warn!(
            ?message,
            "unexpected message on the pod readiness connection"
        );
    }
}

/// A OneService client of the guest behind `vsock_socket`.
pub async fn connect(vsock_socket: &Path) -> Result<OneServiceClient<Channel>, String> {
    connect_hybrid_vsock(vsock_socket.to_path_buf(), ONE_VSOCK_PORT)
        .await
        .map_err(|e| mvirt_common::error::error_chain(&e))
}

fn restart_policy(policy: RestartPolicy) -> one::RestartPolicy {
    match policy {
        RestartPolicy::Always => one::RestartPolicy::Always,
        RestartPolicy::OnFailure => one::RestartPolicy::OnFailure,
        RestartPolicy::Never => one::RestartPolicy::Never,
    }
}

fn container_to_one(c: &ContainerSpec) -> one::ContainerSpec {
    one::ContainerSpec {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env: c.env.clone().into_iter().collect(),
        working_dir: c.working_dir.clone(),
        ports: c
            .ports
            .iter()
            .map(|p| one::ContainerPort {
                name: p.name.clone(),
                container_port: p.container_port,
                protocol: p.protocol.clone(),
            })
            .collect(),
        restart_policy: restart_policy(c.restart_policy) as i32,
        registry_auth: c.registry_auth.as_ref().map(|a| one::RegistryAuth {
            username: a.username.clone(),
            password: a.password.clone(),
            token: a.token.clone(),
        }),
        user: c.user.clone(),
        cpu_millicores: c.cpu_millicores,
        memory_limit_bytes: c.memory_limit_bytes,
        pids_limit: c.pids_limit,
    }
}

/// mvirt-one's CreatePod for a pod.
pub fn create_request(id: &str, spec: &PodSpec) -> one::CreatePodRequest {
    one::CreatePodRequest {
        id: id.to_string(),
        hostname: spec.effective_hostname(),
        containers: spec.containers.iter().map(container_to_one).collect(),
    }
}

pub fn container_status(s: one::ContainerStatus) -> ContainerStatus {
    let state = match one::ContainerState::try_from(s.state) {
        Ok(one::ContainerState::Created) => ContainerState::Created,
        Ok(one::ContainerState::Running) => ContainerState::Running,
        Ok(one::ContainerState::Exited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    };
    ContainerStatus {
        name: s.name,
        image: s.image,
        image_digest: s.image_digest,
        state,
        exit_code: s.exit_code,
        restart_count: s.restart_count,
        restarting: s.restarting,
        oom_killed: s.oom_killed,
        message: s.message,
        started_at_ns: s.started_at_ns,
        finished_at_ns: s.finished_at_ns,
    }
}

/// Whether every container of mvirt-one's answer was launched: its process runs, already
/// exited, or could not be started (`exited` with the reason) — none is still `created`.
pub fn launched(pod: &one::Pod) -> bool {
    pod.containers.iter().all(|c| {
        matches!(
            one::ContainerState::try_from(c.state),
            Ok(one::ContainerState::Running | one::ContainerState::Exited)
        )
    })
}

pub fn interfaces(info: one::NetworkInfo) -> Vec<PodInterface> {
    info.interfaces
        .into_iter()
        .filter(|i| i.name != "lo")
        .map(|i| PodInterface {
            name: i.name,
            mac: i.mac,
            addresses: i.addresses,
        })
        .collect()
}

/// The pod's container status and interfaces as mvirt-one reports them now.
pub async fn read_status(
    client: &mut OneServiceClient<Channel>,
    id: &str,
) -> Result<(Vec<ContainerStatus>, Vec<PodInterface>), tonic::Status> {
    let pod = client
        .get_pod(one::GetPodRequest { id: id.to_string() })
        .await?
        .into_inner();
    let info = client
        .get_network_info(one::GetNetworkInfoRequest {})
        .await?
        .into_inner();
    Ok((
        pod.containers.into_iter().map(container_status).collect(),
        interfaces(info),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::model::RegistryAuth;

    #[test]
    fn a_container_reaches_mvirt_one_with_every_field() {
        let c = ContainerSpec {
            name: "app".into(),
            image: "r:5000/app:1".into(),
            command: vec!["sh".into()],
            args: vec!["-c".into(), "true".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            working_dir: "/w".into(),
            ports: vec![],
            restart_policy: RestartPolicy::OnFailure,
            registry_auth: Some(RegistryAuth {
                username: "u".into(),
                password: "p".into(),
                token: String::new(),
            }),
            user: "1000".into(),
            cpu_millicores: Some(500),
            memory_limit_bytes: Some(64 << 20),
            pids_limit: Some(10),
        };
        let o = container_to_one(&c);
        assert_eq!(o.restart_policy, one::RestartPolicy::OnFailure as i32);
        assert_eq!(o.registry_auth.unwrap().password, "p");
        assert_eq!(
            (o.cpu_millicores, o.memory_limit_bytes, o.pids_limit),
            (Some(500), Some(64 << 20), Some(10))
        );
        assert_eq!(o.env.get("A").map(String::as_str), Some("1"));
    }
}
