//! `ZfsService`: translates between proto messages and the domain ([`Storage`],
//! [`ImportManager`], [`drift`]); errors become `tonic::Status` through mvirt-common.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mvirt_common::version::VersionInfo;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status, Streaming};

use crate::backup::{Backup, Backups};
use crate::drift::{self, DriftKind};
use crate::fetch::Format;
use crate::import::{ImportManager, ImportRequest};
use crate::proto::{self, zfs_service_server::ZfsService};
use crate::storage::replica::{ReceiveHeader, ReplicationSnapshot, StreamPart};
use crate::storage::{self, Storage, StorageError};
use crate::store::{JobRecord, Phase, TemplateState};

/// The gRPC service.
pub struct ZfsGrpc {
    pub storage: Arc<Storage>,
    pub imports: Arc<ImportManager>,
    pub backups: Arc<Backups>,
    pub version: VersionInfo,
}

fn replication_snapshot_to_proto(s: ReplicationSnapshot) -> proto::ReplicationSnapshot {
    proto::ReplicationSnapshot {
        id: s.id,
        volume_id: s.volume_id,
        created_at: s.created_at,
        used_bytes: s.used_bytes,
        referenced_bytes: s.referenced_bytes,
    }
}

fn backup_to_proto(b: Backup) -> proto::Backup {
    let m = b.manifest;
    proto::Backup {
        id: m.id,
        volume_id: m.volume_id,
        volume_name: m.volume_name,
        base_backup_id: m.base_backup_id.unwrap_or_default(),
        size_bytes: m.size_bytes,
        sha256: m.sha256,
        volume_size_bytes: m.volume_size_bytes,
        created_at: m.created_at,
        path: b.path.display().to_string(),
    }
}

/// The parts of a ReceiveVolume stream after its header: data, then the trailer.
fn receive_parts(
    first_data: bytes::Bytes,
    first_trailer: Option<StreamPart>,
    rest: Streaming<proto::ReceiveVolumeRequest>,
) -> Pin<Box<dyn Stream<Item = Result<StreamPart, StorageError>> + Send>> {
    fn parts_of(
        data: bytes::Bytes,
        sha256: String,
        byte_count: u64,
    ) -> Vec<Result<StreamPart, StorageError>> {
        let mut parts = Vec::new();
        if !data.is_empty() {
            parts.push(Ok(StreamPart::Data(data)));
        }
        if !sha256.is_empty() {
            parts.push(Ok(StreamPart::Trailer { sha256, byte_count }));
        }
        parts
    }
    let mut head = Vec::new();
    if !first_data.is_empty() {
        head.push(Ok(StreamPart::Data(first_data)));
    }
    head.extend(first_trailer.map(Ok));
    let rest = rest.flat_map(|item| {
        let parts = match item {
            Ok(m) => {
                if m.header.is_some() {
                    vec![Err(StorageError::InvalidArgument(
                        "only the first message of a stream carries a header".into(),
                    ))]
                } else {
                    parts_of(m.data.into(), m.sha256, m.byte_count)
                }
            }
            Err(status) => vec![Err(StorageError::InvalidArgument(format!(
                "the stream broke off: {}",
                status.message()
            )))],
        };
        futures::stream::iter(parts)
    });
    Box::pin(futures::stream::iter(head).chain(rest))
}

fn volume_to_proto(v: storage::Volume) -> proto::Volume {
    proto::Volume {
        replica: v.replica_source.is_some(),
        replica_source: v.replica_source.unwrap_or_default(),
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
type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::VolumeStreamChunk, Status>> + Send>>;

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

    async fn create_replication_snapshot(
        &self,
        request: Request<proto::CreateReplicationSnapshotRequest>,
    ) -> Result<Response<proto::ReplicationSnapshot>, Status> {
        let r = request.into_inner();
        let s = self
            .storage
            .create_replication_snapshot(&r.volume_id, &r.snapshot_id)
            .await?;
        Ok(Response::new(replication_snapshot_to_proto(s)))
    }

    async fn list_replication_snapshots(
        &self,
        request: Request<proto::ListReplicationSnapshotsRequest>,
    ) -> Result<Response<proto::ListReplicationSnapshotsResponse>, Status> {
        let snapshots = self
            .storage
            .list_replication_snapshots(&request.into_inner().volume_id)
            .await?;
        Ok(Response::new(proto::ListReplicationSnapshotsResponse {
            snapshots: snapshots
                .into_iter()
                .map(replication_snapshot_to_proto)
                .collect(),
        }))
    }

    async fn prune_replication_snapshots(
        &self,
        request: Request<proto::PruneReplicationSnapshotsRequest>,
    ) -> Result<Response<proto::PruneReplicationSnapshotsResponse>, Status> {
        let r = request.into_inner();
        let deleted = self
            .storage
            .prune_replication_snapshots(&r.volume_id, r.keep_last)
            .await?;
        Ok(Response::new(proto::PruneReplicationSnapshotsResponse {
            deleted_snapshot_ids: deleted,
        }))
    }

    type SendVolumeStream = ChunkStream;

    async fn send_volume(
        &self,
        request: Request<proto::SendVolumeRequest>,
    ) -> Result<Response<Self::SendVolumeStream>, Status> {
        let r = request.into_inner();
        let mut sender = self
            .storage
            .send_volume(&r.volume_id, &r.snapshot_id, &r.base_snapshot_id)
            .await?;
        // A few chunks in flight: `zfs send` runs at the pace the receiver reads.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                match sender.next_chunk().await {
                    Ok(Some(data)) => {
                        let chunk = proto::VolumeStreamChunk {
                            data: data.into(),
                            ..Default::default()
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            // The caller went away; dropping `sender` kills `zfs send`.
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        let _ = tx.send(Err(err.into())).await;
                        return;
                    }
                }
            }
            let last = sender.finish().await.map(|sum| proto::VolumeStreamChunk {
                data: Default::default(),
                sha256: sum.sha256,
                byte_count: sum.byte_count,
            });
            let _ = tx.send(last.map_err(Status::from)).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn receive_volume(
        &self,
        request: Request<Streaming<proto::ReceiveVolumeRequest>>,
    ) -> Result<Response<proto::ReceiveVolumeResponse>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the stream is empty: the first message must carry the header")
        })?;
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("the first message must carry the header"))?;
        let trailer = (!first.sha256.is_empty()).then(|| StreamPart::Trailer {
            sha256: first.sha256,
            byte_count: first.byte_count,
        });
        let parts = receive_parts(first.data.into(), trailer, inbound);
        let header = ReceiveHeader {
            volume_id: header.volume_id,
            name: header.name,
            base_snapshot_id: header.base_snapshot_id,
            source: header.source,
        };
        // In a task of its own: a caller that goes away mid-stream must not cut off the
        // clean-up of what was received so far.
        let storage = self.storage.clone();
        let received = tokio::spawn(async move { storage.receive_volume(header, parts).await })
            .await
            .map_err(|e| Status::internal(format!("receive failed: {e}")))??;
        Ok(Response::new(proto::ReceiveVolumeResponse {
            volume: Some(volume_to_proto(received.volume)),
            snapshot_id: received.snapshot_id,
            byte_count: received.sum.byte_count,
            sha256: received.sum.sha256,
        }))
    }

    async fn list_replicas(
        &self,
        _: Request<proto::ListReplicasRequest>,
    ) -> Result<Response<proto::ListVolumesResponse>, Status> {
        let volumes = self.storage.list_replicas().await?;
        Ok(Response::new(proto::ListVolumesResponse {
            volumes: volumes.into_iter().map(volume_to_proto).collect(),
        }))
    }

    async fn promote_replica(
        &self,
        request: Request<proto::PromoteReplicaRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let v = self
            .storage
            .promote_replica(&request.into_inner().volume_id)
            .await?;
        Ok(Response::new(volume_to_proto(v)))
    }

    async fn create_backup(
        &self,
        request: Request<proto::CreateBackupRequest>,
    ) -> Result<Response<proto::Backup>, Status> {
        let r = request.into_inner();
        // Runs to its end even if the caller goes away (no half-written backup left behind).
        let backups = self.backups.clone();
        let backup =
            tokio::spawn(async move { backups.create(&r.id, &r.volume_id, r.incremental).await })
                .await
                .map_err(|e| Status::internal(format!("backup failed: {e}")))??;
        Ok(Response::new(backup_to_proto(backup)))
    }

    async fn list_backups(
        &self,
        request: Request<proto::ListBackupsRequest>,
    ) -> Result<Response<proto::ListBackupsResponse>, Status> {
        let backups = self.backups.list(&request.into_inner().volume_id).await?;
        Ok(Response::new(proto::ListBackupsResponse {
            backups: backups.into_iter().map(backup_to_proto).collect(),
        }))
    }

    async fn delete_backup(
        &self,
        request: Request<proto::DeleteBackupRequest>,
    ) -> Result<Response<proto::DeleteBackupResponse>, Status> {
        let r = request.into_inner();
        let deleted = self.backups.delete(&r.id, r.with_dependents).await?;
        Ok(Response::new(proto::DeleteBackupResponse {
            deleted_backup_ids: deleted,
        }))
    }

    async fn prune_backups(
        &self,
        request: Request<proto::PruneBackupsRequest>,
    ) -> Result<Response<proto::PruneBackupsResponse>, Status> {
        let r = request.into_inner();
        let deleted = self.backups.prune(&r.volume_id, r.keep_last).await?;
        Ok(Response::new(proto::PruneBackupsResponse {
            deleted_backup_ids: deleted,
        }))
    }

    async fn restore_backup(
        &self,
        request: Request<proto::RestoreBackupRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let r = request.into_inner();
        let backups = self.backups.clone();
        let volume =
            tokio::spawn(async move { backups.restore(&r.backup_id, &r.volume_id, &r.name).await })
                .await
                .map_err(|e| Status::internal(format!("restore failed: {e}")))??;
        Ok(Response::new(volume_to_proto(volume)))
    }
}
