//! Template imports followed in the background.
//!
//! An import can take minutes; a reconcile pass only starts it (or finds the job mvirt-zfs
//! already runs for the template) and hands the job to a follower task that streams
//! `WatchImport` progress into this tracker. Passes read the tracker to report progress, and
//! the follower wakes the agent when the import ends so dependent volumes are cloned at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::daemons::DaemonChannel;
use tokio::sync::Notify;
use tokio_stream::StreamExt;

use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
use mvirt_zfs::proto::{ImportPhase, WatchImportRequest};

/// What the agent knows about a template's import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportState {
    Running { bytes_done: u64, bytes_total: u64 },
    Completed,
    Failed { reason: String },
}

/// Imports being followed, by template id.
#[derive(Default)]
pub struct ImportTracker {
    imports: Mutex<HashMap<String, ImportState>>,
}

impl ImportTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ImportState>> {
        self.imports.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, template_id: &str) -> Option<ImportState> {
        self.lock().get(template_id).cloned()
    }

    pub fn forget(&self, template_id: &str) {
        self.lock().remove(template_id);
    }

    fn set(&self, template_id: &str, state: ImportState) {
        self.lock().insert(template_id.to_string(), state);
    }

    /// Starts following `job_id` for `template_id` unless it is already followed.
    pub fn follow(
        self: &Arc<Self>,
        zfs: ZfsServiceClient<DaemonChannel>,
        template_id: &str,
        job_id: &str,
        wake: Arc<Notify>,
    ) {
        {
            let mut imports = self.lock();
            if matches!(imports.get(template_id), Some(ImportState::Running { .. })) {
                return;
            }
            imports.insert(
                template_id.to_string(),
                ImportState::Running {
                    bytes_done: 0,
                    bytes_total: 0,
                },
            );
        }
        let tracker = self.clone();
        let template_id = template_id.to_string();
        let job_id = job_id.to_string();
        tokio::spawn(mvirt_common::trace::inherit(async move {
            let outcome = follow_job(zfs, &tracker, &template_id, &job_id).await;
            match outcome {
                Ok(state) => tracker.set(&template_id, state),
                // The stream broke (mvirt-zfs restarted?): forget, so the next pass looks the
                // job up again instead of trusting stale progress.
                Err(status) => {
                    tracing::warn!(template = %template_id, error = %status, "lost the import stream");
                    tracker.forget(&template_id);
                }
            }
            wake.notify_one();
        }));
    }
}

async fn follow_job(
    mut zfs: ZfsServiceClient<DaemonChannel>,
    tracker: &ImportTracker,
    template_id: &str,
    job_id: &str,
) -> Result<ImportState, tonic::Status> {
    let mut stream = zfs
        .watch_import(WatchImportRequest {
            job_id: job_id.to_string(),
        })
        .await?
        .into_inner();
    while let Some(job) = stream.next().await {
        let job = job?;
        match ImportPhase::try_from(job.phase).unwrap_or(ImportPhase::Unspecified) {
            ImportPhase::Completed => return Ok(ImportState::Completed),
            ImportPhase::Failed => {
                return Ok(ImportState::Failed {
                    reason: if job.error.is_empty() {
                        "import failed".into()
                    } else {
                        job.error
                    },
                })
            }
            ImportPhase::Cancelled => {
                return Ok(ImportState::Failed {
                    reason: "import cancelled".into(),
                })
            }
            _ => tracker.set(
                template_id,
                ImportState::Running {
                    bytes_done: job.bytes_done,
                    bytes_total: job.bytes_total,
                },
            ),
        }
    }
    Err(tonic::Status::unavailable("import stream ended early"))
}
