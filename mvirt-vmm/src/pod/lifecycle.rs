//! A pod's life: start (boot, readiness, containers), stop (containers, power-off, hard stop),
//! delete, adoption after a daemon restart, and following its microVM's exit.

use std::time::Duration;

use mvirt_one::proto as one;
use mvirt_one::proto::one_service_client::OneServiceClient;
use tonic::transport::Channel;

use crate::model::{now_ms, VmState};
use crate::vmm::VmEventKind;

use super::guest;
use super::model::{ContainerStatus, PodInterface, PodRecord, PodState};
use super::{PodError, PodEventKind, PodManager, READY_PORT};

/// How much of the serial console a failed start quotes.
const CONSOLE_TAIL: usize = 1500;
/// How often a start asks an mvirt-one that answered StartPod before its launches again.
const LAUNCH_POLL: Duration = Duration::from_millis(100);

impl PodManager {
    /// Starts a created, stopped or failed pod; answers once it runs (or failed: the error
    /// carries the reason, which is also the pod's `state_reason`). A running pod is returned.
    pub async fn start(&self, id: &str) -> Result<PodRecord, PodError> {
        self.load(id)?;
        self.serialised(id, |pods, id| async move { pods.start_locked(&id).await })
            .await
    }

    async fn start_locked(&self, id: &str) -> Result<PodRecord, PodError> {
        let pod = self.load(id)?;
        if pod.state.is_active() {
            return Ok(pod);
        }
        let artefacts = self.artefacts().await?;
        self.update(id, PodEventKind::StateChanged, |p| {
            p.state = PodState::Starting;
            p.state_reason = "booting the microVM".into();
            p.artefacts_version = artefacts.version.clone();
            p.containers.clear();
            p.interfaces.clear();
        })?;
        let (containers, interfaces) = match self.boot(&pod, &artefacts).await {
            Ok(status) => status,
            Err(reason) => {
                let vmm = self.vmm();
                if vmm.exists(id).unwrap_or(false) {
                    // Nothing in a half-started microVM is worth a graceful stop.
                    let _ = vmm.kill(id).await;
                }
                self.vmm().audit().error(
                    format!("pod {} failed to start: {reason}", pod.spec.name),
                    &[id],
                );
                self.set_state(id, PodState::Failed, reason.clone())?;
                return Err(PodError::StartFailed {
                    id: id.to_string(),
                    reason,
                });
            }
        };
        // RUNNING carries the launched containers in the same write: a watcher never sees a
        // running pod whose processes are not there yet.
        let pod = self.update(id, PodEventKind::StateChanged, |p| {
            p.state = PodState::Running;
            p.state_reason = "started".into();
            p.started_at_ms = now_ms();
            p.containers = containers;
            p.interfaces = interfaces;
        })?;
        self.vmm()
            .audit()
            .audit(format!("started pod {}", pod.spec.name), &[id]);
        Ok(pod)
    }

    /// Boots the microVM and starts the containers; answers once every container's process
    /// was launched (running, already exited, or its launch failed), with their status and the
    /// guest's interfaces. `Err` is the reason for the FAILED state.
    async fn boot(
        &self,
        pod: &PodRecord,
        artefacts: &super::artefacts::Artefacts,
    ) -> Result<(Vec<ContainerStatus>, Vec<PodInterface>), String> {
        let id = pod.id.as_str();
        let vmm = self.vmm();
        let chain = |e: &dyn std::error::Error| mvirt_common::error::error_chain(e);
        // A fresh microVM record each boot: the artefacts (paths, version) may have changed.
        if vmm.exists(id).map_err(|e| chain(&e))? {
            vmm.delete(id, true).await.map_err(|e| chain(&e))?;
        }
        let spec = self.vm_spec(id, &pod.spec, Some(artefacts));
        vmm.create(id, spec).await.map_err(|e| chain(&e))?;
        let run = vmm.run_dir(id);
        std::fs::create_dir_all(run.path())
            .map_err(|e| format!("cannot create {}: {e}", run.path().display()))?;
        let ready_path = run.vsock_listener(READY_PORT);
        let _ = std::fs::remove_file(&ready_path);
        let ready = tokio::net::UnixListener::bind(&ready_path)
            .map_err(|e| format!("cannot listen on {}: {e}", ready_path.display()))?;
        let mut vm_events = vmm.subscribe();
        vmm.start(id).await.map_err(|e| chain(&e))?;
        let timeout = self.inner.config.ready_timeout;
        // Ready, the microVM gone, or the deadline: whichever comes first.
        let exited = async {
            loop {
                match vm_events.recv().await {
                    Ok(e) if e.vm.id == id && !e.vm.state.is_active() => return e.vm.state_reason,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return "mvirt-vmm is shutting down".to_string(),
                }
            }
        };
        let outcome = tokio::select! {
            ready = tokio::time::timeout(timeout, guest::wait_ready(&ready)) => ready,
            reason = exited => {
                return Err(format!("the microVM stopped before mvirt-one was ready ({reason}); console: {}",
                    crate::hypervisor::tail(&run.console_log(), CONSOLE_TAIL)));
            }
        };
        drop(ready);
        let _ = std::fs::remove_file(&ready_path);
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("readiness listener failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "mvirt-one did not become ready within {}s; console: {}",
                    timeout.as_secs(),
                    crate::hypervisor::tail(&run.console_log(), CONSOLE_TAIL)
                ))
            }
        }
        self.set_state(id, PodState::Starting, "pulling images")
            .map_err(|e| chain(&e))?;
        let mut client = guest::connect(&run.vsock_socket())
            .await
            .map_err(|e| format!("cannot reach mvirt-one: {e}"))?;
        let mut create = tonic::Request::new(guest::create_request(id, &pod.spec));
        create.set_timeout(self.inner.config.create_timeout);
        client
            .create_pod(create)
            .await
            .map_err(|s| format!("creating the containers failed: {}", s.message()))?;
        self.set_state(id, PodState::Starting, "starting the containers")
            .map_err(|e| chain(&e))?;
        let mut started = client
            .start_pod(one::StartPodRequest { id: id.to_string() })
            .await
            .map_err(|s| format!("starting the containers failed: {}", s.message()))?
            .into_inner();
        // mvirt-one's StartPod answers once the processes were launched; one that answers
        // earlier (older pod artefacts, or a launch slower than its wait) is asked again until
        // each container has left `created`, within the readiness timeout.
        let deadline = tokio::time::Instant::now() + timeout;
        while !guest::launched(&started) {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the containers were not launched within {}s",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(LAUNCH_POLL).await;
            started = client
                .get_pod(one::GetPodRequest { id: id.to_string() })
                .await
                .map_err(|s| format!("reading the containers' status failed: {}", s.message()))?
                .into_inner();
        }
        let info = client
            .get_network_info(one::GetNetworkInfoRequest {})
            .await
            .map_err(|s| format!("reading the guest's interfaces failed: {}", s.message()))?
            .into_inner();
        Ok((
            started
                .containers
                .into_iter()
                .map(guest::container_status)
                .collect(),
            guest::interfaces(info),
        ))
    }

    /// Reads the container status and addresses from mvirt-one and records them (an UPDATED
    /// event when they changed). `None` when the guest does not answer in time.
    pub(super) async fn refresh(&self, pod: &PodRecord) -> Option<PodRecord> {
        let run = self.vmm().run_dir(&pod.id);
        let read = async {
            let mut client = guest::connect(&run.vsock_socket()).await.ok()?;
            guest::read_status(&mut client, &pod.id).await.ok()
        };
        let (containers, interfaces) = tokio::time::timeout(guest::STATUS_TIMEOUT, read)
            .await
            .ok()??;
        self.update(&pod.id, PodEventKind::Updated, |p| {
            if p.state == PodState::Running {
                p.containers = containers;
                p.interfaces = interfaces;
            }
        })
        .ok()
    }

    /// A OneService client for a running pod (logs, exec).
    pub async fn client(
        &self,
        id: &str,
        action: &'static str,
    ) -> Result<OneServiceClient<Channel>, PodError> {
        let pod = self.load(id)?;
        if pod.state != PodState::Running {
            return Err(PodError::NotRunning {
                id: id.to_string(),
                state: pod.state.as_str(),
                action,
            });
        }
        guest::connect(&self.vmm().run_dir(id).vsock_socket())
            .await
            .map_err(|reason| PodError::Unreachable {
                id: id.to_string(),
                reason,
            })
    }

    /// Stops the containers and powers the microVM off; a hard stop once `timeout` has passed.
    pub async fn stop(&self, id: &str, timeout: Option<Duration>) -> Result<PodRecord, PodError> {
        self.load(id)?;
        self.serialised(id, move |pods, id| async move {
            pods.stop_locked(&id, timeout).await
        })
        .await
    }

    async fn stop_locked(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<PodRecord, PodError> {
        let pod = self.load(id)?;
        if !pod.state.is_active() {
            return Ok(pod);
        }
        let timeout = timeout.unwrap_or(self.vmm().default_stop_timeout());
        self.set_state(id, PodState::Stopping, "stopping the containers")?;
        self.vmm().audit().audit(
            format!(
                "stopping pod {} ({}s timeout)",
                pod.spec.name,
                timeout.as_secs()
            ),
            &[id],
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let seconds = timeout.as_secs().max(1) as u32;
        let graceful = async {
            let mut client = guest::connect(&self.vmm().run_dir(id).vsock_socket()).await?;
            client
                .stop_pod(one::StopPodRequest {
                    id: id.to_string(),
                    timeout_seconds: seconds,
                })
                .await
                .map_err(|s| s.message().to_string())?;
            client
                .shutdown(one::ShutdownRequest {
                    timeout_seconds: seconds,
                })
                .await
                .map_err(|s| s.message().to_string())?;
            Ok::<(), String>(())
        };
        if let Ok(Err(reason)) = tokio::time::timeout(timeout, graceful).await {
            tracing::warn!(pod = id, %reason, "graceful pod stop failed");
        }
        // mvirt-one powers off after Shutdown; the VM's stop waits for that (the power button
        // is harmless on a guest already going down) and stops it hard at the deadline.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(1));
        if self.vmm().exists(id)? {
            self.vmm().stop(id, Some(left)).await?;
        }
        let pod = self.update(id, PodEventKind::StateChanged, |p| {
            p.state = PodState::Stopped;
            p.state_reason = "stopped by request".into();
            for c in &mut p.containers {
                if c.state == super::model::ContainerState::Running {
                    c.state = super::model::ContainerState::Exited;
                }
            }
        })?;
        self.vmm()
            .audit()
            .audit(format!("stopped pod {}", pod.spec.name), &[id]);
        Ok(pod)
    }

    /// Deletes a pod: refused while it runs unless `force` (then its microVM is killed). Ends
    /// with no microVM, no vsock backend, no run directory and no record.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), PodError> {
        self.load(id)?;
        self.serialised(id, move |pods, id| async move {
            let pod = pods.load(&id)?;
            if pod.state.is_active() && !force {
                return Err(PodError::Running(id));
            }
            let vmm = pods.vmm();
            if vmm.exists(&id)? {
                vmm.delete(&id, true).await?;
            }
            vmm.store().delete_pod(&id)?;
            vmm.audit()
                .audit(format!("deleted pod {}", pod.spec.name), &[&id]);
            pods.publish(PodEventKind::Deleted, &pod);
            Ok(())
        })
        .await
    }

    /// At start, after the VMs' recovery: a pod whose microVM was adopted runs on; one whose
    /// microVM is gone is FAILED (or STOPPED if it was stopping); a start cut short by the
    /// restart is FAILED and its microVM killed. Then follows the microVMs' exits.
    pub async fn recover(&self) -> Result<(), PodError> {
        self.follow_vm_exits();
        for pod in self.vmm().store().list_pods()? {
            if !pod.state.is_active() {
                continue;
            }
            let id = pod.id.clone();
            let vm = self.vmm().store().get(&id)?;
            let vm_running = vm.as_ref().is_some_and(|v| v.state.is_active());
            match (pod.state, vm_running) {
                (PodState::Running, true) => {
                    self.set_state(&id, PodState::Running, "adopted after mvirt-vmm restart")?;
                    self.vmm()
                        .audit()
                        .info(format!("adopted running pod {}", pod.spec.name), &[&id]);
                }
                (PodState::Starting, true) => {
                    let _ = self.vmm().kill(&id).await;
                    self.set_state(
                        &id,
                        PodState::Failed,
                        "start interrupted by a mvirt-vmm restart",
                    )?;
                }
                (PodState::Stopping, _) => {
                    if vm_running {
                        let _ = self.vmm().kill(&id).await;
                    }
                    self.set_state(
                        &id,
                        PodState::Stopped,
                        "stopped (the stop was interrupted by a mvirt-vmm restart)",
                    )?;
                }
                (PodState::Created | PodState::Stopped | PodState::Failed, true) => {}
                (_, false) => {
                    let why = vm
                        .map(|v| v.state_reason)
                        .unwrap_or_else(|| "no microVM".into());
                    self.set_state(&id, PodState::Failed, format!("the microVM is gone: {why}"))?;
                }
            }
        }
        Ok(())
    }

    /// A running pod whose microVM exits without being asked (crash, guest power-off, kill
    /// from outside) becomes FAILED or STOPPED with the VM's reason.
    fn follow_vm_exits(&self) {
        let mut events = self.vmm().subscribe();
        let pods = self.clone();
        let stop = self.vmm().shutdown_token();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.recv() => event,
                };
                let event = match event {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                if event.kind != VmEventKind::StateChanged
                    || !event.vm.spec.is_pod_vm()
                    || event.vm.state.is_active()
                {
                    continue;
                }
                let state = if event.vm.state == VmState::Failed {
                    PodState::Failed
                } else {
                    PodState::Stopped
                };
                let reason = format!("the microVM stopped: {}", event.vm.state_reason);
                let _ = pods.update(&event.vm.id, PodEventKind::StateChanged, |p| {
                    // Starting and stopping pods are their operation's business.
                    if p.state == PodState::Running {
                        p.state = state;
                        p.state_reason = reason.clone();
                    }
                });
            }
        });
    }
}
