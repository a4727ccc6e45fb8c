//! What the resource handlers (`projects.rs`, `nodes.rs`, `networks.rs`, `nics.rs`,
//! `security_groups.rs`, `templates.rs`, `volumes.rs`, `vms.rs`) share: the create and update
//! bodies, name resolution, and list/get/create/update/delete of any kind. `crud!` generates a
//! kind's five handlers in its file, so that each gets its own OpenAPI operation.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    idempotency, if_match, json_response, object_response, paginate, Caller, ListQuery,
    ListResponse,
};
use crate::app::{new_id, now, App};
use crate::model::*;
use crate::state::{ApiError, Command, Spec, State as Cluster, Update, DEFAULT_PROJECT};
use crate::validate;

/// Body of a create: `{"name", "project"?, "labels"?, "spec"}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest<S> {
    pub name: String,
    /// Project name (default `default`).
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    pub spec: S,
}

/// Body of an update: labels and/or the full spec.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest<S> {
    pub labels: Option<BTreeMap<String, String>>,
    pub spec: Option<S>,
}

/// Which project a name in the path is resolved in.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectQuery {
    /// Project (name) for resolving a name in the path (default `default`).
    pub project: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    pub project: Option<String>,
    /// Networks: also delete the network's NICs.
    #[serde(default)]
    pub force: bool,
}

pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text())))
}

pub fn new_meta(
    name: &str,
    project: Option<&str>,
    labels: Option<BTreeMap<String, String>>,
) -> Result<Meta, ApiError> {
    validate::name("name", name)?;
    let project = project.unwrap_or(DEFAULT_PROJECT);
    validate::name("project", project)?;
    let now = now();
    Ok(Meta {
        id: new_id(),
        name: name.to_string(),
        project: project.to_string(),
        labels: super::labels_of(labels)?,
        revision: 0,
        spec_revision: 0,
        created_at: now.clone(),
        updated_at: now,
        trace_id: None,
    })
}

/// Every object of `kind` the caller sees, as JSON, sorted by id.
fn visible_objects(state: &Cluster, kind: Kind, caller: &Caller) -> Vec<Value> {
    let mut all = objects(state, kind);
    if caller.is_scoped() {
        all.retain(|o| caller.sees_object(kind, o));
    }
    all
}

/// Every object of `kind` as JSON, sorted by id.
fn objects(state: &Cluster, kind: Kind) -> Vec<Value> {
    fn all<T: Serialize>(m: &BTreeMap<String, T>) -> Vec<Value> {
        m.values()
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect()
    }
    match kind {
        Kind::Project => all(&state.projects),
        Kind::Node => state
            .nodes
            .values()
            .filter_map(|n| serde_json::to_value(state.node_view(n)).ok())
            .collect(),
        Kind::Network => all(&state.networks),
        Kind::Nic => all(&state.nics),
        Kind::SecurityGroup => all(&state.security_groups),
        Kind::Template => all(&state.templates),
        Kind::Volume => all(&state.volumes),
        // A migration's grant token never leaves the state.
        Kind::Vm => state
            .vms
            .values()
            .filter_map(|v| serde_json::to_value(v.view()).ok())
            .collect(),
        Kind::Backup => all(&state.backups),
        Kind::Replication => all(&state.replications),
        // Registry secrets never leave the state.
        Kind::Pod => state
            .pods
            .values()
            .filter_map(|p| serde_json::to_value(p.view()).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Resolves an id or a name (within `project`) to an id.
pub fn resolve(
    state: &Cluster,
    kind: Kind,
    id_or_name: &str,
    project: Option<&str>,
) -> Result<String, ApiError> {
    if state.meta(kind, id_or_name).is_some() {
        return Ok(id_or_name.to_string());
    }
    let project = project.unwrap_or(DEFAULT_PROJECT);
    state
        .id_by_name(kind, project, id_or_name)
        .ok_or_else(|| ApiError::not_found(kind, id_or_name))
}

pub async fn list_kind(
    app: &App,
    caller: &Caller,
    kind: Kind,
    q: ListQuery,
) -> Result<Response, ApiError> {
    app.read_barrier().await?;
    let state = app.shared.read();
    let node_id = match &q.node {
        None => None,
        Some(n) => Some(resolve(&state, Kind::Node, n, None)?),
    };
    let list: ListResponse = paginate(
        visible_objects(&state, kind, caller),
        &q,
        node_id.as_deref(),
        app.shared.applied_revision(),
    )?;
    Ok(Json(list).into_response())
}

pub async fn get_kind(
    app: &App,
    kind: Kind,
    id: &str,
    q: ProjectQuery,
) -> Result<Response, ApiError> {
    app.read_barrier().await?;
    let state = app.shared.read();
    let id = resolve(&state, kind, id, q.project.as_deref())?;
    let object = state
        .object_json(kind, &id)
        .ok_or_else(|| ApiError::not_found(kind, &id))?;
    Ok(json_response(StatusCode::OK, object))
}

pub async fn create_with(
    app: &App,
    kind: Kind,
    headers: &HeaderMap,
    raw: &[u8],
    command: Command,
) -> Result<Response, ApiError> {
    let idem = idempotency(headers, kind.as_str(), raw)?;
    let (_, object) = app.submit_json(command, idem).await?;
    Ok(json_response(StatusCode::CREATED, object))
}

pub async fn update_kind(
    app: &App,
    kind: Kind,
    id: &str,
    q: ProjectQuery,
    headers: &HeaderMap,
    labels: Option<BTreeMap<String, String>>,
    spec: Option<Spec>,
) -> Result<Response, ApiError> {
    let if_match = if_match(headers)?;
    if let Some(l) = &labels {
        validate::labels(l)?;
    }
    let id = {
        let state = app.shared.read();
        resolve(&state, kind, id, q.project.as_deref())?
    };
    let (_, value) = app
        .submit(
            Command::Update(Update {
                kind,
                id,
                if_match,
                labels,
                spec,
                now: now(),
            }),
            None,
        )
        .await?;
    Ok(object_response(StatusCode::OK, value))
}

pub async fn delete_kind(
    app: &App,
    kind: Kind,
    id: &str,
    q: DeleteQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let if_match = if_match(headers)?;
    let id = {
        let state = app.shared.read();
        resolve(&state, kind, id, q.project.as_deref())?
    };
    app.submit(
        Command::Delete {
            kind,
            id,
            if_match,
            force: q.force,
        },
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The five handlers of a plain kind (list, get, create, update, delete), in the invoking
/// module: `crud!(kind, tag, collection path, item path, object type, spec type, validate,
/// build)`, where `build` makes the create command from the new `Meta` and the spec.
macro_rules! crud {
    ($kind:expr, $tag:literal, $coll:literal, $item:literal, $obj:ty, $spec:ty, $validate:path, $build:path) => {
        use ::std::sync::Arc as __Arc;
        use ::axum::extract::rejection::QueryRejection as __QueryRejection;
        use ::axum::extract::{Path as __Path, Query as __Query, State as __State};
        use ::axum::http::HeaderMap as __HeaderMap;
        use ::axum::response::Response as __Response;
        use $crate::app::App as __App;
        use $crate::rest::resources::{self as __crud, CreateRequest, DeleteQuery, ProjectQuery, UpdateRequest};
        use $crate::rest::{Caller as __Caller, ErrorEnvelope, JsonBody as __JsonBody, ListQuery, ListResponse};
        use $crate::state::ApiError as __ApiError;

        #[utoipa::path(get, path = $coll, tag = $tag, params(ListQuery),
            responses((status = 200, description = "the objects the token sees (a project-scoped token: only its projects')", body = ListResponse), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
        pub async fn list(__State(app): __State<__Arc<__App>>, ::axum::Extension(caller): ::axum::Extension<__Caller>, q: Result<__Query<ListQuery>, __QueryRejection>) -> Result<__Response, __ApiError> {
            __crud::list_kind(&app, &caller, $kind, __crud::query(q)?).await
        }

        #[utoipa::path(get, path = $item, tag = $tag, params(("id" = String, Path, description = "id or name"), ProjectQuery),
            responses((status = 200, body = $obj), (status = 403, body = ErrorEnvelope), (status = 404, description = "no such object, or not in the token's projects", body = ErrorEnvelope)))]
        pub async fn get(__State(app): __State<__Arc<__App>>, __Path(id): __Path<String>, q: Result<__Query<ProjectQuery>, __QueryRejection>) -> Result<__Response, __ApiError> {
            __crud::get_kind(&app, $kind, &id, __crud::query(q)?).await
        }

        #[utoipa::path(post, path = $coll, tag = $tag, request_body = CreateRequest<$spec>,
            params(("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key returns the first result")),
            responses((status = 201, body = $obj), (status = 400, body = ErrorEnvelope), (status = 403, description = "a viewer token, or a project outside the token's projects", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
        pub async fn create(__State(app): __State<__Arc<__App>>, ::axum::Extension(caller): ::axum::Extension<__Caller>, headers: __HeaderMap, __JsonBody(req, raw): __JsonBody<CreateRequest<$spec>>) -> Result<__Response, __ApiError> {
            $validate(&req.spec)?;
            let meta = __crud::new_meta(&req.name, req.project.as_deref(), req.labels)?;
            caller.may_create_in(&meta.project)?;
            let command = $build(meta, req.spec)?;
            __crud::create_with(&app, $kind, &headers, &raw, command).await
        }

        #[utoipa::path(put, path = $item, tag = $tag, request_body = UpdateRequest<$spec>,
            params(("id" = String, Path, description = "id or name"), ProjectQuery, ("If-Match" = Option<String>, Header, description = "\"<revision>\"")),
            responses((status = 200, body = $obj), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope)))]
        pub async fn update(__State(app): __State<__Arc<__App>>, __Path(id): __Path<String>, q: Result<__Query<ProjectQuery>, __QueryRejection>, headers: __HeaderMap, __JsonBody(req, _): __JsonBody<UpdateRequest<$spec>>) -> Result<__Response, __ApiError> {
            if let Some(s) = &req.spec {
                $validate(s)?;
            }
            let spec = req.spec.map($crate::state::Spec::from);
            __crud::update_kind(&app, $kind, &id, __crud::query(q)?, &headers, req.labels, spec).await
        }

        #[utoipa::path(delete, path = $item, tag = $tag,
            params(("id" = String, Path, description = "id or name"), DeleteQuery, ("If-Match" = Option<String>, Header, description = "\"<revision>\"")),
            responses((status = 204), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope)))]
        pub async fn delete(__State(app): __State<__Arc<__App>>, __Path(id): __Path<String>, q: Result<__Query<DeleteQuery>, __QueryRejection>, headers: __HeaderMap) -> Result<__Response, __ApiError> {
            __crud::delete_kind(&app, $kind, &id, __crud::query(q)?, &headers).await
        }
    };
}
pub(crate) use crud;

/// A list of `kind` with pagination but no node filter, for handlers that filter it further.
pub async fn list_kind_raw(
    app: &App,
    caller: &Caller,
    kind: Kind,
    q: &ListQuery,
) -> Result<ListResponse, ApiError> {
    app.read_barrier().await?;
    let state = app.shared.read();
    paginate(
        visible_objects(&state, kind, caller),
        q,
        None,
        app.shared.applied_revision(),
    )
}
