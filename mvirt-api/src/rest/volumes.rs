//! `/v1/volumes`: CRUD of volumes, growing them, and their snapshots (rollback, promotion
//! to a template).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::resources::{crud, new_meta, query, resolve};
use super::{if_match, object_response, JsonBody};
use crate::app::{new_id, now, App};
use crate::model::*;
use crate::state::{ApiError, Command};
use crate::validate;

crud!(
    Kind::Volume,
    "volumes",
    "/v1/volumes",
    "/v1/volumes/{id}",
    Volume,
    VolumeSpec,
    validate::volume,
    build_volume
);

fn build_volume(meta: Meta, spec: VolumeSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateVolume {
        volume: Volume::new(meta, spec),
    })
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    pub size_bytes: u64,
}

#[utoipa::path(post, path = "/v1/volumes/{id}/resize", tag = "volumes", request_body = ResizeRequest, params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses((status = 200, body = Volume), (status = 400, body = ErrorEnvelope)))]
pub async fn resize_volume(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    headers: HeaderMap,
    JsonBody(req, _): JsonBody<ResizeRequest>,
) -> Result<Response, ApiError> {
    validate::size("size_bytes", req.size_bytes)?;
    let q = query(q)?;
    let if_match = if_match(&headers)?;
    let id = resolve(&app.shared.read(), Kind::Volume, &id, q.project.as_deref())?;
    let (_, value) = app
        .submit(
            Command::ResizeVolume {
                id,
                size_bytes: req.size_bytes,
                if_match,
                now: now(),
            },
            None,
        )
        .await?;
    Ok(object_response(StatusCode::OK, value))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub name: String,
}

#[utoipa::path(post, path = "/v1/volumes/{id}/snapshots", tag = "volumes", request_body = SnapshotRequest, params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses((status = 201, body = VolumeSnapshot), (status = 409, body = ErrorEnvelope)))]
pub async fn create_snapshot(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    JsonBody(req, _): JsonBody<SnapshotRequest>,
) -> Result<Response, ApiError> {
    validate::name("snapshot name", &req.name)?;
    let q = query(q)?;
    let volume_id = resolve(&app.shared.read(), Kind::Volume, &id, q.project.as_deref())?;
    let snapshot = VolumeSnapshot {
        id: new_id(),
        name: req.name,
        created_at: now(),
        status: SnapshotStatus::default(),
    };
    let (_, value) = app
        .submit(
            Command::CreateSnapshot {
                volume_id,
                snapshot,
            },
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

#[utoipa::path(get, path = "/v1/volumes/{id}/snapshots", tag = "volumes", params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses((status = 200, body = [VolumeSnapshot])))]
pub async fn list_snapshots(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    app.read_barrier().await?;
    let state = app.shared.read();
    let id = resolve(&state, Kind::Volume, &id, q.project.as_deref())?;
    let snaps = state
        .volumes
        .get(&id)
        .map(|v| v.snapshots.clone())
        .unwrap_or_default();
    Ok(Json(snaps).into_response())
}

#[utoipa::path(delete, path = "/v1/volumes/{id}/snapshots/{snapshot_id}", tag = "volumes", params(("id" = String, Path, description = "id or name"), ("snapshot_id" = String, Path, description = "snapshot id or name"), ProjectQuery),
    responses((status = 204), (status = 404, body = ErrorEnvelope)))]
pub async fn delete_snapshot(
    State(app): State<Arc<App>>,
    Path((id, snapshot)): Path<(String, String)>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (volume_id, snapshot_id) = resolve_snapshot(&app, &id, snapshot, q.project.as_deref())?;
    app.submit(
        Command::DeleteSnapshot {
            volume_id,
            snapshot_id,
            now: now(),
        },
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The volume id and snapshot id of a snapshot named by id or name.
fn resolve_snapshot(
    app: &App,
    volume: &str,
    snapshot: String,
    project: Option<&str>,
) -> Result<(String, String), ApiError> {
    let state = app.shared.read();
    let vid = resolve(&state, Kind::Volume, volume, project)?;
    let sid = state
        .volumes
        .get(&vid)
        .and_then(|v| {
            v.snapshots
                .iter()
                .find(|s| s.id == snapshot || s.name == snapshot)
        })
        .map(|s| s.id.clone())
        .unwrap_or(snapshot);
    Ok((vid, sid))
}

#[utoipa::path(post, path = "/v1/volumes/{id}/snapshots/{snapshot_id}/rollback", tag = "volumes",
    params(("id" = String, Path, description = "id or name"), ("snapshot_id" = String, Path, description = "snapshot id or name"), ProjectQuery),
    responses(
        (status = 202, description = "accepted: the volume's node rolls back; `rollback.generation` equals `status.rollback_generation` when done. Newer snapshots are removed.", body = Volume),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "a VM using the volume runs or is asked to run, or the snapshot is not ready", body = ErrorEnvelope)))]
pub async fn rollback_snapshot(
    State(app): State<Arc<App>>,
    Path((id, snapshot)): Path<(String, String)>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (volume_id, snapshot_id) = resolve_snapshot(&app, &id, snapshot, q.project.as_deref())?;
    let (_, value) = app
        .submit(
            Command::RollbackSnapshot {
                volume_id,
                snapshot_id,
                now: now(),
            },
            None,
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(value)).into_response())
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// Name of the new template.
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[utoipa::path(post, path = "/v1/volumes/{id}/snapshots/{snapshot_id}/promote", tag = "volumes", request_body = PromoteRequest,
    params(("id" = String, Path, description = "id or name"), ("snapshot_id" = String, Path, description = "snapshot id or name"), ProjectQuery),
    responses(
        (status = 201, description = "a template copied from the snapshot on the volume's node (it exists on that node only)", body = Template),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the snapshot is not ready, or the name is taken", body = ErrorEnvelope)))]
pub async fn promote_snapshot(
    State(app): State<Arc<App>>,
    Path((id, snapshot)): Path<(String, String)>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    JsonBody(req, _): JsonBody<PromoteRequest>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (volume_id, snapshot_id) = resolve_snapshot(&app, &id, snapshot, q.project.as_deref())?;
    let project = app
        .shared
        .read()
        .volumes
        .get(&volume_id)
        .map(|v| v.meta.project.clone());
    let meta = new_meta(&req.name, project.as_deref(), req.labels)?;
    let (_, value) = app
        .submit(
            Command::PromoteSnapshot {
                volume_id,
                snapshot_id,
                template: Template {
                    meta,
                    spec: TemplateSpec {
                        format: ImageFormat::Raw,
                        ..TemplateSpec::default()
                    },
                    status: Status::default(),
                    node_id: None,
                    import_cancelled: false,
                },
            },
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(value)).into_response())
}
