//! The pods placed on the node (with their registry credentials: the node needs the secrets to
//! pull; they travel only here, never through REST or events).

use std::collections::BTreeSet;

use super::Desired;
use crate::model::{
    ContainerState, ContainerStatus, DesiredState, Pod, PodContainer, RestartPolicy, StopMode,
};
use crate::proto;

/// The node's pods, and their ids.
pub(super) fn pods(cx: &mut Desired) -> (Vec<proto::PodSpec>, BTreeSet<String>) {
    let (state, node_id) = (cx.state, cx.node_id);
    let mut ids = BTreeSet::new();
    let mut pods = Vec::new();
    for pod in state
        .pods
        .values()
        .filter(|p| p.node_id.as_deref() == Some(node_id))
    {
        cx.bump(pod.meta.spec_revision);
        ids.insert(pod.meta.id.clone());
        pods.push(pod_spec(cx, pod));
    }
    (pods, ids)
}

fn pod_spec(cx: &Desired, pod: &Pod) -> proto::PodSpec {
    proto::PodSpec {
        id: pod.meta.id.clone(),
        trace_id: pod.meta.trace_id.clone().unwrap_or_default(),
        name: pod.meta.name.clone(),
        project_id: cx.project_id(&pod.meta.project),
        vcpus: pod.spec.vcpus,
        memory_bytes: pod.spec.memory_bytes,
        hostname: pod
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| pod.meta.name.clone()),
        containers: pod.spec.containers.iter().map(container_spec).collect(),
        nic_ids: pod.spec.nic_ids.clone(),
        desired_state: match pod.spec.desired_state {
            DesiredState::Stopped => proto::DesiredState::Stopped as i32,
            DesiredState::Running => proto::DesiredState::Running as i32,
        },
        restart_generation: pod.restart_generation,
        registry_credentials: pod
            .spec
            .registry_credentials
            .iter()
            .map(|c| proto::RegistryCredential {
                registry: c.registry.clone(),
                username: c.username.clone().unwrap_or_default(),
                password: c.password.clone().unwrap_or_default(),
                token: c.token.clone().unwrap_or_default(),
            })
            .collect(),
        stop_mode: match pod.stop_mode {
            StopMode::Force => proto::StopMode::Force as i32,
            StopMode::Graceful => proto::StopMode::Graceful as i32,
        },
        labels: pod.meta.labels.clone().into_iter().collect(),
    }
}

fn container_spec(c: &PodContainer) -> proto::PodContainerSpec {
    proto::PodContainerSpec {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env: c.env.clone().into_iter().collect(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        cpu_millis: c.cpu_millis,
        memory_bytes: c.memory_bytes,
        restart_policy: match c.restart_policy {
            RestartPolicy::Always => proto::PodRestartPolicy::Always as i32,
            RestartPolicy::OnFailure => proto::PodRestartPolicy::OnFailure as i32,
            RestartPolicy::Never => proto::PodRestartPolicy::Never as i32,
        },
        ports: c
            .ports
            .iter()
            .map(|p| proto::PodContainerPort {
                name: p.name.clone().unwrap_or_default(),
                container_port: u32::from(p.container_port),
                protocol: p.protocol.as_str().to_string(),
            })
            .collect(),
    }
}

/// A container's status as the node reports it, in the model's form (strings bounded).
pub fn container_status(c: proto::PodContainerStatus) -> ContainerStatus {
    fn time(ms: i64) -> Option<String> {
        (ms > 0)
            .then(|| chrono::DateTime::from_timestamp_millis(ms))
            .flatten()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
    let state = match proto::PodContainerState::try_from(c.state)
        .unwrap_or(proto::PodContainerState::Unspecified)
    {
        proto::PodContainerState::Created => ContainerState::Created,
        proto::PodContainerState::Running => ContainerState::Running,
        proto::PodContainerState::Exited => ContainerState::Exited,
        proto::PodContainerState::Waiting | proto::PodContainerState::Unspecified => {
            ContainerState::Waiting
        }
    };
    ContainerStatus {
        name: c.name.chars().take(63).collect(),
        image: c.image.chars().take(255).collect(),
        image_digest: c.image_digest.chars().take(255).collect(),
        state,
        exit_code: (state == ContainerState::Exited).then_some(c.exit_code),
        restart_count: c.restart_count,
        oom_killed: c.oom_killed,
        message: c.message.chars().take(4096).collect(),
        started_at: time(c.started_at_ms),
        finished_at: time(c.finished_at_ms),
    }
}
