//! Volumes in mvirt-zfs: created empty or cloned from a ready template, grown when the desired
//! size is larger; each existing volume's snapshots and rollbacks are converged by
//! [`snapshots`]. Existing volumes are handed to the VMs.

use std::collections::HashMap;

use tonic::Status;

use mvirt_api::proto as api;
use mvirt_api::proto::ResourceStatus;
use mvirt_common::names::local_name;
use mvirt_vmm::proto as vmm;
use mvirt_zfs::proto as zfs;

use super::{by_id, deleted, Context, Converging, Failure, Outcome, Reconciler};
use crate::ledger::Kind;
use crate::snapshots::{self, SnapshotOutcome};

pub struct VolumeReconciler<'a> {
    pub cx: &'a Context,
    pub spec: &'a api::NodeSpec,
    /// The templates ready on this node.
    pub templates: &'a HashMap<String, zfs::Template>,
}

/// The volumes mvirt-zfs has, and the VMs here when a rollback must know which run.
pub struct Volumes {
    volumes: HashMap<String, zfs::Volume>,
    local_vms: HashMap<String, vmm::Vm>,
}

/// A volume on this node after a pass, with its snapshots' states.
pub struct LocalVolume {
    volume: zfs::Volume,
    snapshots: SnapshotOutcome,
}

/// The volumes themselves, by id (what the VMs need).
pub fn objects(volumes: HashMap<String, LocalVolume>) -> HashMap<String, zfs::Volume> {
    volumes
        .into_iter()
        .map(|(id, local)| (id, local.volume))
        .collect()
}

/// How a volume that does not exist yet is made.
#[derive(Debug, PartialEq, Eq)]
enum Creation {
    Empty(zfs::CreateVolumeRequest),
    FromTemplate(zfs::CloneFromTemplateRequest),
    /// Restored from a backup on this node (mvirt-zfs checks every stream file's SHA-256
    /// first; a mismatch fails the volume with the file named).
    FromBackup(zfs::RestoreBackupRequest),
    /// Its template is not ready here yet.
    WaitForTemplate,
}

fn creation(want: &api::VolumeSpec, templates: &HashMap<String, zfs::Template>) -> Creation {
    let name = local_name(&want.name, &want.id);
    if !want.restore_backup_id.is_empty() {
        Creation::FromBackup(zfs::RestoreBackupRequest {
            backup_id: want.restore_backup_id.clone(),
            volume_id: want.id.clone(),
            name,
        })
    } else if want.template_id.is_empty() {
        Creation::Empty(zfs::CreateVolumeRequest {
            id: want.id.clone(),
            name,
            size_bytes: want.size_bytes,
        })
    } else if templates.contains_key(&want.template_id) {
        Creation::FromTemplate(zfs::CloneFromTemplateRequest {
            template_id: want.template_id.clone(),
            volume_id: want.id.clone(),
            name,
            size_bytes: want.size_bytes,
        })
    } else {
        Creation::WaitForTemplate
    }
}

impl Reconciler for VolumeReconciler<'_> {
    const KIND: Kind = Kind::Volume;
    const HELD_BY_VMS: bool = true;
    type Desired = api::VolumeSpec;
    type Observed = Volumes;
    type Converged = LocalVolume;

    async fn observe(&self) -> Result<Volumes, Status> {
        let request = zfs::ListVolumesRequest {};
        let listed = self.cx.zfs().list_volumes(request).await?;
        let volumes = listed.into_inner().volumes;
        // A pending rollback must know whether the volume's VMs run here.
        let rollback_pending =
            self.spec.volumes.iter().any(|v| {
                v.rollback_generation > snapshots::applied_generation(&self.cx.ledger, &v.id)
            });
        let local_vms = if rollback_pending {
            by_id(self.cx.vms_here().await?, |v| &v.id)
        } else {
            HashMap::new()
        };
        Ok(Volumes {
            volumes: by_id(volumes, |v| &v.id),
            local_vms,
        })
    }

    async fn converge(
        &self,
        want: &Self::Desired,
        seen: &Self::Observed,
    ) -> Converging<LocalVolume> {
        if let Some(have) = seen.volumes.get(&want.id) {
            return Ok(self.update(want, have, seen).await);
        }
        let mut client = self.cx.zfs();
        if want.promote_replica {
            // An HA failover moved the volume here: this node holds its replica (same id),
            // which becomes the volume (mvirt-zfs PromoteReplica, idempotent).
            let request = zfs::PromoteReplicaRequest {
                volume_id: want.id.clone(),
            };
            let call = client.promote_replica(request);
            let promoted = self
                .cx
                .create(Kind::Volume, "volume (promoted replica)", &want.id, call)
                .await?;
            let promoted = promoted.map(|volume| LocalVolume {
                volume,
                snapshots: SnapshotOutcome::default(),
            });
            return Ok(Outcome::of_call("promote replica", promoted));
        }
        let created = match creation(want, self.templates) {
            Creation::WaitForTemplate => {
                return Ok(Outcome::Pending(format!(
                    "waiting for template {} to be imported",
                    want.template_id
                )))
            }
            Creation::Empty(request) => {
                let call = client.create_volume(request);
                self.cx
                    .create(Kind::Volume, "volume", &want.id, call)
                    .await?
            }
            Creation::FromTemplate(request) => {
                let call = client.clone_from_template(request);
                self.cx
                    .create(Kind::Volume, "volume", &want.id, call)
                    .await?
            }
            Creation::FromBackup(request) => {
                let call = client.restore_backup(request);
                let restored = self
                    .cx
                    .create(Kind::Volume, "volume", &want.id, call)
                    .await?;
                // A restore keeps the backed-up size; grow it when asked for more.
                let restored = match restored {
                    Ok(volume) if want.size_bytes > volume.size_bytes => client
                        .resize_volume(zfs::ResizeVolumeRequest {
                            id: want.id.clone(),
                            size_bytes: want.size_bytes,
                        })
                        .await
                        .map(tonic::Response::into_inner),
                    other => other,
                };
                return Ok(match restored {
                    Ok(volume) => Outcome::Ready(LocalVolume {
                        volume,
                        snapshots: SnapshotOutcome::default(),
                    }),
                    Err(error) => Outcome::Failed(Failure::Call {
                        what: "restore backup",
                        error,
                    }),
                });
            }
        };
        let created = created.map(|volume| LocalVolume {
            volume,
            snapshots: SnapshotOutcome::default(),
        });
        Ok(Outcome::of_call("create volume", created))
    }

    fn report(&self, _want: &api::VolumeSpec, have: &LocalVolume, status: &mut ResourceStatus) {
        status.used_bytes = have.volume.used_bytes;
        status.message = have.snapshots.rollback_problem.clone();
        status.snapshots = have.snapshots.snapshots.clone();
        status.rollback_generation = have.snapshots.rollback_generation;
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        let request = zfs::DeleteVolumeRequest {
            id: id.to_string(),
            force: false,
        };
        deleted(cx.zfs().delete_volume(request).await)
    }
}

impl VolumeReconciler<'_> {
    /// Grows an existing volume when asked to, then converges its snapshots.
    async fn update(
        &self,
        want: &api::VolumeSpec,
        have: &zfs::Volume,
        seen: &Volumes,
    ) -> Outcome<LocalVolume> {
        let mut client = self.cx.zfs();
        let mut resized = Ok(have.clone());
        if want.size_bytes > have.size_bytes {
            resized = client
                .resize_volume(zfs::ResizeVolumeRequest {
                    id: want.id.clone(),
                    size_bytes: want.size_bytes,
                })
                .await
                .map(tonic::Response::into_inner);
        }
        let users = snapshots::running_users(self.spec, &seen.local_vms, &want.id);
        let snapshots =
            snapshots::converge(&mut client, &self.cx.ledger, &self.cx.audit, want, &users).await;
        match resized {
            Ok(volume) => Outcome::Ready(LocalVolume { volume, snapshots }),
            Err(error) => Outcome::Degraded(
                LocalVolume {
                    volume: have.clone(),
                    snapshots,
                },
                Failure::Call {
                    what: "resize",
                    error,
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_stay_unique_across_projects_in_one_millisecond() {
        // UUIDv7 ids minted in the same millisecond share their first 13 characters.
        let a = local_name("web", "0190f3a2-7c41-7a6b-9c1d-7e5a3b2c1d0f");
        let b = local_name("web", "0190f3a2-7c41-7b6b-9c1d-7e5a3b2c1d0f");
        assert_ne!(a, b);
        assert_eq!(a, "web-0190f3a27c417a6b9c1d7e5a3b2c1d0f");
    }

    #[test]
    fn a_volume_is_cloned_only_from_a_template_ready_here() {
        let mut templates = HashMap::new();
        let empty = api::VolumeSpec::default();
        let cloned = api::VolumeSpec {
            template_id: "t".into(),
            ..Default::default()
        };
        assert!(matches!(creation(&empty, &templates), Creation::Empty(_)));
        assert_eq!(creation(&cloned, &templates), Creation::WaitForTemplate);
        templates.insert("t".to_string(), zfs::Template::default());
        let Creation::FromTemplate(request) = creation(&cloned, &templates) else {
            panic!("expected a clone");
        };
        assert_eq!(request.template_id, "t");
    }
}
