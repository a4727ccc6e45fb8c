//! `/v1/templates`: CRUD of templates and cancelling their imports.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::resources::{crud, query, resolve};
use crate::app::{now, App};
use crate::model::*;
use crate::state::{ApiError, Command};
use crate::validate;

crud!(
    Kind::Template,
    "templates",
    "/v1/templates",
    "/v1/templates/{id}",
    Template,
    TemplateSpec,
    validate::template,
    build_template
);

fn build_template(meta: Meta, spec: TemplateSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateTemplate {
        template: Template {
            meta,
            spec,
            status: Status::default(),
            node_id: None,
            import_cancelled: false,
        },
    })
}

#[utoipa::path(post, path = "/v1/templates/{id}/cancel", tag = "templates",
    params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses(
        (status = 202, description = "accepted: every node stops its running import and starts none (copies already imported stay); the template then reports `failed` (import cancelled) where it was not imported", body = Template),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "nothing to cancel: imported on every node, or promoted from a snapshot", body = ErrorEnvelope)))]
pub async fn cancel_import(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let id = resolve(
        &app.shared.read(),
        Kind::Template,
        &id,
        q.project.as_deref(),
    )?;
    let (_, value) = app
        .submit(Command::CancelImport { id, now: now() }, None)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(value)).into_response())
}
