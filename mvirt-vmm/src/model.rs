//! Domain types of the VMM: what a VM is (its [`VmSpec`]) and where it is (its [`VmRecord`]).
//!
//! These are plain serde data, independent of the proto types (`grpc.rs` converts) and of the
//! hypervisor drivers (which read a spec and produce a process). The spec is stored as JSON in
//! SQLite; [`VmSpec::validate_shape`] checks everything that does not need the filesystem.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum BootSource {
    /// Direct kernel boot; the first disk (if any) is the root disk.
    Kernel {
        kernel: String,
        #[serde(default)]
        initramfs: Option<String>,
        #[serde(default)]
        cmdline: String,
    },
    /// UEFI firmware booting from the disks; `None` = the driver's default firmware.
    Firmware {
        #[serde(default)]
        firmware: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub id: String,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    pub id: String,
    pub tap: String,
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CloudInitSpec {
    #[serde(default)]
    pub user_data: String,
    #[serde(default)]
    pub network_config: String,
    #[serde(default)]
    pub hostname: String,
    /// Rendered into meta-data as `public-keys`.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

/// Everything the caller decides about a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: BootSource,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    #[serde(default)]
    pub cloud_init: Option<CloudInitSpec>,
    #[serde(default)]
    pub hugepages: bool,
    #[serde(default)]
    pub nested_virtualization: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A virtio-vsock device (pod microVMs only: never set through VmService). The host side
    /// is a hybrid vsock unix socket in the run directory ([`crate::hypervisor::RunDir::vsock_socket`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockSpec>,
}

/// The guest's vsock context id (3 or more; every guest has its own socket, so the id only has
/// to be valid, not unique on the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockSpec {
    pub cid: u32,
}

impl VmSpec {
    /// Whether this is the microVM of a pod (owned by the pod, hidden from VmService).
    pub fn is_pod_vm(&self) -> bool {
        self.vsock.is_some()
    }
}

/// Limits that keep a typo from asking the host for something absurd.
pub const MAX_VCPUS: u32 = 256;
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;

/// A spec that cannot describe a VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn err(msg: impl Into<String>) -> SpecError {
    SpecError(msg.into())
}

/// A device id (disk or NIC): 1–40 characters of `a-z`, `0-9`, `-`. Used in hypervisor device
/// names, so nothing else is allowed.
pub fn validate_device_id(what: &str, id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(err(format!(
            "invalid {what} id {id:?}: 1-40 characters of a-z, 0-9 and '-'"
        )))
    }
}

/// A Linux interface name: 1–15 bytes, no '/', whitespace or ':'.
pub fn validate_ifname(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(err(format!(
            "invalid TAP name {name:?}: 1-15 characters of letters, digits, '-', '_', '.'"
        )))
    }
}

fn validate_path_text(what: &str, path: &str) -> Result<(), SpecError> {
    if !path.starts_with('/') {
        return Err(err(format!("{what} path {path:?} must be absolute")));
    }
    // Paths reach hypervisor option strings where ',' separates options.
    if path.contains(',') || path.contains('\0') || path.contains('\n') {
        return Err(err(format!(
            "{what} path {path:?} must not contain ',', newlines or NUL"
        )));
    }
    Ok(())
}

impl VmSpec {
    /// Checks the spec without touching the filesystem.
    pub fn validate_shape(&self) -> Result<(), SpecError> {
        if self.name.is_empty() {
            return Err(err("name must not be empty"));
        }
        mvirt_common::validate::dns_label("VM name", &self.name).map_err(|e| err(e.to_string()))?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(err(format!("vcpus must be between 1 and {MAX_VCPUS}")));
        }
        if self.memory_mib < 16 || self.memory_mib > MAX_MEMORY_MIB {
            return Err(err(format!(
                "memory_mib must be between 16 and {MAX_MEMORY_MIB}"
            )));
        }
        match &self.boot {
            BootSource::Kernel {
                kernel, initramfs, ..
            } => {
                validate_path_text("kernel", kernel)?;
                if let Some(initramfs) = initramfs {
                    validate_path_text("initramfs", initramfs)?;
                }
            }
            BootSource::Firmware { firmware } => {
                if let Some(firmware) = firmware {
                    validate_path_text("firmware", firmware)?;
                }
                if self.disks.is_empty() {
                    return Err(err("firmware boot needs at least one disk"));
                }
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for disk in &self.disks {
            validate_device_id("disk", &disk.id)?;
            validate_path_text("disk", &disk.path)?;
            if !ids.insert(format!("disk:{}", disk.id)) {
                return Err(err(format!("duplicate disk id {}", disk.id)));
            }
        }
        for nic in &self.nics {
            validate_device_id("NIC", &nic.id)?;
            validate_ifname(&nic.tap)?;
            mvirt_common::validate::mac_address(&nic.mac).map_err(|e| err(e.to_string()))?;
            if !ids.insert(format!("nic:{}", nic.id)) {
                return Err(err(format!("duplicate NIC id {}", nic.id)));
            }
        }
        if let Some(ci) = &self.cloud_init {
            if !ci.hostname.is_empty() {
                mvirt_common::validate::dns_label("hostname", &ci.hostname)
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        for key in self.labels.keys() {
            if key.is_empty() || key.len() > 63 {
                return Err(err(format!("label key {key:?} must be 1-63 characters")));
            }
        }
        Ok(())
    }

    /// Every host path the spec names (kernel, initramfs, firmware, disks).
    pub fn host_paths(&self) -> Vec<(&'static str, &str)> {
        let mut paths = Vec::new();
        match &self.boot {
            BootSource::Kernel {
                kernel, initramfs, ..
            } => {
                paths.push(("kernel", kernel.as_str()));
                if let Some(i) = initramfs {
                    paths.push(("initramfs", i.as_str()));
                }
            }
            BootSource::Firmware { firmware } => {
                if let Some(f) = firmware {
                    paths.push(("firmware", f.as_str()));
                }
            }
        }
        for disk in &self.disks {
            paths.push(("disk", disk.path.as_str()));
        }
        paths
    }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "stopped" => VmState::Stopped,
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "stopping" => VmState::Stopping,
            "failed" => VmState::Failed,
            _ => return None,
        })
    }

    /// Whether a hypervisor process is (supposed to be) alive.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Stopping
        )
    }
}

/// The identity of a running hypervisor process: pid plus the kernel's start time of that pid
/// (clock ticks since boot), so a recycled pid is never mistaken for our process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_time: u64,
}

/// A VM as stored: spec plus observed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    pub id: String,
    pub spec: VmSpec,
    pub state: VmState,
    pub state_reason: String,
    pub hypervisor: String,
    pub process: Option<ProcessIdentity>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: i64,
    pub pending_changes: Vec<String>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> VmSpec {
        VmSpec {
            name: "web-1".into(),
            vcpus: 1,
            memory_mib: 128,
            boot: BootSource::Kernel {
                kernel: "/k/vmlinuz".into(),
                initramfs: None,
                cmdline: "console=ttyS0".into(),
            },
            disks: vec![],
            nics: vec![],
            cloud_init: None,
            hugepages: false,
            nested_virtualization: false,
            labels: BTreeMap::new(),
            vsock: None,
        }
    }

    #[test]
    fn zero_vcpus_or_memory_is_rejected() {
        let mut spec = sample();
        spec.vcpus = 0;
        assert!(spec.validate_shape().unwrap_err().0.contains("vcpus"));
        let mut spec = sample();
        spec.memory_mib = 0;
        assert!(spec.validate_shape().unwrap_err().0.contains("memory"));
        assert!(sample().validate_shape().is_ok());
    }

    #[test]
    fn bad_macs_taps_device_ids_and_paths_are_rejected() {
        let mut spec = sample();
        spec.nics.push(NicSpec {
            id: "n1".into(),
            tap: "tap0".into(),
            mac: "01:00:00:00:00:01".into(),
        });
        assert!(spec.validate_shape().unwrap_err().0.contains("MAC"));
        spec.nics[0].mac = "02:00:00:00:00:01".into();
        spec.nics[0].tap = "tap/../x".into();
        assert!(spec.validate_shape().unwrap_err().0.contains("TAP"));
        spec.nics[0].tap = "tap0".into();
        spec.disks.push(DiskSpec {
            id: "Root Disk".into(),
            path: "/d.img".into(),
            read_only: false,
        });
        assert!(spec.validate_shape().unwrap_err().0.contains("disk id"));
        spec.disks[0].id = "root".into();
        spec.disks[0].path = "/d.img,format=qcow2".into();
        assert!(spec.validate_shape().unwrap_err().0.contains("','"));
        spec.disks[0].path = "relative.img".into();
        assert!(spec.validate_shape().unwrap_err().0.contains("absolute"));
        spec.disks[0].path = "/d.img".into();
        assert!(spec.validate_shape().is_ok());
    }

    #[test]
    fn specs_round_trip_through_json() {
        let mut spec = sample();
        spec.cloud_init = Some(CloudInitSpec {
            user_data: "#cloud-config\n".into(),
            ..Default::default()
        });
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<VmSpec>(&json).unwrap(), spec);
    }
}
