//! `/v1/backups`: backups of volumes (CRUD), taking them from a volume or a whole VM
//! (`POST /v1/volumes/{id}/backups`, `POST /v1/vms/{id}/backups`), and restoring one into a
//! new volume (`POST /v1/backups/{id}/restore`). The volume's node takes and keeps the backup;
//! its `status` says what became of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::resources::{crud, new_meta, query, resolve};
use super::{idempotency, Caller};
use crate::app::App;
use crate::model::*;
use crate::state::{ApiError, Command};
use crate::validate;

crud!(
    Kind::Backup,
    "backups",
    "/v1/backups",
    "/v1/backups/{id}",
    Backup,
    BackupSpec,
    validate::backup,
    build_backup
);

fn build_backup(meta: Meta, spec: BackupSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateBackups {
        backups: vec![Backup::new(meta, spec)],
    })
}

/// Body of `POST /v1/volumes/{id}/backups` and `POST /v1/vms/{id}/backups`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeBackupRequest {
    /// The backup's name (a VM's backups get `<name>-<n>`, n = the volume's position from 0).
    /// Default: `<volume name>-<8 hex digits>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// An increment on each volume's newest backup.
    #[serde(default)]
    pub incremental: bool,
}

/// `<base>-<suffix>` cut to a DNS label.
fn backup_name(base: &str, suffix: &str) -> String {
    let keep = 63usize.saturating_sub(suffix.len() + 1);
    let base: String = base.chars().take(keep).collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

/// A new backup of volume `volume_id` named `name` (or its default name).
fn new_backup(
    volume: &Volume,
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    incremental: bool,
) -> Result<Backup, ApiError> {
    let mut meta = new_meta("placeholder", Some(&volume.meta.project), labels)?;
    meta.name = match name {
        Some(name) => name,
        // The id's tail is random (UUIDv7: the head is the time).
        None => backup_name(&volume.meta.name, &meta.id[meta.id.len() - 8..]),
    };
    validate::name("name", &meta.name)?;
    Ok(Backup::new(
        meta,
        BackupSpec {
            volume_id: volume.meta.id.clone(),
            incremental,
        },
    ))
}

#[utoipa::path(post, path = "/v1/volumes/{id}/backups", tag = "backups", request_body = TakeBackupRequest,
    params(("id" = String, Path, description = "volume id or name"), ProjectQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key returns the first result")),
    responses(
        (status = 201, description = "the backup, pending until the volume's node has written it", body = Backup),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the volume is on no node yet, an incremental backup has no base, or the name is taken", body = ErrorEnvelope)))]
pub async fn backup_volume(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    headers: HeaderMap,
    super::JsonBody(req, raw): super::JsonBody<TakeBackupRequest>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let backup = {
        let state = app.shared.read();
        let id = resolve(&state, Kind::Volume, &id, q.project.as_deref())?;
        let volume = state
            .volumes
            .get(&id)
            .ok_or_else(|| ApiError::not_found(Kind::Volume, &id))?;
        new_backup(volume, req.name, req.labels, req.incremental)?
    };
    caller.may_create_in(&backup.meta.project)?;
    let idem = idempotency(&headers, "backup", &raw)?;
    let (_, value) = app
        .submit_json(
            Command::CreateBackups {
                backups: vec![backup],
            },
            idem,
        )
        .await?;
    Ok(super::json_response(StatusCode::CREATED, value))
}

/// The answer of `POST /v1/vms/{id}/backups`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmBackups {
    /// One backup per volume of the VM, in the VM's volume order.
    pub items: Vec<Backup>,
}

#[utoipa::path(post, path = "/v1/vms/{id}/backups", tag = "backups", request_body = TakeBackupRequest,
    params(("id" = String, Path, description = "VM id or name"), ProjectQuery),
    responses(
        (status = 201, description = "one backup per volume of the VM, taken one after another on its node (not crash-consistent across volumes while the VM runs)", body = VmBackups),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the VM has no volume, a volume is on no node yet, an incremental backup has no base, or a name is taken", body = ErrorEnvelope)))]
pub async fn backup_vm(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    super::JsonBody(req, _): super::JsonBody<TakeBackupRequest>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let backups = {
        let state = app.shared.read();
        let id = resolve(&state, Kind::Vm, &id, q.project.as_deref())?;
        let vm = state
            .vms
            .get(&id)
            .ok_or_else(|| ApiError::not_found(Kind::Vm, &id))?;
        if vm.spec.volume_ids.is_empty() {
            return Err(ApiError::conflict(format!(
                "VM {} has no volume to back up",
                vm.meta.name
            )));
        }
        let mut backups = Vec::new();
        for (i, volume_id) in vm.spec.volume_ids.iter().enumerate() {
            let volume = state
                .volumes
                .get(volume_id)
                .ok_or_else(|| ApiError::not_found(Kind::Volume, volume_id))?;
            let name = req.name.as_ref().map(|n| {
                if vm.spec.volume_ids.len() == 1 {
                    n.clone()
                } else {
                    backup_name(n, &i.to_string())
                }
            });
            let mut b = new_backup(volume, name, req.labels.clone(), req.incremental)?;
            b.vm_id = Some(vm.meta.id.clone());
            backups.push(b);
        }
        backups
    };
    if let Some(b) = backups.first() {
        caller.may_create_in(&b.meta.project)?;
    }
    let (_, value) = app
        .submit_json(Command::CreateBackups { backups }, None)
        .await?;
    Ok(super::json_response(StatusCode::CREATED, value))
}

/// Body of `POST /v1/backups/{id}/restore`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The new volume's name (in the backup's project).
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The new volume's size (default: the backed-up volume's size; never smaller).
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

#[utoipa::path(post, path = "/v1/backups/{id}/restore", tag = "backups", request_body = RestoreRequest,
    params(("id" = String, Path, description = "backup id or name"), ProjectQuery),
    responses(
        (status = 201, description = "the new volume, restored on the backup's node; its status says when it is ready, or why the restore failed (e.g. a stream file whose SHA-256 no longer matches)", body = Volume),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the backup is not ready, or the name is taken", body = ErrorEnvelope)))]
pub async fn restore_backup(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    super::JsonBody(req, _): super::JsonBody<RestoreRequest>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    if let Some(size) = req.size_bytes {
        validate::size("size_bytes", size)?;
    }
    let volume = {
        let state = app.shared.read();
        let id = resolve(&state, Kind::Backup, &id, q.project.as_deref())?;
        let backup = state
            .backups
            .get(&id)
            .ok_or_else(|| ApiError::not_found(Kind::Backup, &id))?;
        let backed_up = backup
            .status
            .backup
            .as_ref()
            .map_or(0, |r| r.volume_size_bytes);
        let meta = new_meta(&req.name, Some(&backup.meta.project), req.labels)?;
        Volume::new(
            meta,
            VolumeSpec {
                size_bytes: req.size_bytes.unwrap_or(backed_up).max(1024 * 1024),
                backup_id: Some(id),
                ..VolumeSpec::default()
            },
        )
    };
    caller.may_create_in(&volume.meta.project)?;
    let (_, value) = app
        .submit_json(Command::CreateVolume { volume }, None)
        .await?;
    Ok(super::json_response(StatusCode::CREATED, value))
}
