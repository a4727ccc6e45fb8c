//! Pods in mvirt-vmm's PodService: created (with the API's id) once their NICs exist — until
//! then `pending` with what they wait for —, then started, stopped and restarted as the spec
//! asks. A pod's phase is its microVM's state, its containers' states are mvirt-one's, its
//! addresses are those the guest's interfaces carry (mvirt-one's DHCP client against
//! mvirt-ebpf).
//!
//! `StartPod` answers only once the containers run (a boot under TCG and the image pulls take
//! tens of seconds), so starts, stops and restarts run in the background and passes leave the
//! pod alone until they end. A pod whose start failed (a registry refused the pull, the microVM
//! died) is started again after a back-off (30 s, doubling up to 10 min) while its desired state
//! is `running`; a new `restart_generation` retries at once.
//!
//! Registry credentials reach mvirt-vmm in the container specs (`registry_auth` of each container
//! whose image is on the credential's registry) and are never logged: nothing here formats a
//! request or a spec.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::daemons::DaemonChannel;
use tonic::{Code, Status};

use mvirt_api::proto as api;
use mvirt_api::proto::{Phase, ResourceStatus};
use mvirt_ebpf::proto as net;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::pod_service_client::PodServiceClient;

use super::{
    by_id, deleted, Context, Converging, Failure, Outcome, Reconciler, MANAGED_BY_LABEL, NODE_LABEL,
};
use crate::devices;
use crate::ledger::Kind;

const MIB: u64 = 1024 * 1024;
/// The first wait before a failed pod is started again; doubled per failure.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(600);

/// What outlives a pass: pods with a start/stop/restart running in the background, and the
/// failed starts with their back-off.
#[derive(Default)]
pub struct Operations {
    inner: Arc<Mutex<OpsState>>,
}

#[derive(Default)]
struct OpsState {
    busy: HashSet<String>,
    /// Failed starts in a row and when the last one ended, by pod id.
    failures: HashMap<String, (u32, Instant)>,
}

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpsState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When a failed pod may be started again; `None`: now.
    fn retry_at(&self, id: &str) -> Option<Instant> {
        let (failures, at) = *self.lock().failures.get(id)?;
        Some(at + backoff(failures))
    }
}

/// The wait after `failures` failed starts in a row.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(10);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY)
}

pub struct PodReconciler<'a> {
    cx: &'a Context,
    ops: &'a Operations,
    nics: &'a HashMap<String, net::Nic>,
}

impl<'a> PodReconciler<'a> {
    pub fn new(cx: &'a Context, ops: &'a Operations, nics: &'a HashMap<String, net::Nic>) -> Self {
        Self { cx, ops, nics }
    }
}

impl Context {
    fn pods(&self) -> PodServiceClient<DaemonChannel> {
        self.daemons.pods.clone()
    }

    /// The pods mvirt-vmm has.
    pub(super) async fn pods_here(&self) -> Result<Vec<vmm::Pod>, Status> {
        let listed = self
            .pods()
            .list_pods(vmm::ListPodsRequest::default())
            .await?;
        Ok(listed.into_inner().pods)
    }
}

/// The NIC ids pods here still use (their TAPs must outlive the microVM).
pub fn nics_in_use(pods: &[vmm::Pod]) -> HashSet<String> {
    pods.iter()
        .filter_map(|p| p.config.as_ref())
        .flat_map(|c| c.nics.iter().map(|n| n.id.clone()))
        .collect()
}

impl Reconciler for PodReconciler<'_> {
    const KIND: Kind = Kind::Pod;
    type Desired = api::PodSpec;
    type Observed = HashMap<String, vmm::Pod>;
    type Converged = vmm::Pod;

    async fn observe(&self) -> Result<Self::Observed, Status> {
        Ok(by_id(self.cx.pods_here().await?, |p| &p.id))
    }

    async fn converge(&self, want: &Self::Desired, seen: &Self::Observed) -> Converging<vmm::Pod> {
        let mut client = self.cx.pods();
        let mut pod = match seen.get(&want.id) {
            Some(pod) => pod.clone(),
            None => {
                let config = match pod_config(want, self.nics, &self.cx.settings.node_id) {
                    Ok(config) => config,
                    Err(waiting) => return Ok(Outcome::Pending(waiting)),
                };
                let request = vmm::CreatePodRequest {
                    id: want.id.clone(),
                    config: Some(config),
                };
                let call = client.create_pod(request);
                match self.cx.create(Kind::Pod, "pod", &want.id, call).await? {
                    Ok(pod) => pod,
                    Err(error) => {
                        return Ok(Outcome::Failed(Failure::Call {
                            what: "create pod",
                            error,
                        }))
                    }
                }
            }
        };
        // ListPods shows the container states stored at the last refresh; GetPod asks mvirt-one.
        if state(&pod) == vmm::PodState::Running && !self.ops.lock().busy.contains(&want.id) {
            if let Ok(fresh) = client
                .get_pod(vmm::GetPodRequest {
                    id: want.id.clone(),
                })
                .await
            {
                pod = fresh.into_inner();
            }
        }
        converge_power(self.cx, self.ops, want, &pod);
        Ok(Outcome::Ready(pod))
    }

    fn report(&self, want: &api::PodSpec, pod: &vmm::Pod, status: &mut ResourceStatus) {
        let desired = api::DesiredState::try_from(want.desired_state).unwrap_or_default();
        status.phase = phase(state(pod), desired) as i32;
        status.message = pod.state_reason.clone();
        let (v4, v6) = addresses(&pod.interfaces);
        status.ipv4_addresses = v4;
        status.ipv6_addresses = v6;
        status.containers = pod.containers.iter().map(container_status).collect();
        status.artefacts_version = pod.artefacts_version.clone();
        status
            .fields
            .insert("hypervisor".into(), pod.hypervisor.clone());
        if pod.pid != 0 {
            status.fields.insert("pid".into(), pod.pid.to_string());
        }
        if state(pod) == vmm::PodState::Failed {
            if let Some(at) = self.ops.retry_at(&want.id) {
                let secs = at.saturating_duration_since(Instant::now()).as_secs();
                status.conditions.push(api::Condition {
                    r#type: "start_backoff".into(),
                    status: "true".into(),
                    message: format!("starting again in {secs}s"),
                });
            }
        }
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        // Its owner asked for deletion: a forced delete stops the microVM hard, then removes it,
        // its vsock backend, run directory and record. The NICs go with the NIC reconciler.
        let request = vmm::DeletePodRequest {
            id: id.to_string(),
            force: true,
        };
        deleted(cx.pods().delete_pod(request).await)
    }
}

fn state(pod: &vmm::Pod) -> vmm::PodState {
    vmm::PodState::try_from(pod.state).unwrap_or_default()
}

/// A pod's phase: its microVM's state (a pod recorded but never started is `creating` when it is
/// to run, `stopped` otherwise).
fn phase(state: vmm::PodState, desired: api::DesiredState) -> Phase {
    match state {
        vmm::PodState::Created if desired == api::DesiredState::Stopped => Phase::Stopped,
        vmm::PodState::Created | vmm::PodState::Starting => Phase::Creating,
        vmm::PodState::Running => Phase::Running,
        vmm::PodState::Stopping => Phase::Stopping,
        vmm::PodState::Stopped => Phase::Stopped,
        vmm::PodState::Failed => Phase::Failed,
        vmm::PodState::Unspecified => Phase::Pending,
    }
}

fn container_status(c: &vmm::PodContainerStatus) -> api::PodContainerStatus {
    let state = match vmm::PodContainerState::try_from(c.state).unwrap_or_default() {
        _ if c.restarting => api::PodContainerState::Waiting,
        vmm::PodContainerState::Created => api::PodContainerState::Created,
        vmm::PodContainerState::Running => api::PodContainerState::Running,
        vmm::PodContainerState::Exited => api::PodContainerState::Exited,
        vmm::PodContainerState::Unspecified => api::PodContainerState::Waiting,
    };
    api::PodContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_digest: c.image_digest.clone(),
        state: state as i32,
        exit_code: c.exit_code,
        restart_count: c.restart_count,
        oom_killed: c.oom_killed,
        message: c.message.clone(),
        started_at_ms: c.started_at_ns / 1_000_000,
        finished_at_ms: c.finished_at_ns / 1_000_000,
    }
}

/// The guest's addresses (CIDR notation from mvirt-one) without prefix lengths, IPv4 and IPv6;
/// loopback and link-local ones are left out.
fn addresses(interfaces: &[vmm::PodInterface]) -> (Vec<String>, Vec<String>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for cidr in interfaces.iter().flat_map(|i| &i.addresses) {
        let host = cidr.split('/').next().unwrap_or_default();
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if !a.is_loopback() && !a.is_link_local() => v4.push(a.to_string()),
            Ok(IpAddr::V6(a)) if !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 => {
                v6.push(a.to_string())
            }
            _ => {}
        }
    }
    (v4, v6)
}

/// The registry host of an image reference, as container tools read it: the first path
/// component when it looks like a host (has a `.` or `:`, or is `localhost`), else Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// The PodConfig for a spec, or what the pod waits for.
fn pod_config(
    want: &api::PodSpec,
    nics: &HashMap<String, net::Nic>,
    node_id: &str,
) -> Result<vmm::PodConfig, String> {
    let pod_nics = want
        .nic_ids
        .iter()
        .map(|id| {
            nics.get(id)
                .map(|n| devices::nic(id, n))
                .ok_or_else(|| format!("waiting for NIC {id}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut labels = HashMap::new();
    labels.insert(MANAGED_BY_LABEL.to_string(), "mvirt-node".to_string());
    labels.insert(NODE_LABEL.to_string(), node_id.to_string());
    Ok(vmm::PodConfig {
        name: want.name.clone(),
        vcpus: want.vcpus,
        memory_mib: want.memory_bytes.div_ceil(MIB),
        nics: pod_nics,
        hostname: want.hostname.clone(),
        labels,
        containers: want
            .containers
            .iter()
            .map(|c| container(c, &want.registry_credentials))
            .collect(),
    })
}

fn container(
    c: &api::PodContainerSpec,
    credentials: &[api::RegistryCredential],
) -> vmm::PodContainer {
    let policy = match api::PodRestartPolicy::try_from(c.restart_policy).unwrap_or_default() {
        api::PodRestartPolicy::Never => vmm::PodRestartPolicy::Never,
        api::PodRestartPolicy::OnFailure => vmm::PodRestartPolicy::OnFailure,
        api::PodRestartPolicy::Always | api::PodRestartPolicy::Unspecified => {
            vmm::PodRestartPolicy::Always
        }
    };
    let registry = registry_of(&c.image);
    let registry_auth = credentials
        .iter()
        .find(|cred| cred.registry == registry)
        .map(|cred| vmm::PodRegistryAuth {
            username: cred.username.clone(),
            password: cred.password.clone(),
            token: cred.token.clone(),
        });
    vmm::PodContainer {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env: c.env.clone(),
        working_dir: c.working_dir.clone(),
        ports: c
            .ports
            .iter()
            .map(|p| vmm::PodContainerPort {
                name: p.name.clone(),
                container_port: p.container_port,
                protocol: p.protocol.to_uppercase(),
            })
            .collect(),
        restart_policy: policy as i32,
        registry_auth,
        user: String::new(),
        cpu_millicores: c.cpu_millis,
        memory_limit_bytes: c.memory_bytes,
        pids_limit: None,
    }
}

/// What a pass does to a pod's microVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodAction {
    Leave,
    Start,
    Stop { force: bool },
    Restart,
}

/// The action for a pod in `state` whose spec asks for `desired`. `restart_requested`: a restart
/// generation not acted on yet; `retry_due`: a failed pod's back-off is over.
fn decide(
    state: vmm::PodState,
    desired: api::DesiredState,
    force: bool,
    restart_requested: bool,
    retry_due: bool,
) -> PodAction {
    use vmm::PodState as S;
    match desired {
        api::DesiredState::Stopped => match state {
            S::Running | S::Starting => PodAction::Stop { force },
            _ => PodAction::Leave,
        },
        api::DesiredState::Running | api::DesiredState::Unspecified => match state {
            S::Running if restart_requested => PodAction::Restart,
            S::Created | S::Stopped => PodAction::Start,
            S::Failed if restart_requested || retry_due => PodAction::Start,
            _ => PodAction::Leave,
        },
    }
}

fn restart_key(pod_id: &str) -> String {
    format!("pod_restart_generation:{pod_id}")
}

/// Starts, stops or restarts the pod as the spec asks (in the background).
fn converge_power(cx: &Context, ops: &Operations, want: &api::PodSpec, pod: &vmm::Pod) {
    if ops.lock().busy.contains(&want.id) {
        return;
    }
    let state = state(pod);
    let desired = api::DesiredState::try_from(want.desired_state).unwrap_or_default();
    let force = want.stop_mode == api::StopMode::Force as i32;
    let restart_requested = want.restart_generation > cx.ledger.counter(&restart_key(&want.id));
    let retry_due = ops.retry_at(&want.id).is_none_or(|at| Instant::now() >= at);
    let action = decide(state, desired, force, restart_requested, retry_due);
    if restart_requested && matches!(action, PodAction::Start | PodAction::Restart) {
        if let Err(err) = cx
            .ledger
            .set_counter(&restart_key(&want.id), want.restart_generation)
        {
            tracing::warn!(pod = %want.id, error = %mvirt_common::error::error_chain(&err), "cannot record the restart");
        }
    }
    let timeout = if force {
        1
    } else {
        cx.settings.stop_timeout_secs
    };
    match action {
        PodAction::Leave => {}
        PodAction::Start => {
            cx.audit
                .audit(format!("starting pod {}", want.id), &[&want.id]);
            in_background(cx, ops, &want.id, |mut client, id| async move {
                client
                    .start_pod(vmm::StartPodRequest { id })
                    .await
                    .map(drop)
            });
        }
        PodAction::Stop { .. } => {
            cx.audit
                .audit(format!("stopping pod {}", want.id), &[&want.id]);
            in_background(cx, ops, &want.id, move |mut client, id| async move {
                let request = vmm::StopPodRequest {
                    id,
                    timeout_seconds: timeout,
                };
                client.stop_pod(request).await.map(drop)
            });
        }
        PodAction::Restart => {
            cx.audit
                .audit(format!("restarting pod {}", want.id), &[&want.id]);
            in_background(cx, ops, &want.id, move |mut client, id| async move {
                let request = vmm::StopPodRequest {
                    id: id.clone(),
                    timeout_seconds: timeout,
                };
                client.stop_pod(request).await?;
                client
                    .start_pod(vmm::StartPodRequest { id })
                    .await
                    .map(drop)
            });
        }
    }
}

/// Runs a pod operation in the background; the pod is left alone by passes until it ends, then
/// the agent is woken. A failed start schedules the retry (and a wake-up for it).
fn in_background<F, Fut>(cx: &Context, ops: &Operations, id: &str, operation: F)
where
    F: FnOnce(PodServiceClient<DaemonChannel>, String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    ops.lock().busy.insert(id.to_string());
    let inner = ops.inner.clone();
    let wake = cx.wake.clone();
    let client = cx.pods();
    let id = id.to_string();
    tokio::spawn(mvirt_common::trace::inherit(async move {
        let result = operation(client, id.clone()).await;
        let retry_in = {
            let mut state = inner.lock().unwrap_or_else(|e| e.into_inner());
            state.busy.remove(&id);
            match &result {
                Ok(()) => {
                    state.failures.remove(&id);
                    None
                }
                // A pod deleted meanwhile needs no retry.
                Err(status) if status.code() == Code::NotFound => {
                    state.failures.remove(&id);
                    None
                }
                Err(_) => {
                    let failures = state.failures.get(&id).map_or(0, |f| f.0) + 1;
                    state
                        .failures
                        .insert(id.clone(), (failures, Instant::now()));
                    Some(backoff(failures))
                }
            }
        };
        if let Err(err) = result {
            // The status names the registry's or the hypervisor's reason; the message of the
            // call carries no secret (mvirt-vmm never echoes credentials).
            tracing::warn!(pod = %id, error = %err.message(), "pod operation failed");
        }
        wake.notify_one();
        if let Some(wait) = retry_in {
            tokio::time::sleep(wait).await;
            wake.notify_one();
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::DesiredState as Desired;
    use vmm::PodState as S;
    use PodAction::*;

    /// (state, desired, force, restart requested, retry due, action)
    #[rustfmt::skip]
    const CASES: &[(S, Desired, bool, bool, bool, PodAction)] = &[
        (S::Created, Desired::Running, false, false, false, Start),
        (S::Stopped, Desired::Unspecified, false, false, false, Start),
        (S::Running, Desired::Running, false, false, true, Leave),
        (S::Starting, Desired::Running, false, true, true, Leave),
        (S::Stopping, Desired::Running, false, false, true, Leave),
        // A failed pod waits for its back-off, or a restart asked for.
        (S::Failed, Desired::Running, false, false, false, Leave),
        (S::Failed, Desired::Running, false, false, true, Start),
        (S::Failed, Desired::Running, false, true, false, Start),
        (S::Running, Desired::Running, false, true, false, Restart),
        (S::Running, Desired::Stopped, false, false, false, Stop { force: false }),
        (S::Starting, Desired::Stopped, true, false, false, Stop { force: true }),
        (S::Created, Desired::Stopped, false, true, true, Leave),
        (S::Failed, Desired::Stopped, false, true, true, Leave),
    ];

    #[test]
    fn the_pod_action_follows_state_desired_state_restarts_and_back_off() {
        for &(state, desired, force, restart, due, action) in CASES {
            assert_eq!(
                decide(state, desired, force, restart, due),
                action,
                "{state:?} asked {desired:?} (force {force}, restart {restart}, due {due})"
            );
        }
    }

    #[test]
    fn the_back_off_doubles_up_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(30));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(6), Duration::from_secs(600));
        assert_eq!(backoff(40), Duration::from_secs(600));
    }

    #[test]
    fn an_image_registry_is_its_first_component_when_that_is_a_host() {
        assert_eq!(registry_of("10.0.0.1:5000/team/app:1"), "10.0.0.1:5000");
        assert_eq!(registry_of("registry.example/app"), "registry.example");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
    }

    fn spec() -> api::PodSpec {
        api::PodSpec {
            id: "pod".into(),
            name: "web".into(),
            memory_bytes: 512 * MIB,
            nic_ids: vec!["n1".into()],
            containers: vec![
                api::PodContainerSpec {
                    name: "private".into(),
                    image: "10.0.0.1:5000/app:1".into(),
                    restart_policy: api::PodRestartPolicy::Never as i32,
                    memory_bytes: Some(64 * MIB),
                    ports: vec![api::PodContainerPort {
                        name: "http".into(),
                        container_port: 80,
                        protocol: "tcp".into(),
                    }],
                    ..Default::default()
                },
                api::PodContainerSpec {
                    name: "public".into(),
                    image: "10.0.0.2:5000/app:1".into(),
                    ..Default::default()
                },
            ],
            registry_credentials: vec![api::RegistryCredential {
                registry: "10.0.0.1:5000".into(),
                username: "u".into(),
                password: "p".into(),
                token: String::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_waits_for_its_nics_then_gets_its_credentials_per_registry() {
        let err = pod_config(&spec(), &HashMap::new(), "node-1").unwrap_err();
        assert_eq!(err, "waiting for NIC n1");
        let nics = HashMap::from([(
            "n1".to_string(),
            net::Nic {
                tap_name: "tap1".into(),
                mac_address: "02:00:00:00:00:01".into(),
                ..Default::default()
            },
        )]);
        let config = pod_config(&spec(), &nics, "node-1").unwrap();
        assert_eq!(config.memory_mib, 512);
        assert_eq!(config.nics[0].tap, "tap1");
        assert_eq!(config.labels[NODE_LABEL], "node-1");
        let private = &config.containers[0];
        let auth = private.registry_auth.as_ref().unwrap();
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("u", "p"));
        assert_eq!(private.restart_policy, vmm::PodRestartPolicy::Never as i32);
        assert_eq!(private.memory_limit_bytes, Some(64 * MIB));
        assert_eq!(private.ports[0].protocol, "TCP");
        assert!(config.containers[1].registry_auth.is_none());
        assert_eq!(
            config.containers[1].restart_policy,
            vmm::PodRestartPolicy::Always as i32
        );
    }

    #[test]
    fn a_pod_phase_is_its_microvm_state_and_its_addresses_the_guests() {
        assert_eq!(phase(S::Created, Desired::Running), Phase::Creating);
        assert_eq!(phase(S::Created, Desired::Stopped), Phase::Stopped);
        assert_eq!(phase(S::Starting, Desired::Running), Phase::Creating);
        assert_eq!(phase(S::Failed, Desired::Running), Phase::Failed);
        let (v4, v6) = addresses(&[
            vmm::PodInterface {
                name: "lo".into(),
                addresses: vec!["127.0.0.1/8".into(), "::1/128".into()],
                ..Default::default()
            },
            vmm::PodInterface {
                name: "eth0".into(),
                addresses: vec![
                    "10.0.0.5/32".into(),
                    "fe80::1/64".into(),
                    "fd00::5/128".into(),
                ],
                ..Default::default()
            },
        ]);
        assert_eq!(v4, ["10.0.0.5"]);
        assert_eq!(v6, ["fd00::5"]);
    }

    #[test]
    fn a_restarting_container_is_waiting() {
        let status = container_status(&vmm::PodContainerStatus {
            state: vmm::PodContainerState::Exited as i32,
            restarting: true,
            exit_code: 1,
            restart_count: 2,
            started_at_ns: 5_000_000,
            ..Default::default()
        });
        assert_eq!(status.state, api::PodContainerState::Waiting as i32);
        assert_eq!((status.restart_count, status.started_at_ms), (2, 5));
    }
}
