//! Domain types of pods: what a pod is ([`PodSpec`], its containers) and where it is
//! ([`PodRecord`]: state, the artefacts it booted, the container status and addresses last read
//! from mvirt-one). Plain serde data, stored as JSON; [`PodSpec::validate`] checks a spec without
//! touching the host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{NicSpec, SpecError, MAX_MEMORY_MIB, MAX_VCPUS};

/// vCPUs of a pod whose spec says 0.
pub const DEFAULT_VCPUS: u32 = 1;
/// Memory of a pod whose spec says 0, MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Below this the kernel, mvirt-one and an image pull do not fit.
pub const MIN_MEMORY_MIB: u64 = 128;
pub const MAX_CONTAINERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Kubernetes' default (and what an unspecified policy means).
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Credentials for a container's registry. `Debug` hides the secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RegistryAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub token: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field(
                "password",
                &(!self.password.is_empty()).then_some("<hidden>"),
            )
            .field("token", &(!self.token.is_empty()).then_some("<hidden>"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    #[serde(default)]
    pub name: String,
    pub container_port: u32,
    #[serde(default)]
    pub protocol: String,
}

/// One container (mirrors mvirt-one's `ContainerSpec`; mvirt-one validates images, users and
/// limits in depth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub registry_auth: Option<RegistryAuth>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub cpu_millicores: Option<u32>,
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default)]
    pub pids_limit: Option<u32>,
}

/// Everything the caller decides about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<ContainerSpec>,
}

fn err(msg: impl Into<String>) -> SpecError {
    SpecError(msg.into())
}

/// A pod name is a DNS label, as a VM name is (it names the pod's microVM and is the default
/// hostname of its containers).
pub fn validate_pod_name(name: &str) -> Result<(), SpecError> {
    mvirt_common::validate::dns_label("pod name", name)
        .map_err(|e| err(format!("invalid pod name: {e}")))
}

impl PodSpec {
    /// Fills in the defaults (0 vCPUs/memory), so that equal requests compare equal.
    pub fn normalised(mut self) -> Self {
        if self.vcpus == 0 {
            self.vcpus = DEFAULT_VCPUS;
        }
        if self.memory_mib == 0 {
            self.memory_mib = DEFAULT_MEMORY_MIB;
        }
        self
    }

    /// Checks the (normalised) spec without touching the host. NICs are checked as a VM's are
    /// (see `PodManager::vm_spec`).
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_pod_name(&self.name)?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(err(format!("vcpus must be 1-{MAX_VCPUS}")));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(err(format!(
                "memory_mib must be {MIN_MEMORY_MIB}-{MAX_MEMORY_MIB} (0 = {DEFAULT_MEMORY_MIB})"
            )));
        }
        if !self.hostname.is_empty() {
            mvirt_common::validate::dns_label("hostname", &self.hostname)
                .map_err(|e| err(e.to_string()))?;
        }
        if self.containers.is_empty() {
            return Err(err("a pod needs at least one container"));
        }
        if self.containers.len() > MAX_CONTAINERS {
            return Err(err(format!(
                "a pod has at most {MAX_CONTAINERS} containers"
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for c in &self.containers {
            mvirt_common::validate::dns_label("container name", &c.name)
                .map_err(|e| err(e.to_string()))?;
            if !names.insert(c.name.as_str()) {
                return Err(err(format!("duplicate container name {:?}", c.name)));
            }
            if c.image.trim().is_empty() || c.image.chars().any(char::is_whitespace) {
                return Err(err(format!(
                    "container {:?}: image must be an OCI reference without spaces",
                    c.name
                )));
            }
        }
        Ok(())
    }

    /// The hostname of the containers: the spec's, else the pod name.
    pub fn effective_hostname(&self) -> String {
        if self.hostname.is_empty() {
            self.name.clone()
        } else {
            self.hostname.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl PodState {
    /// Whether the microVM is (or should be) running.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            PodState::Starting | PodState::Running | PodState::Stopping
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Created => "created",
            PodState::Starting => "starting",
            PodState::Running => "running",
            PodState::Stopping => "stopping",
            PodState::Stopped => "stopped",
            PodState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Unknown,
    Created,
    Running,
    Exited,
}

/// A container's status as mvirt-one last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub state: ContainerState,
    pub exit_code: i32,
    pub restart_count: u32,
    pub restarting: bool,
    pub oom_killed: bool,
    pub message: String,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
}

/// A network interface of the pod as the guest reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInterface {
    pub name: String,
    pub mac: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub spec: PodSpec,
    pub state: PodState,
    pub state_reason: String,
    /// The pod artefacts version the microVM booted (empty before the first start).
    #[serde(default)]
    pub artefacts_version: String,
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
    #[serde(default)]
    pub interfaces: Vec<PodInterface>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    #[serde(default)]
    pub started_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        PodSpec {
            name: "web".into(),
            vcpus: 0,
            memory_mib: 0,
            nics: vec![],
            hostname: String::new(),
            labels: BTreeMap::new(),
            containers: vec![ContainerSpec {
                name: "app".into(),
                image: "127.0.0.1:5000/busybox:latest".into(),
                command: vec![],
                args: vec![],
                env: BTreeMap::new(),
                working_dir: String::new(),
                ports: vec![],
                restart_policy: RestartPolicy::Always,
                registry_auth: None,
                user: String::new(),
                cpu_millicores: None,
                memory_limit_bytes: None,
                pids_limit: None,
            }],
        }
    }

    #[test]
    fn defaults_are_filled_in_and_a_valid_spec_passes() {
        let s = spec().normalised();
        assert_eq!((s.vcpus, s.memory_mib), (DEFAULT_VCPUS, DEFAULT_MEMORY_MIB));
        s.validate().unwrap();
        assert_eq!(s.effective_hostname(), "web");
    }

    #[test]
    fn bad_names_empty_containers_and_duplicates_are_refused_with_a_reason() {
        type Change = Box<dyn Fn(&mut PodSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.name = "".into()), "invalid pod name"),
            (Box::new(|s| s.name = "-x".into()), "invalid pod name"),
            (Box::new(|s| s.name = "a b".into()), "invalid pod name"),
            (Box::new(|s| s.name = "Web_1".into()), "invalid pod name"),
            (Box::new(|s| s.name = "x".repeat(64)), "invalid pod name"),
            (Box::new(|s| s.containers.clear()), "at least one container"),
            (
                Box::new(|s| s.containers[0].name = "App_1".into()),
                "container name",
            ),
            (
                Box::new(|s| {
                    let c = s.containers[0].clone();
                    s.containers.push(c)
                }),
                "duplicate container name",
            ),
            (
                Box::new(|s| s.containers[0].image = " ".into()),
                "OCI reference",
            ),
            (Box::new(|s| s.memory_mib = 64), "memory_mib"),
            (Box::new(|s| s.hostname = "no_dns".into()), "hostname"),
        ];
        for (change, expected) in cases {
            let mut s = spec().normalised();
            change(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(expected), "{e:?} should mention {expected:?}");
        }
    }

    #[test]
    fn registry_secrets_stay_out_of_debug_output() {
        let auth = RegistryAuth {
            username: "u".into(),
            password: "hunter2".into(),
            token: "tok".into(),
        };
        let text = format!("{auth:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("tok\""),
            "{text}"
        );
    }
}
