//! Creating, reading, listing and deleting VM records (a delete also ends the VM's process).

use std::collections::BTreeMap;

use crate::model::{now_ms, VmRecord, VmSpec, VmState};

use super::{VmEventKind, Vmm, VmmError};

impl Vmm {
    /// Creates a VM (stopped). Idempotent: the same id and spec returns the existing VM.
    pub async fn create(&self, id: &str, spec: VmSpec) -> Result<VmRecord, VmmError> {
        mvirt_common::validate::resource_id("VM id", id)?;
        spec.validate_shape()?;
        self.serialised(
            id,
            |vmm, id| async move { vmm.create_locked(&id, spec).await },
        )
        .await
    }

    pub(super) async fn create_locked(&self, id: &str, spec: VmSpec) -> Result<VmRecord, VmmError> {
        if let Some(existing) = self.inner.store.get(id)? {
            return if existing.spec == spec {
                Ok(existing)
            } else {
                Err(VmmError::AlreadyExists(id.to_string()))
            };
        }
        self.validate_spec(&spec)?;
        let now = now_ms();
        let vm = VmRecord {
            id: id.to_string(),
            spec,
            state: VmState::Stopped,
            state_reason: "created".into(),
            hypervisor: self.inner.driver.name().to_string(),
            process: None,
            created_at_ms: now,
            updated_at_ms: now,
            started_at_ms: 0,
            pending_changes: vec![],
        };
        self.inner.store.insert(&vm)?;
        self.inner.audit.audit(
            format!(
                "created VM {} ({} vCPU, {} MiB)",
                vm.spec.name, vm.spec.vcpus, vm.spec.memory_mib
            ),
            &[id],
        );
        self.publish(VmEventKind::Created, &vm);
        Ok(vm)
    }

    pub fn get(&self, id: &str) -> Result<VmRecord, VmmError> {
        self.load(id)
    }

    /// Every VM carrying all labels of `selector`.
    pub fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<VmRecord>, VmmError> {
        Ok(self
            .inner
            .store
            .list()?
            .into_iter()
            .filter(|vm| {
                selector
                    .iter()
                    .all(|(k, v)| vm.spec.labels.get(k) == Some(v))
            })
            .collect())
    }

    /// Deletes a stopped VM; a running one only with `force` (killed first). Ends with no
    /// hypervisor process of the VM and no record.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), VmmError> {
        self.serialised(id, move |vmm, id| async move {
            vmm.delete_locked(&id, force).await
        })
        .await
    }

    pub(super) async fn delete_locked(&self, id: &str, force: bool) -> Result<(), VmmError> {
        let vm = self.load(id)?;
        if vm.state.is_active() {
            if !force {
                return Err(VmmError::Running(id.to_string()));
            }
            self.kill_locked(id, "killed: VM deleted with force")
                .await?;
        }
        let vm = self.load(id).unwrap_or(vm);
        let run = self.run_dir(id);
        // Whatever the record says, no process of this VM survives its deletion.
        self.kill_untracked(id, &run).await;
        if let Err(err) = std::fs::remove_dir_all(run.path()) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm = id, error = %err, "cannot remove run directory");
            }
        }
        self.inner.store.delete(id)?;
        self.inner
            .audit
            .audit(format!("deleted VM {}", vm.spec.name), &[id]);
        self.publish(VmEventKind::Deleted, &vm);
        Ok(())
    }
}
