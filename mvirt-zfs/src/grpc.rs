//! `ZfsService`: translates between proto messages and the domain ([`Storage`],
//! [`ImportManager`], [`drift`]); errors become `tonic::Status` through mvirt-common.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mvirt_common::version::VersionInfo;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::drift::{self, DriftKind};
use crate::fetch::Format;
use crate::import::{ImportManager, ImportRequest};
use crate::proto::{self, zfs_service_server::ZfsService};
use crate::storage::{self, Storage};
use crate::store::{JobRecord, Phase, TemplateState};

/// The gRPC service.
pub struct ZfsGrpc {
    pub storage: Arc<Storage>,
    pub imports: Arc<ImportManager>,
    pub version: VersionInfo,
}

fn volume_to_proto(v: storage::Volume) -> proto::Volume {
    proto::Volume {
        id: v.record.id,
        name: v.record.name,
        size_bytes: v.record.size_bytes,
        used_bytes: v.used_bytes,
        path: v.path.display().to_string(),
        dataset: v.dataset,
        template_id: v.record.template_id.unwrap_or_default(),
        kernel_path: v.kernel_path,
        initramfs_path: v.initramfs_path,
        cmdline: v.cmdline,
        created_at: v.record.created_at,
        in_use_by: v.in_use_by,
    }
}

fn snapshot_to_proto(s: storage::Snapshot) -> proto::Snapshot {
    proto::Snapshot {
        id: s.record.id,
        volume_id: s.record.volume_id,
        name: s.record.name,
        created_at: s.record.created_at,
        used_bytes: s.used_bytes,
        referenced_bytes: s.referenced_bytes,
    }
}

fn template_to_proto(t: storage::Template) -> proto::Template {
    let state = match t.record.state {
        TemplateState::Importing => proto::TemplateState::Importing,
        TemplateState::Ready => proto::TemplateState::Ready,
    };
    proto::Template {
        id: t.record.id,
        name: t.record.name,
        state: state as i32,
        size_bytes: t.record.size_bytes,
        path: t.path.display().to_string(),
        dataset: t.dataset,
        kernel_path: t.kernel_path,
        initramfs_path: t.initramfs_path,
        cmdline: t.record.cmdline,
        source_url: t.record.source_url,
        clone_count: t.clone_count,
        created_at: t.record.created_at,
    }
}

fn format_to_proto(s: &str) -> proto::ImageFormat {
    match s {
        "raw" => proto::ImageFormat::Raw,
        "qcow2" => proto::ImageFormat::Qcow2,
        _ => proto::ImageFormat::Auto,
    }
}

/// Converts a job record to its proto form.
pub fn job_to_proto(j: JobRecord) -> proto::ImportJob {
    let phase = match j.phase {
        Phase::Pending => proto::ImportPhase::Pending,
        Phase::Downloading => proto::ImportPhase::Downloading,
        Phase::Converting => proto::ImportPhase::Converting,
        Phase::Finalizing => proto::ImportPhase::Finalizing,
        Phase::Completed => proto::ImportPhase::Completed,
        Phase::Failed => proto::ImportPhase::Failed,
        Phase::Cancelled => proto::ImportPhase::Cancelled,
    };
    proto::ImportJob {
        id: j.id,
        template_id: j.template_id,
        source_url: j.source_url,
        phase: phase as i32,
        bytes_done: j.bytes_done,
        bytes_total: j.bytes_total,
        rate_bytes_per_sec: j.rate_bytes_per_sec,
        error: j.error,
        created_at: j.created_at,
        updated_at: j.updated_at,
        detected_format: format_to_proto(&j.detected_format) as i32,
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<proto::ImportJob, Status>> + Send>>;

#[tonic::async_trait]
impl ZfsService for ZfsGrpc {
    async fn get_version(
        &self,
        _: Request<proto::GetVersionRequest>,
    ) -> Result<Response<proto::VersionInfo>, Status> {
        Ok(Response::new(proto::VersionInfo {
            component: self.version.component.clone(),
            version: self.version.version.clone(),
            git_commit: self.version.git_commit.clone(),
        }))
    }

    async fn get_pool_stats(
        &self,
        _: Request<proto::GetPoolStatsRequest>,
    ) -> Result<Response<proto::PoolStats>, Status> {
        let s = self.storage.pool_stats().await?;
        Ok(Response::new(proto::PoolStats {
            pool: s.pool,
            dataset: s.dataset,
            size_bytes: s.size_bytes,
            allocated_bytes: s.allocated_bytes,
            free_bytes: s.free_bytes,
            provisioned_bytes: s.provisioned_bytes,
            compression_ratio: s.compression_ratio,
            volume_count: s.volume_count,
            template_count: s.template_count,
        }))
    }

    async fn check_drift(
        &self,
        _: Request<proto::CheckDriftRequest>,
    ) -> Result<Response<proto::DriftReport>, Status> {
        let items = drift::check(&self.storage).await?;
        Ok(Response::new(proto::DriftReport {
            items: items
                .into_iter()
                .map(|i| proto::DriftItem {
                    kind: match i.kind {
                        DriftKind::MissingDataset => proto::drift_item::Kind::MissingDataset,
                        DriftKind::UnknownDataset => proto::drift_item::Kind::UnknownDataset,
                        DriftKind::MissingImage => proto::drift_item::Kind::MissingImage,
                    } as i32,
                    object_id: i.object_id,
                    object_kind: i.object_kind.to_string(),
                    dataset: i.dataset,
                    detail: i.detail,
                })
                .collect(),
        }))
    }

    async fn create_volume(
        &self,
        request: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let r = request.into_inner();
        let v = self
            .storage
            .create_volume(&r.id, &r.name, r.size_bytes)
            .await?;
        Ok(Response::new(volume_to_proto(v)))
    }

    async fn get_volume(
        &self,
        request: Request<proto::GetVolumeRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let v = self.storage.get_volume(&request.into_inner().id).await?;
        Ok(Response::new(volume_to_proto(v)))
    }

    async fn list_volumes(
        &self,
        _: Request<proto::ListVolumesRequest>,
    ) -> Result<Response<proto::ListVolumesResponse>, Status> {
        let volumes = self.storage.list_volumes().await?;
        Ok(Response::new(proto::ListVolumesResponse {
            volumes: volumes.into_iter().map(volume_to_proto).collect(),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<proto::DeleteVolumeRequest>,
    ) -> Result<Response<proto::DeleteVolumeResponse>, Status> {
        let r = request.into_inner();
        self.storage.delete_volume(&r.id, r.force).await?;
        Ok(Response::new(proto::DeleteVolumeResponse {}))
    }

    async fn resize_volume(
        &self,
        request: Request<proto::ResizeVolumeRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let r = request.into_inner();
        let v = self.storage.resize_volume(&r.id, r.size_bytes).await?;
        Ok(Response::new(volume_to_proto(v)))
    }

    async fn create_snapshot(
        &self,
        request: Request<proto::CreateSnapshotRequest>,
    ) -> Result<Response<proto::Snapshot>, Status> {
        let r = request.into_inner();
        let s = self
            .storage
            .create_snapshot(&r.volume_id, &r.id, &r.name)
            .await?;
        Ok(Response::new(snapshot_to_proto(s)))
    }

    async fn list_snapshots(
        &self,
        request: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<proto::ListSnapshotsResponse>, Status> {
        let snapshots = self
            .storage
            .list_snapshots(&request.into_inner().volume_id)
            .await?;
        Ok(Response::new(proto::ListSnapshotsResponse {
            snapshots: snapshots.into_iter().map(snapshot_to_proto).collect(),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        let r = request.into_inner();
        self.storage.delete_snapshot(&r.volume_id, &r.id).await?;
        Ok(Response::new(proto::DeleteSnapshotResponse {}))
    }

    async fn rollback_snapshot(
        &self,
        request: Request<proto::RollbackSnapshotRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let r = request.into_inner();
        let v = self.storage.rollback_snapshot(&r.volume_id, &r.id).await?;
        Ok(Response::new(volume_to_proto(v)))
    }

    async fn import_template(
        &self,
        request: Request<proto::ImportTemplateRequest>,
    ) -> Result<Response<proto::ImportJob>, Status> {
        let r = request.into_inner();
        let format = match proto::ImageFormat::try_from(r.format) {
            Ok(proto::ImageFormat::Auto) => Format::Auto,
            Ok(proto::ImageFormat::Raw) => Format::Raw,
            Ok(proto::ImageFormat::Qcow2) => Format::Qcow2,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown image format {}",
                    r.format
                )))
            }
        };
        // The start runs to its end in a task of its own: a caller that goes away (an agent
        // killed mid-call) must not cut it off between creating the dataset and recording it.
        let imports = self.imports.clone();
        let request = ImportRequest {
            id: r.id,
            name: r.name,
            source_url: r.source_url,
            format,
            sha256: r.sha256,
            kernel_url: r.kernel_url,
            initramfs_url: r.initramfs_url,
            kernel_sha256: r.kernel_sha256,
            initramfs_sha256: r.initramfs_sha256,
            cmdline: r.cmdline,
        };
        let job = tokio::spawn(async move { imports.start(request).await })
            .await
            .map_err(|e| Status::internal(format!("import start failed: {e}")))??;
        Ok(Response::new(job_to_proto(job)))
    }

    type WatchImportStream = JobStream;

    async fn watch_import(
        &self,
        request: Request<proto::WatchImportRequest>,
    ) -> Result<Response<Self::WatchImportStream>, Status> {
        let job_id = request.into_inner().job_id;
        let stream: JobStream = match self.imports.watch(&job_id)? {
            Ok(rx) => {
                // Every state until (and including) the first terminal one.
                let stream = WatchStream::new(rx).scan(false, |finished, job| {
                    let item = if *finished {
                        None
                    } else {
                        *finished = job.phase.is_terminal();
                        Some(Ok(job_to_proto(job)))
                    };
                    futures::future::ready(item)
                });
                Box::pin(stream)
            }
            Err(done) => Box::pin(futures::stream::once(futures::future::ready(Ok(
                job_to_proto(done),
            )))),
        };
        Ok(Response::new(stream))
    }

    async fn get_import_job(
        &self,
        request: Request<proto::GetImportJobRequest>,
    ) -> Result<Response<proto::ImportJob>, Status> {
        let job = self.imports.get(&request.into_inner().job_id)?;
        Ok(Response::new(job_to_proto(job)))
    }

    async fn list_import_jobs(
        &self,
        _: Request<proto::ListImportJobsRequest>,
    ) -> Result<Response<proto::ListImportJobsResponse>, Status> {
        let jobs = self.imports.list()?;
        Ok(Response::new(proto::ListImportJobsResponse {
            jobs: jobs.into_iter().map(job_to_proto).collect(),
        }))
    }

    async fn cancel_import_job(
        &self,
        request: Request<proto::CancelImportJobRequest>,
    ) -> Result<Response<proto::ImportJob>, Status> {
        let job = self.imports.cancel(&request.into_inner().job_id).await?;
        Ok(Response::new(job_to_proto(job)))
    }

    async fn list_templates(
        &self,
        _: Request<proto::ListTemplatesRequest>,
    ) -> Result<Response<proto::ListTemplatesResponse>, Status> {
        let templates = self.storage.list_templates().await?;
        Ok(Response::new(proto::ListTemplatesResponse {
            templates: templates.into_iter().map(template_to_proto).collect(),
        }))
    }

    async fn get_template(
        &self,
        request: Request<proto::GetTemplateRequest>,
    ) -> Result<Response<proto::Template>, Status> {
        let t = self.storage.get_template(&request.into_inner().id).await?;
        Ok(Response::new(template_to_proto(t)))
    }

    async fn delete_template(
        &self,
        request: Request<proto::DeleteTemplateRequest>,
    ) -> Result<Response<proto::DeleteTemplateResponse>, Status> {
        let request = request.into_inner();
        let deleted = self
            .storage
            .delete_template(&request.id, request.detach_clones)
            .await?;
        Ok(Response::new(proto::DeleteTemplateResponse {
            dependent_clones: deleted.dependent_clones,
            detached_volume_ids: deleted.detached_volume_ids,
        }))
    }

    async fn clone_from_template(
        &self,
        request: Request<proto::CloneFromTemplateRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let r = request.into_inner();
        let v = self
            .storage
            .clone_from_template(&r.template_id, &r.volume_id, &r.name, r.size_bytes)
            .await?;
        Ok(Response::new(volume_to_proto(v)))
    }

    async fn promote_snapshot_to_template(
        &self,
        request: Request<proto::PromoteSnapshotToTemplateRequest>,
    ) -> Result<Response<proto::Template>, Status> {
        let r = request.into_inner();
        let t = self
            .storage
            .promote_snapshot(&r.volume_id, &r.snapshot_id, &r.template_id, &r.name)
            .await?;
        Ok(Response::new(template_to_proto(t)))
    }
}
