//! `/v1/projects`: projects hold the other resources; they have labels and a description.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::resources::*;
use super::{Caller, ErrorEnvelope, JsonBody, ListQuery, ListResponse};
use crate::app::App;
use crate::model::*;
use crate::state::{ApiError, Command};

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(ListQuery), responses((status = 200, body = ListResponse)))]
pub async fn list_projects(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    // A project's own `project` field is its name; filtering by project means "that project".
    if let Some(p) = q.project.take() {
        let mut list = list_kind_raw(&app, &caller, Kind::Project, &q).await?;
        list.items
            .retain(|o| o.get("name").and_then(|v| v.as_str()) == Some(p.as_str()));
        return Ok(Json(list).into_response());
    }
    list_kind(&app, &caller, Kind::Project, q).await
}

#[utoipa::path(get, path = "/v1/projects/{id}", tag = "projects", params(("id" = String, Path, description = "id or name")), responses((status = 200, body = Project), (status = 404, body = ErrorEnvelope)))]
pub async fn get_project(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get_kind(&app, Kind::Project, &id, ProjectQuery::default()).await
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = CreateProjectRequest, responses((status = 201, body = Project), (status = 409, body = ErrorEnvelope)))]
pub async fn create_project(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(req, raw): JsonBody<CreateProjectRequest>,
) -> Result<Response, ApiError> {
    let mut meta = new_meta(&req.name, Some(&req.name), req.labels)?;
    meta.project = req.name.clone();
    let description = req.description.unwrap_or_default();
    if description.len() > 1024 {
        return Err(ApiError::invalid("description: at most 1024 characters"));
    }
    create_with(
        &app,
        Kind::Project,
        &headers,
        &raw,
        Command::CreateProject {
            project: Project { meta, description },
        },
    )
    .await
}

#[utoipa::path(put, path = "/v1/projects/{id}", tag = "projects", request_body = UpdateProjectRequest, params(("id" = String, Path, description = "id or name")), responses((status = 200, body = Project)))]
pub async fn update_project(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req, _): JsonBody<UpdateProjectRequest>,
) -> Result<Response, ApiError> {
    update_kind(
        &app,
        Kind::Project,
        &id,
        ProjectQuery::default(),
        &headers,
        req.labels,
        None,
    )
    .await
}

#[utoipa::path(delete, path = "/v1/projects/{id}", tag = "projects", params(("id" = String, Path, description = "id or name")), responses((status = 204), (status = 409, body = ErrorEnvelope)))]
pub async fn delete_project(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_kind(&app, Kind::Project, &id, DeleteQuery::default(), &headers).await
}
