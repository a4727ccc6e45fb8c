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

use mvirt_api::proto as api;
use mvirt_ebpf::proto as net;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use mvirt_zfs::proto as zfs;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;

/// The VM after a device change, or the problem noted.
fn take(
    r: Result<tonic::Response<vmm::DeviceChangeResponse>, tonic::Status>,
    what: String,
    problems: &mut Vec<String>,
) -> Option<vmm::Vm> {
    match r {
        Ok(r) => r.into_inner().vm,
        Err(e) => {
            problems.push(format!("{what}: {}", e.message()));
            None
        }
    }
}

/// Brings an existing VM's shape to the desired one. Returns the VM as mvirt-vmm has it after
/// the changes, and the problems met (a device that is not ready yet, a refused change).
pub async fn converge(
    client: &mut VmServiceClient<Channel>,
    want: &api::VmSpec,
    mut vm: vmm::Vm,
    volumes: &HashMap<String, zfs::Volume>,
    nics: &HashMap<String, net::Nic>,
) -> (vmm::Vm, Vec<String>) {
    let mut problems = Vec::new();
    let Some(config) = vm.config.clone() else {
        return (vm, problems);
    };
    let memory_mib = want.memory_bytes.div_ceil(MIB);
    if config.vcpus != want.vcpus || config.memory_mib != memory_mib {
        let r = client
            .resize_vm(vmm::ResizeVmRequest {
                id: want.id.clone(),
                vcpus: want.vcpus,
                memory_mib,
            })
            .await;
        if let Some(v) = take(r, "resize".into(), &mut problems) {
            vm = v;
        }
    }

    let have_disks: HashSet<&str> = config.disks.iter().map(|d| d.id.as_str()).collect();
    for id in want
        .volume_ids
        .iter()
        .filter(|id| !have_disks.contains(id.as_str()))
    {
        let Some(volume) = volumes.get(id) else {
            problems.push(format!("waiting for volume {id} to attach it"));
            continue;
        };
        let r = client
            .attach_disk(vmm::AttachDiskRequest {
                vm_id: want.id.clone(),
                disk: Some(vmm::Disk {
                    id: id.clone(),
                    path: volume.path.clone(),
                    read_only: false,
                }),
            })
            .await;
        if let Some(v) = take(r, format!("attach volume {id}"), &mut problems) {
            vm = v;
        }
    }
    for disk in config
        .disks
        .iter()
        .filter(|d| !want.volume_ids.contains(&d.id))
    {
        let r = client
            .detach_disk(vmm::DetachDiskRequest {
                vm_id: want.id.clone(),
                disk_id: disk.id.clone(),
            })
            .await;
        if let Some(v) = take(r, format!("detach volume {}", disk.id), &mut problems) {
            vm = v;
        }
    }

    let have_nics: HashSet<&str> = config.nics.iter().map(|n| n.id.as_str()).collect();
    for id in want
        .nic_ids
        .iter()
        .filter(|id| !have_nics.contains(id.as_str()))
    {
        let Some(nic) = nics.get(id) else {
            problems.push(format!("waiting for NIC {id} to attach it"));
            continue;
        };
        let r = client
            .attach_nic(vmm::AttachNicRequest {
                vm_id: want.id.clone(),
                nic: Some(vmm::Nic {
                    id: id.clone(),
                    tap: nic.tap_name.clone(),
                    mac: nic.mac_address.clone(),
                }),
            })
            .await;
        if let Some(v) = take(r, format!("attach NIC {id}"), &mut problems) {
            vm = v;
        }
    }
    for nic in config.nics.iter().filter(|n| !want.nic_ids.contains(&n.id)) {
        let r = client
            .detach_nic(vmm::DetachNicRequest {
                vm_id: want.id.clone(),
                nic_id: nic.id.clone(),
            })
            .await;
        if let Some(v) = take(r, format!("detach NIC {}", nic.id), &mut problems) {
            vm = v;
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
