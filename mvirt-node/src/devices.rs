//! Changes to an existing VM: vCPU/memory and the volumes and NICs it is attached to.
//!
//! The API lets a VM's `vcpus`, `memory_bytes`, `volume_ids` and `nic_ids` change after create.
//! Every pass, for a VM that mvirt-vmm already has, the agent compares the desired shape with
//! the VM's config and asks mvirt-vmm for the difference: `ResizeVm`, `AttachDisk`/`DetachDisk`,
//! `AttachNic`/`DetachNic`. mvirt-vmm applies each live when the VM runs and its driver can
//! (hot-plug), and otherwise records it for the next boot (`pending_changes`), which the agent
//! reports as the condition `restart_required`. A detach waits for the guest to let the device
//! go; until then the NIC stays in the VM's config, so its TAP is not removed (see
//! [`in_use`]).

use std::collections::{HashMap, HashSet};

use crate::daemons::DaemonChannel;
use mvirt_api::proto as api;
use mvirt_ebpf::proto as net;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use mvirt_zfs::proto as zfs;

const MIB: u64 = 1 << 20;

/// The disk a VM gets for a volume.
pub fn disk(id: &str, volume: &zfs::Volume) -> vmm::Disk {
    vmm::Disk {
        id: id.to_string(),
        path: volume.path.clone(),
        read_only: false,
    }
}

/// The NIC a VM gets for an mvirt-ebpf NIC (its TAP).
pub fn nic(id: &str, nic: &net::Nic) -> vmm::Nic {
    vmm::Nic {
        id: id.to_string(),
        tap: nic.tap_name.clone(),
        mac: nic.mac_address.clone(),
    }
}

/// One change to an existing VM.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    Resize { vcpus: u32, memory_mib: u64 },
    AttachDisk(vmm::Disk),
    DetachDisk(String),
    AttachNic(vmm::Nic),
    DetachNic(String),
}

impl Change {
    /// What the change is called in a problem report.
    fn describe(&self) -> String {
        match self {
            Change::Resize { .. } => "resize".to_string(),
            Change::AttachDisk(disk) => format!("attach volume {}", disk.id),
            Change::DetachDisk(id) => format!("detach volume {id}"),
            Change::AttachNic(nic) => format!("attach NIC {}", nic.id),
            Change::DetachNic(id) => format!("detach NIC {id}"),
        }
    }
}

/// The ids in `wanted` that `have` lacks, and those in `have` that are no longer wanted.
fn difference<'a>(wanted: &'a [String], have: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let missing = wanted
        .iter()
        .map(String::as_str)
        .filter(|id| !have.contains(id))
        .collect();
    let extra = have
        .iter()
        .copied()
        .filter(|id| !wanted.iter().any(|w| w == id))
        .collect();
    (missing, extra)
}

/// The changes that bring a VM's `config` to the desired shape, and the changes that wait for
/// a device that does not exist yet.
fn plan(
    want: &api::VmSpec,
    config: &vmm::VmConfig,
    volumes: &HashMap<String, zfs::Volume>,
    nics: &HashMap<String, net::Nic>,
) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut waiting = Vec::new();
    let memory_mib = want.memory_bytes.div_ceil(MIB);
    if config.vcpus != want.vcpus || config.memory_mib != memory_mib {
        changes.push(Change::Resize {
            vcpus: want.vcpus,
            memory_mib,
        });
    }
    let have: Vec<&str> = config.disks.iter().map(|d| d.id.as_str()).collect();
    let (attach, detach) = difference(&want.volume_ids, &have);
    for id in attach {
        match volumes.get(id) {
            Some(volume) => changes.push(Change::AttachDisk(disk(id, volume))),
            None => waiting.push(format!("waiting for volume {id} to attach it")),
        }
    }
    changes.extend(detach.into_iter().map(|id| Change::DetachDisk(id.into())));
    let have: Vec<&str> = config.nics.iter().map(|n| n.id.as_str()).collect();
    let (attach, detach) = difference(&want.nic_ids, &have);
    for id in attach {
        let Some(found) = nics.get(id) else {
            waiting.push(format!("waiting for NIC {id} to attach it"));
            continue;
        };
        changes.push(Change::AttachNic(nic(id, found)));
    }
    changes.extend(detach.into_iter().map(|id| Change::DetachNic(id.into())));
    (changes, waiting)
}

/// Asks mvirt-vmm for one change; returns the VM as it is after it.
async fn apply(
    client: &mut VmServiceClient<DaemonChannel>,
    vm_id: &str,
    change: Change,
) -> Result<Option<vmm::Vm>, tonic::Status> {
    let vm_id = vm_id.to_string();
    let response = match change {
        Change::Resize { vcpus, memory_mib } => {
            let request = vmm::ResizeVmRequest {
                id: vm_id,
                vcpus,
                memory_mib,
            };
            client.resize_vm(request).await?
        }
        Change::AttachDisk(disk) => {
            let disk = Some(disk);
            client
                .attach_disk(vmm::AttachDiskRequest { vm_id, disk })
                .await?
        }
        Change::DetachDisk(disk_id) => {
            client
                .detach_disk(vmm::DetachDiskRequest { vm_id, disk_id })
                .await?
        }
        Change::AttachNic(nic) => {
            let nic = Some(nic);
            client
                .attach_nic(vmm::AttachNicRequest { vm_id, nic })
                .await?
        }
        Change::DetachNic(nic_id) => {
            client
                .detach_nic(vmm::DetachNicRequest { vm_id, nic_id })
                .await?
        }
    };
    Ok(response.into_inner().vm)
}

/// Brings an existing VM's shape to the desired one. Returns the VM as mvirt-vmm has it after
/// the changes, and the problems met (a device that is not ready yet, a refused change).
pub async fn converge(
    client: &mut VmServiceClient<DaemonChannel>,
    want: &api::VmSpec,
    mut vm: vmm::Vm,
    volumes: &HashMap<String, zfs::Volume>,
    nics: &HashMap<String, net::Nic>,
) -> (vmm::Vm, Vec<String>) {
    let Some(config) = vm.config.clone() else {
        return (vm, Vec::new());
    };
    let (changes, mut problems) = plan(want, &config, volumes, nics);
    for change in changes {
        let what = change.describe();
        match apply(client, &want.id, change).await {
            Ok(Some(changed)) => vm = changed,
            Ok(None) => {}
            Err(e) => problems.push(format!("{what}: {}", e.message())),
        }
    }
    (vm, problems)
}

/// The NIC and volume ids that VMs on this node still have in their config: a NIC or volume
/// no longer desired here is deleted only once no VM holds it (a running guest may not have let
/// a detached device go yet).
pub fn in_use(vms: &[vmm::Vm]) -> HashSet<String> {
    vms.iter()
        .filter_map(|vm| vm.config.as_ref())
        .flat_map(|c| {
            c.nics
                .iter()
                .map(|n| n.id.clone())
                .chain(c.disks.iter().map(|d| d.id.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_gets_the_devices_it_lacks_and_loses_those_no_longer_wanted() {
        let want = api::VmSpec {
            vcpus: 2,
            memory_bytes: 512 * MIB,
            volume_ids: vec!["root".into(), "data".into(), "later".into()],
            nic_ids: vec!["n2".into()],
            ..Default::default()
        };
        let config = vmm::VmConfig {
            vcpus: 2,
            memory_mib: 512,
            disks: vec![disk("root", &zfs::Volume::default())],
            nics: vec![nic("n1", &net::Nic::default())],
            ..Default::default()
        };
        let volumes = HashMap::from([("data".to_string(), zfs::Volume::default())]);
        let nics = HashMap::from([("n2".to_string(), net::Nic::default())]);
        let (changes, waiting) = plan(&want, &config, &volumes, &nics);
        assert_eq!(
            changes,
            vec![
                Change::AttachDisk(disk("data", &zfs::Volume::default())),
                Change::AttachNic(nic("n2", &net::Nic::default())),
                Change::DetachNic("n1".into()),
            ]
        );
        assert_eq!(waiting, ["waiting for volume later to attach it"]);
    }

    #[test]
    fn a_new_shape_is_one_resize() {
        let want = api::VmSpec {
            vcpus: 4,
            memory_bytes: MIB + 1,
            ..Default::default()
        };
        let (changes, _) = plan(
            &want,
            &vmm::VmConfig::default(),
            &HashMap::new(),
            &HashMap::new(),
        );
        assert_eq!(
            changes,
            vec![Change::Resize {
                vcpus: 4,
                memory_mib: 2
            }]
        );
    }

    #[test]
    fn devices_in_any_vm_config_are_in_use() {
        let vm = vmm::Vm {
            id: "vm".into(),
            config: Some(vmm::VmConfig {
                disks: vec![vmm::Disk {
                    id: "d1".into(),
                    ..Default::default()
                }],
                nics: vec![vmm::Nic {
                    id: "n1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let used = in_use(&[vm]);
        assert!(used.contains("d1") && used.contains("n1"));
        assert!(!used.contains("n2"));
    }
}
