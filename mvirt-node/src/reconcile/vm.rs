//! VMs in mvirt-vmm: created once their volumes and NICs exist (until then `pending` with what
//! they wait for), changed after create by [`devices`], and powered as the spec asks by
//! [`power`](super::power). A VM's phase is its hypervisor's state; its addresses are those of
//! its NICs.

use std::collections::HashMap;

use tonic::{Code, Status};

use mvirt_api::proto as api;
use mvirt_api::proto::{Phase, ResourceStatus};
use mvirt_ebpf::proto as net;
use mvirt_vmm::proto as vmm;
use mvirt_zfs::proto as zfs;

use super::nic::report_addresses;
use super::{
    by_id, deleted, migration, power, Context, Converging, Failure, Outcome, Reconciler, Settings,
};
use crate::devices;
use crate::ledger::Kind;

/// Labels the agent puts on every VM it creates.
pub const MANAGED_BY_LABEL: &str = "mvirt.io/managed-by";
pub const NODE_LABEL: &str = "mvirt.io/node-id";
const MIB: u64 = 1024 * 1024;

pub struct VmReconciler<'a> {
    cx: &'a Context,
    power: &'a power::Operations,
    migrations: &'a migration::Operations,
    spec: &'a api::NodeSpec,
    volumes: &'a HashMap<String, zfs::Volume>,
    nics: &'a HashMap<String, net::Nic>,
    /// The desired NICs, for the VMs' addresses.
    nic_specs: HashMap<&'a str, &'a api::NicSpec>,
}

impl<'a> VmReconciler<'a> {
    pub fn new(
        cx: &'a Context,
        power: &'a power::Operations,
        migrations: &'a migration::Operations,
        spec: &'a api::NodeSpec,
        volumes: &'a HashMap<String, zfs::Volume>,
        nics: &'a HashMap<String, net::Nic>,
    ) -> Self {
        Self {
            cx,
            power,
            migrations,
            spec,
            volumes,
            nics,
            nic_specs: spec.nics.iter().map(|n| (n.id.as_str(), n)).collect(),
        }
    }
}

/// A VM here after a pass.
pub struct LocalVm {
    vm: vmm::Vm,
    /// Device changes that could not be made yet (see [`devices::converge`]).
    device_problems: Vec<String>,
    /// This node is the source of the VM's live migration: where it is.
    migration: Option<api::MigrationReport>,
}

impl<'a> VmReconciler<'a> {
    /// The target of a live migration: the VM is prepared to receive it (not started), until
    /// the source has it run here.
    async fn converge_incoming(
        &self,
        want: &api::VmSpec,
        seen: &HashMap<String, vmm::Vm>,
    ) -> Converging<LocalVm> {
        power::adopt_restart_generation(self.cx, want);
        let here = seen.get(&want.id);
        let ready = |vm: vmm::Vm| {
            Ok(Outcome::Ready(LocalVm {
                vm,
                device_problems: Vec::new(),
                migration: None,
            }))
        };
        if let Some(vm) = here.filter(|vm| vm.state == vmm::VmState::Running as i32) {
            return ready(vm.clone());
        }
        let config = match vm_config(want, self.volumes, self.nics, &self.cx.settings) {
            Ok(config) => config,
            Err(waiting) => return Ok(Outcome::Pending(waiting)),
        };
        match migration::prepare_incoming(self.cx, want, config, here.is_some()).await? {
            Ok(vm) => ready(vm),
            Err(error) => Ok(Outcome::Failed(Failure::Call {
                what: "prepare the incoming migration",
                error,
            })),
        }
    }
}

impl Reconciler for VmReconciler<'_> {
    const KIND: Kind = Kind::Vm;
    type Desired = api::VmSpec;
    type Observed = HashMap<String, vmm::Vm>;
    type Converged = LocalVm;

    async fn observe(&self) -> Result<Self::Observed, Status> {
        Ok(by_id(self.cx.vms_here().await?, |v| &v.id))
    }

    async fn converge(&self, want: &Self::Desired, seen: &Self::Observed) -> Converging<LocalVm> {
        if !want.incoming_migration_id.is_empty() {
            return self.converge_incoming(want, seen).await;
        }
        let node_id = &self.cx.settings.node_id;
        if let (Some(grant), Some(vm)) = (
            migration::outgoing_grant(self.spec, node_id, &want.id),
            seen.get(&want.id),
        ) {
            // Migrating away: devices and power wait until the migration ended.
            self.migrations.start(self.cx, grant, vm);
            return Ok(Outcome::Ready(LocalVm {
                vm: vm.clone(),
                device_problems: Vec::new(),
                migration: self.migrations.report(&grant.id),
            }));
        }
        let mut client = self.cx.vmm();
        let (vm, device_problems) = match seen.get(&want.id) {
            Some(vm) => {
                devices::converge(&mut client, want, vm.clone(), self.volumes, self.nics).await
            }
            None => {
                let config = match vm_config(want, self.volumes, self.nics, &self.cx.settings) {
                    Ok(config) => config,
                    Err(waiting) => return Ok(Outcome::Pending(waiting)),
                };
                let request = vmm::CreateVmRequest {
                    id: want.id.clone(),
                    config: Some(config),
                };
                let call = client.create_vm(request);
                match self.cx.create(Kind::Vm, "VM", &want.id, call).await? {
                    Ok(vm) => (vm, Vec::new()),
                    Err(error) => {
                        return Ok(Outcome::Failed(Failure::Call {
                            what: "create VM",
                            error,
                        }))
                    }
                }
            }
        };
        let vm = power::converge(self.cx, self.power, want, vm).await;
        Ok(Outcome::Ready(LocalVm {
            vm,
            device_problems,
            migration: None,
        }))
    }

    fn report(&self, want: &api::VmSpec, have: &LocalVm, status: &mut ResourceStatus) {
        let vm = &have.vm;
        status.phase = phase(vm) as i32;
        status.message = vm.state_reason.clone();
        for nic in want
            .nic_ids
            .iter()
            .filter_map(|id| self.nic_specs.get(id.as_str()))
        {
            report_addresses(status, nic);
        }
        status
            .fields
            .insert("hypervisor".into(), vm.hypervisor.clone());
        if vm.pid != 0 {
            status.fields.insert("pid".into(), vm.pid.to_string());
        }
        status
            .conditions
            .extend(conditions(&vm.pending_changes, &have.device_problems));
        status.migration = have.migration.clone();
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        let mut client = cx.vmm();
        // The VM goes first: kill it (its owner asked for deletion), then delete.
        match client
            .kill_vm(vmm::KillVmRequest { id: id.to_string() })
            .await
        {
            Ok(_) => {}
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {}
            Err(s) => return Err(s),
        }
        let request = vmm::DeleteVmRequest {
            id: id.to_string(),
            force: true,
        };
        deleted(client.delete_vm(request).await)
    }
}

/// A VM's phase: its hypervisor's state.
fn phase(vm: &vmm::Vm) -> Phase {
    match vmm::VmState::try_from(vm.state).unwrap_or_default() {
        vmm::VmState::Running => Phase::Running,
        vmm::VmState::Starting => Phase::Creating,
        vmm::VmState::Stopping => Phase::Stopping,
        vmm::VmState::Stopped => Phase::Stopped,
        vmm::VmState::Failed => Phase::Failed,
        vmm::VmState::Unspecified => Phase::Pending,
    }
}

/// `restart_required` for changes mvirt-vmm keeps for the next boot, `devices_pending` for
/// device changes that could not be made yet.
fn conditions(pending_changes: &[String], device_problems: &[String]) -> Vec<api::Condition> {
    let mut conditions = Vec::new();
    if !pending_changes.is_empty() {
        conditions.push(api::Condition {
            r#type: "restart_required".into(),
            status: "true".into(),
            message: format!("applies at the next boot: {}", pending_changes.join("; ")),
        });
    }
    if !device_problems.is_empty() {
        conditions.push(api::Condition {
            r#type: "devices_pending".into(),
            status: "true".into(),
            message: device_problems.join("; "),
        });
    }
    conditions
}

/// The devices for `ids`, made by `device` from what exists here; or what the VM waits for.
fn devices_for<T, D>(
    ids: &[String],
    existing: &HashMap<String, T>,
    noun: &str,
    device: fn(&str, &T) -> D,
) -> Result<Vec<D>, String> {
    ids.iter()
        .map(|id| {
            let found = existing.get(id);
            found
                .map(|t| device(id, t))
                .ok_or_else(|| format!("waiting for {noun} {id}"))
        })
        .collect()
}

/// The VmConfig for a spec, or why it cannot be built yet.
fn vm_config(
    want: &api::VmSpec,
    volumes: &HashMap<String, zfs::Volume>,
    nics: &HashMap<String, net::Nic>,
    settings: &Settings,
) -> Result<vmm::VmConfig, String> {
    let disks = devices_for(&want.volume_ids, volumes, "volume", devices::disk)?;
    let vm_nics = devices_for(&want.nic_ids, nics, "NIC", devices::nic)?;
    let root = want.volume_ids.first().and_then(|id| volumes.get(id));
    let mut labels = HashMap::new();
    labels.insert(MANAGED_BY_LABEL.to_string(), "mvirt-node".to_string());
    labels.insert(NODE_LABEL.to_string(), settings.node_id.clone());
    Ok(vmm::VmConfig {
        name: want.name.clone(),
        vcpus: want.vcpus,
        memory_mib: want.memory_bytes.div_ceil(MIB),
        boot: Some(boot(want, root, settings)?),
        disks,
        nics: vm_nics,
        cloud_init: Some(vmm::CloudInit {
            user_data: want.user_data.clone(),
            ssh_authorized_keys: want.ssh_authorized_keys.clone(),
            network_config: String::new(),
            hostname: if want.hostname.is_empty() {
                want.name.clone()
            } else {
                want.hostname.clone()
            },
        }),
        hugepages: want.hugepages,
        nested_virtualization: want.nested_virtualization,
        labels,
    })
}

/// Direct kernel boot from the root volume's kernel, or UEFI firmware; unspecified means direct
/// when the root volume has a kernel.
fn boot(
    want: &api::VmSpec,
    root: Option<&zfs::Volume>,
    settings: &Settings,
) -> Result<vmm::vm_config::Boot, String> {
    let direct = match api::BootMode::try_from(want.boot_mode).unwrap_or_default() {
        api::BootMode::DirectKernel => true,
        api::BootMode::Uefi => false,
        api::BootMode::Unspecified => root.is_some_and(|v| !v.kernel_path.is_empty()),
    };
    if !direct {
        let firmware = settings
            .firmware
            .clone()
            .ok_or("UEFI boot needs firmware: start mvirt-node with --firmware")?;
        return Ok(vmm::vm_config::Boot::Firmware(vmm::FirmwareBoot {
            firmware,
        }));
    }
    let root = root.ok_or("direct kernel boot needs a root volume")?;
    if root.kernel_path.is_empty() {
        return Err(format!(
            "direct kernel boot asked for, but root volume {} has no kernel",
            root.id
        ));
    }
    let cmdline = if want.kernel_cmdline.is_empty() {
        root.cmdline.clone()
    } else {
        want.kernel_cmdline.clone()
    };
    Ok(vmm::vm_config::Boot::Kernel(vmm::KernelBoot {
        kernel: root.kernel_path.clone(),
        initramfs: root.initramfs_path.clone(),
        cmdline,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(firmware: Option<&str>) -> Settings {
        Settings {
            node_id: "node-1".into(),
            firmware: firmware.map(str::to_string),
            stop_timeout_secs: 30,
        }
    }

    fn root_with_kernel() -> HashMap<String, zfs::Volume> {
        HashMap::from([(
            "root".to_string(),
            zfs::Volume {
                id: "root".into(),
                path: "/dev/zvol/root".into(),
                kernel_path: "/k".into(),
                cmdline: "console=ttyS0".into(),
                ..Default::default()
            },
        )])
    }

    fn vm(volume_ids: &[&str], nic_ids: &[&str]) -> api::VmSpec {
        api::VmSpec {
            id: "vm".into(),
            name: "web".into(),
            volume_ids: volume_ids.iter().map(|s| s.to_string()).collect(),
            nic_ids: nic_ids.iter().map(|s| s.to_string()).collect(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA".into()],
            memory_bytes: MIB + 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_vm_waits_for_its_volumes_and_nics() {
        let volumes = root_with_kernel();
        let s = settings(None);
        let err = vm_config(&vm(&["root", "data"], &[]), &volumes, &HashMap::new(), &s);
        assert_eq!(err.unwrap_err(), "waiting for volume data");
        let err = vm_config(&vm(&["root"], &["n1"]), &volumes, &HashMap::new(), &s);
        assert_eq!(err.unwrap_err(), "waiting for NIC n1");
    }

    #[test]
    fn a_root_volume_with_a_kernel_boots_it_with_its_cmdline_and_the_vm_is_labelled() {
        let config = vm_config(
            &vm(&["root"], &[]),
            &root_with_kernel(),
            &HashMap::new(),
            &settings(None),
        )
        .unwrap();
        let Some(vmm::vm_config::Boot::Kernel(kernel)) = config.boot else {
            panic!("expected direct kernel boot");
        };
        assert_eq!(
            (kernel.kernel.as_str(), kernel.cmdline.as_str()),
            ("/k", "console=ttyS0")
        );
        assert_eq!(config.memory_mib, 2);
        assert_eq!(config.labels[MANAGED_BY_LABEL], "mvirt-node");
        assert_eq!(config.labels[NODE_LABEL], "node-1");
        let cloud_init = config.cloud_init.unwrap();
        assert_eq!(cloud_init.hostname, "web");
        assert_eq!(cloud_init.ssh_authorized_keys, ["ssh-ed25519 AAAA"]);
    }

    #[test]
    fn uefi_boot_needs_firmware() {
        let mut want = vm(&["root"], &[]);
        want.boot_mode = api::BootMode::Uefi as i32;
        let volumes = root_with_kernel();
        let err = vm_config(&want, &volumes, &HashMap::new(), &settings(None)).unwrap_err();
        assert!(err.contains("--firmware"));
        let config = vm_config(&want, &volumes, &HashMap::new(), &settings(Some("/fw"))).unwrap();
        assert!(matches!(
            config.boot,
            Some(vmm::vm_config::Boot::Firmware(vmm::FirmwareBoot { firmware })) if firmware == "/fw"
        ));
    }

    #[test]
    fn direct_boot_without_a_kernel_says_so() {
        let mut want = vm(&["root"], &[]);
        want.boot_mode = api::BootMode::DirectKernel as i32;
        let mut volumes = root_with_kernel();
        volumes.get_mut("root").unwrap().kernel_path.clear();
        let err = vm_config(&want, &volumes, &HashMap::new(), &settings(None)).unwrap_err();
        assert!(err.contains("has no kernel"), "{err}");
    }

    #[test]
    fn pending_changes_and_device_problems_become_conditions() {
        assert!(conditions(&[], &[]).is_empty());
        let both = conditions(&["vcpus 2 -> 4".into()], &["attach NIC n: busy".into()]);
        assert_eq!(both[0].r#type, "restart_required");
        assert_eq!(both[0].message, "applies at the next boot: vcpus 2 -> 4");
        assert_eq!(both[1].r#type, "devices_pending");
    }

    #[test]
    fn a_vm_phase_is_its_hypervisor_state() {
        let vm = |state: vmm::VmState| vmm::Vm {
            state: state as i32,
            ..Default::default()
        };
        assert_eq!(phase(&vm(vmm::VmState::Starting)), Phase::Creating);
        assert_eq!(phase(&vm(vmm::VmState::Stopped)), Phase::Stopped);
        assert_eq!(phase(&vm(vmm::VmState::Unspecified)), Phase::Pending);
    }
}
