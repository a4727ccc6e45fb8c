//! Backups in mvirt-zfs's backup directory: each desired backup the node does not hold yet is
//! taken (CreateBackup, idempotent by id) in a background task, since writing the stream takes
//! as long as the volume is large; passes report it `running` meanwhile. A backup that failed
//! stays failed with mvirt-zfs's reason (no retry loop; a new backup is a new id) until the
//! agent restarts. Backups no longer desired are deleted (DeleteBackup without dependents:
//! the API removes increments together with their base, and a base whose increments are still
//! here waits for the next pass).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

use mvirt_api::proto as api;
use mvirt_api::proto::ResourceStatus;
use mvirt_zfs::proto as zfs;

use super::{by_id, deleted, Context, Converging, Failure, Outcome, Reconciler};
use crate::ledger::Kind;

/// What became of a backup the agent started in the background (until mvirt-zfs lists it).
#[derive(Debug, Clone)]
enum Taking {
    Running,
    Failed(String),
}

/// The backups being taken in the background, by id.
#[derive(Default)]
pub struct Operations {
    taking: Arc<Mutex<HashMap<String, Taking>>>,
}

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Taking>> {
        self.taking.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct BackupReconciler<'a> {
    pub cx: &'a Context,
    pub operations: &'a Operations,
}

/// What mvirt-zfs has: its backups and its volumes (a backup needs its volume here).
pub struct Held {
    backups: HashMap<String, zfs::Backup>,
    volumes: HashMap<String, zfs::Volume>,
}

impl Reconciler for BackupReconciler<'_> {
    const KIND: Kind = Kind::Backup;
    type Desired = api::BackupSpec;
    type Observed = Held;
    type Converged = zfs::Backup;

    async fn observe(&self) -> Result<Held, Status> {
        let mut client = self.cx.zfs();
        let backups = client
            .list_backups(zfs::ListBackupsRequest::default())
            .await?
            .into_inner()
            .backups;
        let volumes = client
            .list_volumes(zfs::ListVolumesRequest {})
            .await?
            .into_inner()
            .volumes;
        Ok(Held {
            backups: by_id(backups, |b| &b.id),
            volumes: by_id(volumes, |v| &v.id),
        })
    }

    async fn converge(&self, want: &api::BackupSpec, seen: &Held) -> Converging<zfs::Backup> {
        if let Some(have) = seen.backups.get(&want.id) {
            self.operations.lock().remove(&want.id);
            return Ok(Outcome::Ready(have.clone()));
        }
        match self.operations.lock().get(&want.id) {
            Some(Taking::Running) => return Ok(Outcome::Running(RUNNING.into())),
            Some(Taking::Failed(reason)) => {
                return Ok(Outcome::Failed(Failure::Reason(reason.clone())))
            }
            None => {}
        }
        if !seen.volumes.contains_key(&want.volume_id) {
            return Ok(Outcome::Failed(Failure::Reason(format!(
                "volume {} is not on this node (deleted before the backup was taken?)",
                want.volume_id
            ))));
        }
        self.cx.claim(Kind::Backup, &want.id)?;
        self.operations
            .lock()
            .insert(want.id.clone(), Taking::Running);
        let taking = self.operations.taking.clone();
        let (mut client, wake, audit) =
            (self.cx.zfs(), self.cx.wake.clone(), self.cx.audit.clone());
        let request = zfs::CreateBackupRequest {
            id: want.id.clone(),
            volume_id: want.volume_id.clone(),
            incremental: want.incremental,
        };
        let id = want.id.clone();
        let trace = mvirt_common::trace::current();
        tokio::spawn(mvirt_common::trace::scope(trace, async move {
            let outcome = match client.create_backup(request).await {
                Ok(done) => {
                    let b = done.into_inner();
                    audit.audit(
                        format!(
                            "backup {id} of volume {} written ({} bytes, sha256 {})",
                            b.volume_id, b.size_bytes, b.sha256
                        ),
                        &[&id, &b.volume_id],
                    );
                    None
                }
                Err(error) => {
                    let reason = format!("create backup: {}", error.message());
                    tracing::warn!(backup = %id, error = %reason, "backup failed");
                    Some(Taking::Failed(reason))
                }
            };
            {
                let mut taking = taking.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Some(failed) => taking.insert(id, failed),
                    None => taking.remove(&id),
                };
            }
            wake.notify_one();
        }));
        Ok(Outcome::Running(RUNNING.into()))
    }

    fn report(&self, _want: &api::BackupSpec, have: &zfs::Backup, status: &mut ResourceStatus) {
        status.backup = Some(api::BackupReport {
            size_bytes: have.size_bytes,
            sha256: have.sha256.clone(),
            base_backup_id: have.base_backup_id.clone(),
            volume_size_bytes: have.volume_size_bytes,
        });
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        let request = zfs::DeleteBackupRequest {
            id: id.to_string(),
            with_dependents: false,
        };
        deleted(cx.zfs().delete_backup(request).await)
    }
}

/// The message of a backup being written (phase `running`).
pub const RUNNING: &str = "writing the backup stream";
