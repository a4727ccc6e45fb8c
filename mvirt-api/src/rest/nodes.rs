//! `/v1/nodes`: nodes register through NodeService; REST lists, cordons and removes them.
//! A node's host details are `hosts.rs`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::resources::*;
use super::{Caller, ErrorEnvelope, JsonBody, ListQuery, ListResponse};
use crate::app::App;
use crate::model::*;
use crate::state::{ApiError, Spec};

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(ListQuery), responses((status = 200, body = ListResponse)))]
pub async fn list_nodes(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    // Nodes have no project; a `phase` filter matches their state (online/offline).
    q.project = None;
    let phase = q.phase.take();
    let mut list = list_kind_raw(&app, &caller, Kind::Node, &q).await?;
    if let Some(p) = phase {
        list.items
            .retain(|o| o.pointer("/status/state").and_then(|v| v.as_str()) == Some(p.as_str()));
    }
    Ok(Json(list).into_response())
}

#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "id or name")), responses((status = 200, body = Node), (status = 404, body = ErrorEnvelope)))]
pub async fn get_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get_kind(&app, Kind::Node, &id, ProjectQuery::default()).await
}

#[utoipa::path(put, path = "/v1/nodes/{id}", tag = "nodes", request_body = UpdateRequest<NodeSpec>, params(("id" = String, Path, description = "id or name")), responses((status = 200, body = Node)))]
pub async fn update_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req, _): JsonBody<UpdateRequest<NodeSpec>>,
) -> Result<Response, ApiError> {
    let spec = req.spec.map(Spec::from);
    update_kind(
        &app,
        Kind::Node,
        &id,
        ProjectQuery::default(),
        &headers,
        req.labels,
        spec,
    )
    .await
}

#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "id or name")), responses((status = 204), (status = 409, body = ErrorEnvelope)))]
pub async fn delete_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_kind(&app, Kind::Node, &id, DeleteQuery::default(), &headers).await
}
