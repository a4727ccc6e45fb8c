//! Pods: microVMs running mvirt-one, beside the VMs.
//!
//! A pod's microVM is a VM of the [`Vmm`] with the pod's id, built by [`PodManager::vm_spec`]
//! from the pod artefacts (kernel + initramfs of mvirt-podimage) and a vsock device
//! ([`crate::model::VsockSpec`]); VmService does not show it. Everything about its process —
//! run directory, spawning (and the vhost-device-vsock backend of QEMU), the exit watcher,
//! process identity, adoption after a daemon restart, the serial console — is the VM machinery.
//! This module adds what makes it a pod: its own record ([`model::PodRecord`] in the `pods`
//! table), the readiness handshake and the OneService calls that run the containers
//! ([`guest`]), and the lifecycle on top ([`lifecycle`]).
//!
//! A start flows: validate → record STARTING → (re)create the microVM's VM record → bind the
//! readiness listener (`vsock.sock_<port>`) → `Vmm::start` → wait for mvirt-one's `READY`
//! (bounded; a timeout is FAILED with the console's tail) → OneService `CreatePod` (pulls) and
//! `StartPod` → RUNNING with the container status and addresses.

pub mod artefacts;
pub mod grpc;
mod guest;
mod lifecycle;
pub mod model;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mvirt_common::{ErrorKind, HasErrorKind};
use tokio::sync::broadcast;

use crate::model::{now_ms, BootSource, SpecError, VmSpec, VsockSpec};
use crate::vmm::{Vmm, VmmError};
use artefacts::{Artefacts, ArtefactsError};
use model::{PodRecord, PodSpec, PodState};

/// The guest's vsock context id (each pod has its own vsock socket, so one value serves all).
pub const GUEST_CID: u32 = 3;
/// The host vsock port mvirt-one's readiness connection goes to.
pub const READY_PORT: u32 = 1025;

/// Pod settings (flags in `main.rs`).
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// `vmlinuz`, `initramfs.img` and `manifest.json` of mvirt-podimage.
    pub artefacts_dir: PathBuf,
    /// How long a start waits for mvirt-one's readiness connection.
    pub ready_timeout: Duration,
    /// How long OneService's CreatePod (image pulls) may take.
    pub create_timeout: Duration,
    /// Extra kernel command-line words (e.g. `tsc_early_khz=2100000` under TCG).
    pub kernel_args: Vec<String>,
    /// Registries mvirt-one may reach over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
}

impl Default for PodConfig {
    fn default() -> Self {
        Self {
            artefacts_dir: PathBuf::from("/var/lib/mvirt/pod-artefacts"),
            ready_timeout: Duration::from_secs(120),
            create_timeout: Duration::from_secs(600),
            kernel_args: Vec::new(),
            insecure_registries: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    InvalidId(#[from] mvirt_common::validate::InvalidName),
    #[error("invalid pod config: {0}")]
    InvalidSpec(#[from] SpecError),
    #[error("pod {0} not found")]
    NotFound(String),
    #[error("pod {0} already exists with a different config")]
    AlreadyExists(String),
    #[error("pod {0} is running: stop it first, or delete with force")]
    Running(String),
    #[error("pod {id} is {state}: {action} needs a running pod")]
    NotRunning {
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("the pod artefacts are not usable")]
    Artefacts(#[from] ArtefactsError),
    #[error("pod {id} failed to start: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("mvirt-one of pod {id} is unreachable: {reason}")]
    Unreachable { id: String, reason: String },
    /// mvirt-one answered with an error: its code is kept (NOT_FOUND for an unknown
    /// container, FAILED_PRECONDITION for an exec in a stopped one, ...).
    #[error("mvirt-one: {}", .0.message())]
    Guest(tonic::Status),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("operation on pod {0} was interrupted (mvirt-vmm is shutting down)")]
    Interrupted(String),
}

impl HasErrorKind for PodError {
    fn kind(&self) -> ErrorKind {
        match self {
            PodError::InvalidId(_) | PodError::InvalidSpec(_) => ErrorKind::InvalidArgument,
            PodError::NotFound(_) => ErrorKind::NotFound,
            PodError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            PodError::Running(_)
            | PodError::NotRunning { .. }
            | PodError::Artefacts(_)
            | PodError::StartFailed { .. } => ErrorKind::FailedPrecondition,
            PodError::Unreachable { .. } | PodError::Interrupted(_) => ErrorKind::Unavailable,
            PodError::Guest(status) => ErrorKind::from_grpc_code(status.code()),
            PodError::Vmm(e) => e.kind(),
            PodError::Store(_) => ErrorKind::Internal,
        }
    }
}

mvirt_common::impl_status_from!(PodError);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodEventKind {
    Created,
    StateChanged,
    Updated,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct PodEvent {
    pub kind: PodEventKind,
    pub pod: PodRecord,
}

struct Inner {
    vmm: Vmm,
    config: PodConfig,
    events: broadcast::Sender<PodEvent>,
    op_locks: Arc<crate::oplock::OpLocks>,
    record_lock: Mutex<()>,
    /// The artefacts last read (and verified), re-read when their manifest changes.
    artefacts: Mutex<Option<Artefacts>>,
}

/// The pod manager. Cheap to clone.
#[derive(Clone)]
pub struct PodManager {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PodManager {
    /// A manager for the pods of `vmm` (whose `recover` has run); call [`PodManager::recover`]
    /// next.
    pub fn new(vmm: Vmm, config: PodConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                vmm,
                config,
                events,
                op_locks: Arc::default(),
                record_lock: Mutex::new(()),
                artefacts: Mutex::new(None),
            }),
        }
    }

    pub fn vmm(&self) -> &Vmm {
        &self.inner.vmm
    }

    /// The pod artefacts, read and verified (cached while their manifest is unchanged).
    pub async fn artefacts(&self) -> Result<Artefacts, ArtefactsError> {
        let dir = self.inner.config.artefacts_dir.clone();
        let cached = lock(&self.inner.artefacts).clone();
        let artefacts = tokio::task::spawn_blocking(move || Artefacts::load(&dir, cached))
            .await
            .map_err(|e| ArtefactsError::Task(e.to_string()))??;
        *lock(&self.inner.artefacts) = Some(artefacts.clone());
        Ok(artefacts)
    }

    /// Runs `operation` under the pod's operation lock on a task of its own, so that a caller
    /// giving up never leaves a half-done start or delete (as for VMs).
    async fn serialised<T, F, Fut>(&self, id: &str, operation: F) -> Result<T, PodError>
    where
        T: Send + 'static,
        F: FnOnce(PodManager, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, PodError>> + Send + 'static,
    {
        let (pods, owned) = (self.clone(), id.to_string());
        let gone = move || matches!(pods.inner.vmm.store().get_pod(&owned), Ok(None));
        self.inner
            .op_locks
            .serialised(id, operation(self.clone(), id.to_string()), gone)
            .await
            .unwrap_or_else(|| Err(PodError::Interrupted(id.to_string())))
    }

    fn publish(&self, kind: PodEventKind, pod: &PodRecord) {
        let _ = self.inner.events.send(PodEvent {
            kind,
            pod: pod.clone(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PodEvent> {
        self.inner.events.subscribe()
    }

    fn load(&self, id: &str) -> Result<PodRecord, PodError> {
        mvirt_common::validate::resource_id("pod id", id)?;
        self.inner
            .vmm
            .store()
            .get_pod(id)?
            .ok_or_else(|| PodError::NotFound(id.to_string()))
    }

    /// Applies `change` to the stored record, persists and publishes it (when it changed).
    fn update(
        &self,
        id: &str,
        kind: PodEventKind,
        change: impl FnOnce(&mut PodRecord),
    ) -> Result<PodRecord, PodError> {
        let (pod, changed) = {
            let _guard = lock(&self.inner.record_lock);
            let store = self.inner.vmm.store();
            let mut pod = store
                .get_pod(id)?
                .ok_or_else(|| PodError::NotFound(id.to_string()))?;
            let before = pod.clone();
            change(&mut pod);
            let changed = pod != before;
            if changed {
                pod.updated_at_ms = now_ms();
                store.put_pod(&pod)?;
            }
            (pod, changed)
        };
        if changed {
            self.publish(kind, &pod);
        }
        Ok(pod)
    }

    fn set_state(
        &self,
        id: &str,
        state: PodState,
        reason: impl Into<String>,
    ) -> Result<PodRecord, PodError> {
        let reason = reason.into();
        self.update(id, PodEventKind::StateChanged, |pod| {
            pod.state = state;
            pod.state_reason = reason;
        })
    }

    /// Records a pod (CREATED). Idempotent: the same id and spec return the existing pod.
    pub async fn create(&self, id: &str, spec: PodSpec) -> Result<PodRecord, PodError> {
        mvirt_common::validate::resource_id("pod id", id)?;
        let spec = spec.normalised();
        spec.validate()?;
        // NICs are a VM's NICs: the same checks (ids, TAP names, MACs).
        self.vm_spec(id, &spec, None).validate_shape()?;
        self.serialised(id, move |pods, id| async move {
            let store = pods.inner.vmm.store();
            if let Some(existing) = store.get_pod(&id)? {
                return if existing.spec == spec {
                    Ok(existing)
                } else {
                    Err(PodError::AlreadyExists(id))
                };
            }
            if pods.inner.vmm.exists(&id)? {
                // A VM has this id: ids name one resource.
                return Err(PodError::AlreadyExists(id));
            }
            let now = now_ms();
            let pod = PodRecord {
                id: id.clone(),
                spec,
                state: PodState::Created,
                state_reason: "created".into(),
                artefacts_version: String::new(),
                containers: vec![],
                interfaces: vec![],
                created_at_ms: now,
                updated_at_ms: now,
                started_at_ms: 0,
            };
            store.put_pod(&pod)?;
            pods.inner.vmm.audit().audit(
                format!(
                    "created pod {} ({} containers)",
                    pod.spec.name,
                    pod.spec.containers.len()
                ),
                &[&id],
            );
            pods.publish(PodEventKind::Created, &pod);
            Ok(pod)
        })
        .await
    }

    /// The pod as stored.
    pub fn get_stored(&self, id: &str) -> Result<PodRecord, PodError> {
        self.load(id)
    }

    /// The pod, with its container status and addresses refreshed from mvirt-one when it runs.
    pub async fn get(&self, id: &str) -> Result<PodRecord, PodError> {
        let pod = self.load(id)?;
        if pod.state == PodState::Running {
            return Ok(self.refresh(&pod).await.unwrap_or(pod));
        }
        Ok(pod)
    }

    /// Every pod carrying all labels of `selector` (as stored: no calls into the guests).
    pub fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<PodRecord>, PodError> {
        Ok(self
            .inner
            .vmm
            .store()
            .list_pods()?
            .into_iter()
            .filter(|p| {
                selector
                    .iter()
                    .all(|(k, v)| p.spec.labels.get(k) == Some(v))
            })
            .collect())
    }

    /// The microVM of a pod as a VM spec (`artefacts` = None only for shape checks).
    pub fn vm_spec(&self, id: &str, spec: &PodSpec, artefacts: Option<&Artefacts>) -> VmSpec {
        let (kernel, initramfs) = match artefacts {
            Some(a) => (
                a.kernel.display().to_string(),
                Some(a.initramfs.display().to_string()),
            ),
            None => ("/pod-artefacts/vmlinuz".into(), None),
        };
        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            "panic=-1".to_string(),
            format!("{}={READY_PORT}", mvirt_one::client::READY_PORT_PARAM),
        ];
        if !self.inner.config.insecure_registries.is_empty() {
            cmdline.push(format!(
                "MVIRT_ONE_INSECURE_REGISTRIES={}",
                self.inner.config.insecure_registries.join(",")
            ));
        }
        cmdline.extend(self.inner.config.kernel_args.iter().cloned());
        VmSpec {
            name: spec.name.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            boot: BootSource::Kernel {
                kernel,
                initramfs,
                cmdline: cmdline.join(" "),
            },
            disks: vec![],
            nics: spec.nics.clone(),
            cloud_init: None,
            hugepages: false,
            nested_virtualization: false,
            labels: spec.labels.clone(),
            vsock: Some(VsockSpec { cid: GUEST_CID }),
        }
        .with_id_label(id)
    }

    /// Pods whose microVM runs, and all pods.
    pub fn counts(&self) -> Result<(u32, u32), PodError> {
        let pods = self.inner.vmm.store().list_pods()?;
        let running = pods.iter().filter(|p| p.state.is_active()).count();
        Ok((running as u32, pods.len() as u32))
    }
}

impl VmSpec {
    /// Marks a pod's microVM with its pod (for operators reading `vmm.db`).
    fn with_id_label(mut self, pod_id: &str) -> Self {
        self.labels
            .insert("mvirt.pod".to_string(), pod_id.to_string());
        self
    }
}
