//! `/v1/nodes`: nodes register through NodeService; REST lists, cordons, drains and removes
//! them (a drain is `state/drain.rs`).
//! A node's host details are `hosts.rs`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::resources::*;
use super::{if_match, object_response, Caller, ErrorEnvelope, JsonBody, ListQuery, ListResponse};
use crate::app::{new_id, now, random_secret, App};
use crate::model::*;
use crate::state::{ApiError, Command, Spec};

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

#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "nodes",
    request_body = DrainRequest,
    params(("id" = String, Path, description = "id or name")),
    responses(
        (status = 202, description = "the node is cordoned and draining: `status.drain` shows which VMs are left, migrating, moved or could not move; it ends `drained` or `failed`", body = Node),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the node is draining already or offline", body = ErrorEnvelope)))]
pub async fn drain_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    JsonBody(DrainRequest {}, _): JsonBody<DrainRequest>,
) -> Result<Response, ApiError> {
    let id = resolve(&app.shared.read(), Kind::Node, &id, None)?;
    let (_, value) = app
        .submit(
            Command::DrainNode {
                id,
                drain_id: new_id(),
                secret: random_secret(),
                now: now(),
            },
            None,
        )
        .await?;
    Ok(object_response(StatusCode::ACCEPTED, value))
}

#[utoipa::path(delete, path = "/v1/nodes/{id}/drain", tag = "nodes",
    params(("id" = String, Path, description = "id or name")),
    responses(
        (status = 200, description = "the node is uncordoned; a running drain ends `cancelled` (no new migration starts, one in flight finishes), an ended drain's status is cleared", body = Node),
        (status = 400, description = "an invalid If-Match header", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 412, body = ErrorEnvelope)))]
pub async fn undrain_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = resolve(&app.shared.read(), Kind::Node, &id, None)?;
    let if_match = if_match(&headers)?;
    let (_, value) = app
        .submit(
            Command::UndrainNode {
                id,
                if_match,
                now: now(),
            },
            None,
        )
        .await?;
    Ok(object_response(StatusCode::OK, value))
}
