//! Pods: create (validate, pull every image, then record), start, stop, delete; a container's
//! log source.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::image::PulledImage;
use crate::launch;
use crate::logs::LogFile;

use super::spec::{effective_argv, resolve_identity, validate_spec};
use super::{
    io_err, Container, ContainerState, ContainerStatus, Desired, Pod, PodSpec, PodStatus, Process,
    Runtime, RuntimeError,
};

/// How long `StartPod` waits for its containers' launches before answering anyway.
pub const LAUNCH_WAIT: Duration = Duration::from_secs(60);

impl Runtime {
    /// Pulls the images and records the pod; idempotent for the same id and spec.
    pub async fn create_pod(&self, mut spec: PodSpec) -> Result<PodStatus, RuntimeError> {
        validate_spec(&spec)?;
        if spec.hostname.is_empty() {
            spec.hostname = spec.id.chars().take(8).collect();
        }
        if let Some(existing) = self.pods.lock().await.get(&spec.id) {
            return if existing.spec == spec {
                Ok(existing.status())
            } else {
                Err(RuntimeError::PodConflict(spec.id.clone()))
            };
        }
        // Limits this system cannot enforce are refused before anything is pulled.
        for c in &spec.containers {
            self.cgroups
                .check(&c.limits)
                .map_err(|source| RuntimeError::Cgroup {
                    container: c.name.clone(),
                    source,
                })?;
        }
        let mut pulled = Vec::new();
        for c in &spec.containers {
            let image = self
                .images
                .pull(&c.image, &c.credentials)
                .await
                .map_err(|source| RuntimeError::Image {
                    container: c.name.clone(),
                    source,
                })?;
            pulled.push(image);
        }
        let mut pods = self.pods.lock().await;
        if let Some(existing) = pods.get(&spec.id) {
            return if existing.spec == spec {
                Ok(existing.status())
            } else {
                Err(RuntimeError::PodConflict(spec.id.clone()))
            };
        }
        let pod_dir = self.config.data_dir.join("pods").join(&spec.id);
        let result = self.build_pod(&spec, pulled, &pod_dir);
        let pod = match result {
            Ok(pod) => Arc::new(pod),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&pod_dir);
                let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                self.cgroups.discard(&spec.id, &names);
                return Err(e);
            }
        };
        pods.insert(spec.id.clone(), pod.clone());
        drop(pods);
        self.audit.audit(
            format!(
                "pod created with containers {}",
                spec.containers
                    .iter()
                    .map(|c| format!("{}={}", c.name, c.image))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&spec.id],
        );
        Ok(pod.status())
    }

    pub(super) fn build_pod(
        &self,
        spec: &PodSpec,
        pulled: Vec<PulledImage>,
        pod_dir: &Path,
    ) -> Result<Pod, RuntimeError> {
        let mut containers = Vec::new();
        for (c, image) in spec.containers.iter().zip(pulled) {
            let user = if c.user.is_empty() {
                image.config.user.clone()
            } else {
                c.user.clone()
            };
            let (identity, home) = resolve_identity(&image.rootfs, &user).ok_or_else(|| {
                RuntimeError::UnknownUser {
                    container: c.name.clone(),
                    user: user.clone(),
                }
            })?;
            let argv = effective_argv(
                &c.command,
                &c.args,
                &image.config.entrypoint,
                &image.config.cmd,
            );
            if argv.is_empty() {
                return Err(RuntimeError::InvalidSpec(format!(
                    "container {:?}: no command given and the image has no entrypoint or cmd",
                    c.name
                )));
            }
            let mut env: BTreeMap<String, String> =
                launch::split_env(&image.config.env).into_iter().collect();
            env.entry("PATH".into()).or_insert_with(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });
            env.entry("HOME".into()).or_insert(home);
            env.insert("HOSTNAME".into(), spec.hostname.clone());
            env.extend(c.env.clone());
            let cwd = if !c.working_dir.is_empty() {
                c.working_dir.clone()
            } else if !image.config.working_dir.is_empty() {
                image.config.working_dir.clone()
            } else {
                "/".to_string()
            };
            let dir = pod_dir.join(&c.name);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let cgroup = self
                .cgroups
                .create(&spec.id, &c.name, &c.limits)
                .map_err(|source| RuntimeError::Cgroup {
                    container: c.name.clone(),
                    source,
                })?;
            let log_path = pod_dir.join(format!("{}.log", c.name));
            let log = LogFile::open(&log_path).map_err(io_err(&log_path))?;
            let (status, _) = watch::channel(ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                image_digest: image.manifest_digest.clone(),
                state: ContainerState::Created,
                pid: 0,
                exit_code: 0,
                restart_count: 0,
                restarting: false,
                started_at_ns: 0,
                finished_at_ns: 0,
                message: String::new(),
                oom_killed: false,
            });
            let (control, _) = watch::channel(Desired::Stop {
                deadline: tokio::time::Instant::now(),
            });
            containers.push(Arc::new(Container {
                spec: c.clone(),
                process: Process {
                    argv,
                    env: env.into_iter().collect(),
                    cwd,
                    identity,
                },
                image,
                dir,
                cgroup,
                log,
                status,
                control,
                supervisor: std::sync::Mutex::new(None),
            }));
        }
        Ok(Pod {
            spec: spec.clone(),
            dir: pod_dir.to_path_buf(),
            containers,
            stopped: Default::default(),
            op: Mutex::new(()),
        })
    }

    pub async fn get_pod(&self, id: &str) -> Result<PodStatus, RuntimeError> {
        Ok(self.pod(id).await?.status())
    }

    pub async fn list_pods(&self) -> Vec<PodStatus> {
        self.pods
            .lock()
            .await
            .values()
            .map(|p| p.status())
            .collect()
    }

    /// Starts every container that is not already running or restarting, and answers once each
    /// container it started has been launched: its process runs (or already exited), or its
    /// launch failed (`exited` with the reason). So a `running` container in the answer is a
    /// running process, not a supervisor about to start one. A launch that takes longer than
    /// [`LAUNCH_WAIT`] is answered as it stands (the caller reads the status again).
    pub async fn start_pod(self: &Arc<Self>, id: &str) -> Result<PodStatus, RuntimeError> {
        let pod = self.pod(id).await?;
        let _op = pod.op.lock().await;
        pod.stopped
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let mut launches = Vec::new();
        for container in &pod.containers {
            let mut supervisor = container
                .supervisor
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if supervisor.as_ref().is_some_and(|h| !h.is_finished()) {
                continue;
            }
            // A launch stamps `started_at_ns` (the process runs) or `finished_at_ns` (it
            // exited, or could not be started): either moves one of them.
            let mut status = container.status.subscribe();
            let before = {
                let s = status.borrow_and_update();
                (s.started_at_ns, s.finished_at_ns)
            };
            launches.push(async move {
                let _ = status
                    .wait_for(|s| (s.started_at_ns, s.finished_at_ns) != before)
                    .await;
            });
            container.control.send_replace(Desired::Run);
            let runtime = self.clone();
            let c = container.clone();
            let hostname = pod.spec.hostname.clone();
            *supervisor = Some(tokio::spawn(async move {
                runtime.supervise(c, hostname).await;
            }));
        }
        if tokio::time::timeout(LAUNCH_WAIT, futures::future::join_all(launches))
            .await
            .is_err()
        {
            tracing::warn!(pod = %id, "containers not launched within {LAUNCH_WAIT:?}; answering StartPod with their current state");
        }
        self.audit.audit("pod started", &[id]);
        Ok(pod.status())
    }

    /// Stops every container: SIGTERM, then SIGKILL after `timeout`.
    pub async fn stop_pod(&self, id: &str, timeout: Duration) -> Result<PodStatus, RuntimeError> {
        let pod = self.pod(id).await?;
        let _op = pod.op.lock().await;
        self.stop_containers(&pod, timeout).await;
        self.audit.audit("pod stopped", &[id]);
        Ok(pod.status())
    }

    pub(super) async fn stop_containers(&self, pod: &Pod, timeout: Duration) {
        pod.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut handles = Vec::new();
        for container in &pod.containers {
            container.control.send_replace(Desired::Stop { deadline });
            let handle = container
                .supervisor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            handles.extend(handle);
        }
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// Stops the pod if needed and removes its containers, upper dirs and logs.
    pub async fn delete_pod(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let pod = self.pod(id).await?;
        let _op = pod.op.lock().await;
        self.stop_containers(&pod, timeout).await;
        // The cgroups go first: if one cannot be removed the pod stays, and a retry finishes.
        for container in &pod.containers {
            container
                .cgroup
                .remove()
                .await
                .map_err(|source| RuntimeError::Cgroup {
                    container: container.spec.name.clone(),
                    source,
                })?;
        }
        self.cgroups.remove_pod(id);
        self.pods.lock().await.remove(id);
        let dir = pod.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await
            .map_err(|e| RuntimeError::Launcher(std::io::Error::other(e.to_string())))?
            .map_err(io_err(&pod.dir))?;
        self.audit.audit("pod deleted", &[id]);
        Ok(())
    }

    /// Stops every pod and removes their cgroups (used by Shutdown).
    pub async fn stop_all(&self, timeout: Duration) {
        let pods: Vec<Arc<Pod>> = self.pods.lock().await.values().cloned().collect();
        let stops = pods.iter().map(|pod| async move {
            let _op = pod.op.lock().await;
            self.stop_containers(pod, timeout).await;
            // The daemon is going away: leave no cgroups behind (matters in local mode; a VM
            // powers off anyway).
            for container in &pod.containers {
                if let Err(e) = container.cgroup.remove().await {
                    tracing::warn!(pod = %pod.spec.id, error = %e, "cannot remove container cgroup");
                }
            }
            self.cgroups.remove_pod(&pod.spec.id);
        });
        futures::future::join_all(stops).await;
    }

    /// Log file and status of a container, for `Logs`.
    pub async fn log_source(
        &self,
        pod_id: &str,
        container: &str,
    ) -> Result<(Arc<LogFile>, watch::Receiver<ContainerStatus>), RuntimeError> {
        let pod = self.pod(pod_id).await?;
        let c = pod.container(container)?;
        Ok((c.log.clone(), c.status.subscribe()))
    }
}
