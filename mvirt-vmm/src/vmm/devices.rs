//! Changes to a VM's resources: resize (vCPUs, memory) and hot-plugging disks and NICs, live
//! when the VM runs and the driver can, otherwise applied at its next start.

use crate::hypervisor::HypervisorError;
use crate::model::{DiskSpec, NicSpec, VmSpec};

use super::{lock, DeviceChange, LiveChange, VmEventKind, Vmm, VmmError};

impl Vmm {
    /// Applies a change live when the VM runs and the driver can; otherwise records it for the
    /// next boot.
    pub(super) async fn device_change(
        &self,
        id: &str,
        description: String,
        apply_spec: impl FnOnce(&mut VmSpec),
        live: Option<LiveChange<'_>>,
    ) -> Result<DeviceChange, VmmError> {
        let (applied_live, message) = match live {
            None => (false, "VM is not running: applies at next boot".to_string()),
            Some(fut) => match fut.await {
                Ok(()) => (true, "applied to the running VM".to_string()),
                Err(HypervisorError::Unsupported { driver, what }) => (
                    false,
                    format!("{driver} cannot apply {what} live: recorded for the next boot"),
                ),
                Err(source) => {
                    return Err(VmmError::Hypervisor {
                        id: id.to_string(),
                        source,
                    })
                }
            },
        };
        let vm = self.update(id, VmEventKind::Updated, |vm| {
            apply_spec(&mut vm.spec);
            if !applied_live && vm.state.is_active() {
                vm.pending_changes.push(description.clone());
            }
        })?;
        self.inner.audit.audit(
            format!("VM {}: {description} ({message})", vm.spec.name),
            &[id],
        );
        Ok(DeviceChange {
            vm,
            applied_live,
            message,
        })
    }

    pub(super) fn is_running(&self, id: &str) -> bool {
        lock(&self.inner.runtimes).contains_key(id)
    }

    pub async fn resize(
        &self,
        id: &str,
        vcpus: Option<u32>,
        memory_mib: Option<u64>,
    ) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        let mut new_spec = vm.spec.clone();
        if let Some(v) = vcpus {
            new_spec.vcpus = v;
        }
        if let Some(m) = memory_mib {
            new_spec.memory_mib = m;
        }
        new_spec.validate_shape()?;
        let description = format!(
            "resize to {} vCPU, {} MiB",
            new_spec.vcpus, new_spec.memory_mib
        );
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.resize(&run, vcpus, memory_mib)) as LiveChange<'_>);
        self.device_change(id, description, |spec| *spec = new_spec, live)
            .await
    }

    pub async fn attach_disk(&self, id: &str, disk: DiskSpec) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        if vm.spec.disks.iter().any(|d| d.id == disk.id) {
            return Err(VmmError::DuplicateDevice {
                vm: id.into(),
                kind: "disk",
                device: disk.id,
            });
        }
        let mut spec = vm.spec.clone();
        spec.disks.push(disk.clone());
        spec.validate_shape()?;
        self.check_path("disk", &disk.path)?;
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.add_disk(&run, &disk)) as LiveChange<'_>);
        let description = format!("attach disk {} ({})", disk.id, disk.path);
        self.device_change(id, description, |s| s.disks.push(disk.clone()), live)
            .await
    }

    pub async fn detach_disk(&self, id: &str, disk_id: &str) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        if !vm.spec.disks.iter().any(|d| d.id == disk_id) {
            return Err(VmmError::DeviceNotFound {
                vm: id.into(),
                kind: "disk",
                device: disk_id.into(),
            });
        }
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.remove_disk(&run, disk_id)) as LiveChange<'_>);
        self.device_change(
            id,
            format!("detach disk {disk_id}"),
            |s| s.disks.retain(|d| d.id != disk_id),
            live,
        )
        .await
    }

    pub async fn attach_nic(&self, id: &str, nic: NicSpec) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        if vm.spec.nics.iter().any(|n| n.id == nic.id) {
            return Err(VmmError::DuplicateDevice {
                vm: id.into(),
                kind: "NIC",
                device: nic.id,
            });
        }
        let mut spec = vm.spec.clone();
        spec.nics.push(nic.clone());
        spec.validate_shape()?;
        self.check_tap(&nic.tap)?;
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.add_nic(&run, &nic)) as LiveChange<'_>);
        let description = format!("attach NIC {} (TAP {}, MAC {})", nic.id, nic.tap, nic.mac);
        self.device_change(id, description, |s| s.nics.push(nic.clone()), live)
            .await
    }

    pub async fn detach_nic(&self, id: &str, nic_id: &str) -> Result<DeviceChange, VmmError> {
        let op = self.op_lock(id);
        let _op = op.lock().await;
        let vm = self.load(id)?;
        if !vm.spec.nics.iter().any(|n| n.id == nic_id) {
            return Err(VmmError::DeviceNotFound {
                vm: id.into(),
                kind: "NIC",
                device: nic_id.into(),
            });
        }
        let run = self.run_dir(id);
        let live = self
            .is_running(id)
            .then(|| Box::pin(self.inner.driver.remove_nic(&run, nic_id)) as LiveChange<'_>);
        self.device_change(
            id,
            format!("detach NIC {nic_id}"),
            |s| s.nics.retain(|n| n.id != nic_id),
            live,
        )
        .await
    }
}
