//! Templates in mvirt-zfs: imported from their URL (followed in the background by
//! [`ImportTracker`](crate::imports::ImportTracker)), or promoted from a volume's snapshot on
//! this node. A cancelled import is stopped and none is started; a template deleted while it
//! imports has its import cancelled first. Ready templates are handed to the volumes.

use std::collections::HashMap;

use tokio::sync::OnceCell;
use tonic::Status;

use mvirt_api::proto as api;
use mvirt_common::names::local_name;
use mvirt_zfs::proto as zfs;

use super::{by_id, deleted, Context, Converging, Failure, Outcome, Reconciler};
use crate::imports::ImportState;
use crate::ledger::Kind;

pub struct TemplateReconciler<'a> {
    pub cx: &'a Context,
}

/// The templates mvirt-zfs has, and its import jobs (listed only when a pass needs them).
pub struct Templates {
    templates: HashMap<String, zfs::Template>,
    jobs: OnceCell<Vec<zfs::ImportJob>>,
}

/// What a desired template needs on this node.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    /// Ready here (an import cancelled after it finished keeps its copy).
    Ready(&'a zfs::Template),
    /// The user cancelled the import: stop what runs, start nothing.
    Cancel,
    /// The import this agent follows is at work.
    Importing { bytes_done: u64, bytes_total: u64 },
    /// The import this agent followed failed.
    ImportFailed(String),
    /// Copy a volume's snapshot on this node.
    Promote,
    /// Follow mvirt-zfs's running import job (after an agent restart), or start one.
    Import,
}

fn step<'a>(
    want: &api::TemplateSpec,
    have: Option<&'a zfs::Template>,
    followed: Option<ImportState>,
) -> Step<'a> {
    if let Some(have) = have.filter(|t| t.state == zfs::TemplateState::Ready as i32) {
        return Step::Ready(have);
    }
    if want.import_cancelled {
        return Step::Cancel;
    }
    match followed {
        Some(ImportState::Running {
            bytes_done,
            bytes_total,
        }) => Step::Importing {
            bytes_done,
            bytes_total,
        },
        Some(ImportState::Failed { reason }) => Step::ImportFailed(reason),
        // Completed but not listed as ready yet: look again.
        Some(ImportState::Completed) | None if !want.source_snapshot_id.is_empty() => Step::Promote,
        Some(ImportState::Completed) | None => Step::Import,
    }
}

/// Whether an import job is still at work.
fn import_running(job: &zfs::ImportJob) -> bool {
    matches!(
        zfs::ImportPhase::try_from(job.phase),
        Ok(zfs::ImportPhase::Pending
            | zfs::ImportPhase::Downloading
            | zfs::ImportPhase::Converting
            | zfs::ImportPhase::Finalizing)
    )
}

/// Cancels the running imports of a template; `why` goes into the audit entry.
async fn cancel_imports(cx: &Context, template_id: &str, why: &str) -> Result<(), Status> {
    let mut client = cx.zfs();
    let jobs = client
        .list_import_jobs(zfs::ListImportJobsRequest {})
        .await?
        .into_inner()
        .jobs;
    for job in jobs
        .iter()
        .filter(|j| j.template_id == template_id && import_running(j))
    {
        client
            .cancel_import_job(zfs::CancelImportJobRequest {
                job_id: job.id.clone(),
            })
            .await?;
        cx.audit.audit(
            format!("cancelled the import of {why} {template_id}"),
            &[template_id],
        );
    }
    Ok(())
}

impl Reconciler for TemplateReconciler<'_> {
    const KIND: Kind = Kind::Template;
    type Desired = api::TemplateSpec;
    type Observed = Templates;
    type Converged = zfs::Template;

    async fn observe(&self) -> Result<Templates, Status> {
        let request = zfs::ListTemplatesRequest {};
        let listed = self.cx.zfs().list_templates(request).await?;
        let templates = listed.into_inner().templates;
        Ok(Templates {
            templates: by_id(templates, |t| &t.id),
            jobs: OnceCell::new(),
        })
    }

    async fn converge(
        &self,
        want: &Self::Desired,
        seen: &Self::Observed,
    ) -> Converging<zfs::Template> {
        let have = seen.templates.get(&want.id);
        match step(want, have, self.cx.imports.get(&want.id)) {
            Step::Ready(have) => Ok(Outcome::Ready(have.clone())),
            Step::Cancel => {
                cancel_imports(self.cx, &want.id, "template").await?;
                Ok(Outcome::Failed(Failure::Reason("import cancelled".into())))
            }
            Step::Importing {
                bytes_done,
                bytes_total,
            } => Ok(Outcome::Importing {
                bytes_done,
                bytes_total,
            }),
            Step::ImportFailed(reason) => Ok(Outcome::Failed(Failure::Reason(reason))),
            Step::Promote => self.promote(want).await,
            Step::Import => self.import(want, seen).await,
        }
    }

    fn report(
        &self,
        _want: &api::TemplateSpec,
        have: &zfs::Template,
        status: &mut api::ResourceStatus,
    ) {
        status.import_bytes_done = have.size_bytes;
        status.import_bytes_total = have.size_bytes;
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        // A template deleted while it imports: the import is cancelled, not finished.
        cancel_imports(cx, id, "deleted template").await?;
        let request = zfs::DeleteTemplateRequest {
            id: id.to_string(),
            detach_clones: false,
        };
        deleted(cx.zfs().delete_template(request).await)?;
        cx.imports.forget(id);
        Ok(())
    }
}

impl TemplateReconciler<'_> {
    /// Promotes a volume's snapshot on this node to the template: copied, not imported.
    async fn promote(&self, want: &api::TemplateSpec) -> Result<Outcome<zfs::Template>, Status> {
        self.cx.claim(Kind::Template, &want.id)?;
        let promoted = self
            .cx
            .zfs()
            .promote_snapshot_to_template(zfs::PromoteSnapshotToTemplateRequest {
                volume_id: want.source_volume_id.clone(),
                snapshot_id: want.source_snapshot_id.clone(),
                template_id: want.id.clone(),
                name: local_name(&want.name, &want.id),
            })
            .await
            .map(|template| {
                self.cx.audit.audit(
                    format!(
                        "promoted snapshot {} of volume {} to template {}",
                        want.source_snapshot_id, want.source_volume_id, want.id
                    ),
                    &[&want.id, &want.source_volume_id, &want.source_snapshot_id],
                );
                template.into_inner()
            });
        Ok(Outcome::of_call("promote snapshot", promoted))
    }

    /// Follows mvirt-zfs's running import of the template (an agent restart), or starts one.
    async fn import(
        &self,
        want: &api::TemplateSpec,
        seen: &Templates,
    ) -> Result<Outcome<zfs::Template>, Status> {
        let mut client = self.cx.zfs();
        let jobs = seen
            .jobs
            .get_or_try_init(|| async {
                let jobs = client
                    .clone()
                    .list_import_jobs(zfs::ListImportJobsRequest {})
                    .await?;
                Ok::<_, Status>(jobs.into_inner().jobs)
            })
            .await?;
        let running = jobs
            .iter()
            .find(|j| j.template_id == want.id && import_running(j));
        let job_id = match running {
            Some(job) => job.id.clone(),
            None => {
                self.cx.claim(Kind::Template, &want.id)?;
                let started = client
                    .import_template(zfs::ImportTemplateRequest {
                        id: want.id.clone(),
                        name: local_name(&want.name, &want.id),
                        source_url: want.source_url.clone(),
                        format: want.format,
                        sha256: want.sha256.clone(),
                        kernel_url: want.kernel_url.clone(),
                        initramfs_url: want.initramfs_url.clone(),
                        kernel_sha256: want.kernel_sha256.clone(),
                        initramfs_sha256: want.initramfs_sha256.clone(),
                        cmdline: want.cmdline.clone(),
                    })
                    .await;
                match started {
                    Ok(job) => {
                        self.cx.audit.audit(
                            format!("importing template {} from {}", want.id, want.source_url),
                            &[&want.id],
                        );
                        job.into_inner().id
                    }
                    Err(error) => {
                        return Ok(Outcome::Failed(Failure::Call {
                            what: "import",
                            error,
                        }))
                    }
                }
            }
        };
        self.cx
            .imports
            .follow(client, &want.id, &job_id, self.cx.wake.clone());
        Ok(Outcome::Importing {
            bytes_done: 0,
            bytes_total: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(state: zfs::TemplateState) -> zfs::Template {
        zfs::Template {
            id: "t".into(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_ready_template_stays_ready_even_when_its_import_is_cancelled() {
        let want = api::TemplateSpec {
            import_cancelled: true,
            ..Default::default()
        };
        let ready = template(zfs::TemplateState::Ready);
        assert_eq!(step(&want, Some(&ready), None), Step::Ready(&ready));
        let importing = template(zfs::TemplateState::Importing);
        assert_eq!(step(&want, Some(&importing), None), Step::Cancel);
    }

    #[test]
    fn a_followed_import_is_reported_until_it_completes_then_looked_at_again() {
        let want = api::TemplateSpec::default();
        let running = ImportState::Running {
            bytes_done: 1,
            bytes_total: 2,
        };
        assert_eq!(
            step(&want, None, Some(running)),
            Step::Importing {
                bytes_done: 1,
                bytes_total: 2
            }
        );
        let failed = ImportState::Failed {
            reason: "kernel checksum mismatch".into(),
        };
        assert_eq!(
            step(&want, None, Some(failed)),
            Step::ImportFailed("kernel checksum mismatch".into())
        );
        assert_eq!(
            step(&want, None, Some(ImportState::Completed)),
            Step::Import
        );
        assert_eq!(step(&want, None, None), Step::Import);
    }

    #[test]
    fn a_template_from_a_snapshot_is_promoted_not_imported() {
        let want = api::TemplateSpec {
            source_snapshot_id: "s".into(),
            ..Default::default()
        };
        assert_eq!(step(&want, None, None), Step::Promote);
    }

    #[test]
    fn only_jobs_at_work_count_as_running() {
        let job = |phase: zfs::ImportPhase| zfs::ImportJob {
            phase: phase as i32,
            ..Default::default()
        };
        assert!(import_running(&job(zfs::ImportPhase::Downloading)));
        assert!(!import_running(&job(zfs::ImportPhase::Failed)));
    }
}
