//! CRUD of the user-facing resources and their actions. The six "plain" kinds share one set of
//! generic handlers (generated per kind by `crud!` so that each gets its own OpenAPI operation);
//! projects, nodes and the actions have their own handlers below.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete as delete_route, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    idempotency, if_match, json_response, object_response, paginate, ErrorEnvelope, JsonBody,
    ListQuery, ListResponse,
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
    })
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
        Kind::Vm => all(&state.vms),
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

pub async fn list_kind(app: &App, kind: Kind, q: ListQuery) -> Result<Response, ApiError> {
    app.read_barrier().await?;
    let state = app.shared.read();
    let node_id = match &q.node {
        None => None,
        Some(n) => Some(resolve(&state, Kind::Node, n, None)?),
    };
    let list: ListResponse = paginate(
        objects(&state, kind),
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

macro_rules! crud {
    ($m:ident, $kind:expr, $tag:literal, $coll:literal, $item:literal, $obj:ty, $spec:ty, $validate:path, $build:path) => {
        pub mod $m {
            use super::*;

            #[utoipa::path(get, path = $coll, tag = $tag, params(ListQuery),
                responses((status = 200, body = ListResponse), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)))]
            pub async fn list(State(app): State<Arc<App>>, q: Result<Query<ListQuery>, QueryRejection>) -> Result<Response, ApiError> {
                super::list_kind(&app, $kind, super::query(q)?).await
            }

            #[utoipa::path(get, path = $item, tag = $tag, params(("id" = String, Path, description = "id or name"), ProjectQuery),
                responses((status = 200, body = $obj), (status = 404, body = ErrorEnvelope)))]
            pub async fn get(State(app): State<Arc<App>>, Path(id): Path<String>, q: Result<Query<ProjectQuery>, QueryRejection>) -> Result<Response, ApiError> {
                super::get_kind(&app, $kind, &id, super::query(q)?).await
            }

            #[utoipa::path(post, path = $coll, tag = $tag, request_body = CreateRequest<$spec>,
                params(("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key returns the first result")),
                responses((status = 201, body = $obj), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
            pub async fn create(State(app): State<Arc<App>>, headers: HeaderMap, JsonBody(req, raw): JsonBody<CreateRequest<$spec>>) -> Result<Response, ApiError> {
                $validate(&req.spec)?;
                let meta = super::new_meta(&req.name, req.project.as_deref(), req.labels)?;
                let command = $build(meta, req.spec)?;
                super::create_with(&app, $kind, &headers, &raw, command).await
            }

            #[utoipa::path(put, path = $item, tag = $tag, request_body = UpdateRequest<$spec>,
                params(("id" = String, Path, description = "id or name"), ProjectQuery, ("If-Match" = Option<String>, Header, description = "\"<revision>\"")),
                responses((status = 200, body = $obj), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope)))]
            pub async fn update(State(app): State<Arc<App>>, Path(id): Path<String>, q: Result<Query<ProjectQuery>, QueryRejection>, headers: HeaderMap, JsonBody(req, _): JsonBody<UpdateRequest<$spec>>) -> Result<Response, ApiError> {
                if let Some(s) = &req.spec {
                    $validate(s)?;
                }
                let spec = req.spec.map(Spec::from);
                super::update_kind(&app, $kind, &id, super::query(q)?, &headers, req.labels, spec).await
            }

            #[utoipa::path(delete, path = $item, tag = $tag,
                params(("id" = String, Path, description = "id or name"), DeleteQuery, ("If-Match" = Option<String>, Header, description = "\"<revision>\"")),
                responses((status = 204), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope)))]
            pub async fn delete(State(app): State<Arc<App>>, Path(id): Path<String>, q: Result<Query<DeleteQuery>, QueryRejection>, headers: HeaderMap) -> Result<Response, ApiError> {
                super::delete_kind(&app, $kind, &id, super::query(q)?, &headers).await
            }

            pub fn routes() -> Router<Arc<App>> {
                Router::new()
                    .route($coll, axum::routing::get(list).post(create))
                    .route($item, axum::routing::get(get).put(update).delete(delete))
            }
        }
    };
}

fn build_network(meta: Meta, spec: NetworkSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateNetwork {
        network: Network {
            meta,
            spec,
            status: Status::default(),
        },
    })
}

fn build_nic(meta: Meta, spec: NicSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateNic {
        nic: Nic {
            meta,
            spec,
            status: Status::default(),
            vm_id: None,
            owner_vm_id: None,
        },
    })
}

fn build_security_group(meta: Meta, mut spec: SecurityGroupSpec) -> Result<Command, ApiError> {
    for rule in &mut spec.rules {
        rule.id.get_or_insert_with(new_id);
    }
    Ok(Command::CreateSecurityGroup {
        security_group: SecurityGroup {
            meta,
            spec,
            status: Status::default(),
        },
    })
}

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

fn build_volume(meta: Meta, spec: VolumeSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateVolume {
        volume: Volume {
            meta,
            spec,
            status: Status::default(),
            node_id: None,
            owner_vm_id: None,
            vm_id: None,
            snapshots: Vec::new(),
            rollback: None,
        },
    })
}

/// A name for an owned object: `<vm>-<suffix>`, cut to a DNS label.
fn owned_name(vm: &str, suffix: &str) -> String {
    let keep = 63usize.saturating_sub(suffix.len() + 1);
    let base: String = vm.chars().take(keep).collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

fn build_vm(meta: Meta, mut spec: VmSpec) -> Result<Command, ApiError> {
    let mut owned_volumes = Vec::new();
    let mut owned_nics = Vec::new();
    if let Some(root) = &spec.root_volume {
        let mut vmeta = meta.clone();
        vmeta.id = new_id();
        vmeta.name = owned_name(&meta.name, "root");
        vmeta.labels = BTreeMap::new();
        spec.volume_ids.insert(0, vmeta.id.clone());
        owned_volumes.push(Volume {
            meta: vmeta,
            spec: VolumeSpec {
                size_bytes: root.size_bytes,
                template_id: Some(root.template_id.clone()),
                node_id: None,
            },
            status: Status::default(),
            node_id: None,
            owner_vm_id: Some(meta.id.clone()),
            vm_id: Some(meta.id.clone()),
            snapshots: Vec::new(),
            rollback: None,
        });
    }
    for (i, req) in spec.network_interfaces.iter().enumerate() {
        let mut nmeta = meta.clone();
        nmeta.id = new_id();
        nmeta.name = owned_name(&meta.name, &format!("nic{i}"));
        nmeta.labels = BTreeMap::new();
        spec.nic_ids.push(nmeta.id.clone());
        owned_nics.push(Nic {
            meta: nmeta,
            spec: NicSpec {
                network_id: req.network_id.clone(),
                mac_address: None,
                ipv4_address: req.ipv4_address.clone(),
                ipv6_address: req.ipv6_address.clone(),
                security_group_ids: req.security_group_ids.clone(),
                routed_prefixes: Vec::new(),
            },
            status: Status::default(),
            vm_id: Some(meta.id.clone()),
            owner_vm_id: Some(meta.id.clone()),
        });
    }
    Ok(Command::CreateVm {
        vm: Vm {
            meta,
            spec,
            status: Status::default(),
            node_id: None,
            node_state: None,
            scheduling: Scheduling::default(),
            stop_mode: "graceful".into(),
            restart_generation: 0,
        },
        owned_volumes,
        owned_nics,
    })
}

crud!(
    networks,
    Kind::Network,
    "networks",
    "/v1/networks",
    "/v1/networks/{id}",
    Network,
    NetworkSpec,
    validate::network,
    build_network
);
crud!(
    nics,
    Kind::Nic,
    "nics",
    "/v1/nics",
    "/v1/nics/{id}",
    Nic,
    NicSpec,
    validate::nic,
    build_nic
);
crud!(
    security_groups,
    Kind::SecurityGroup,
    "security-groups",
    "/v1/security-groups",
    "/v1/security-groups/{id}",
    SecurityGroup,
    SecurityGroupSpec,
    validate::security_group,
    build_security_group
);
crud!(
    templates,
    Kind::Template,
    "templates",
    "/v1/templates",
    "/v1/templates/{id}",
    Template,
    TemplateSpec,
    validate::template,
    build_template
);
crud!(
    volumes,
    Kind::Volume,
    "volumes",
    "/v1/volumes",
    "/v1/volumes/{id}",
    Volume,
    VolumeSpec,
    validate::volume,
    build_volume
);
crud!(
    vms,
    Kind::Vm,
    "vms",
    "/v1/vms",
    "/v1/vms/{id}",
    Vm,
    VmSpec,
    validate::vm,
    build_vm
);

// ------------------------------------------------------------------------------------ projects

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
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    // A project's own `project` field is its name; filtering by project means "that project".
    if let Some(p) = q.project.take() {
        let mut list = list_kind_raw(&app, Kind::Project, &q).await?;
        list.items
            .retain(|o| o.get("name").and_then(|v| v.as_str()) == Some(p.as_str()));
        return Ok(Json(list).into_response());
    }
    list_kind(&app, Kind::Project, q).await
}

async fn list_kind_raw(app: &App, kind: Kind, q: &ListQuery) -> Result<ListResponse, ApiError> {
    app.read_barrier().await?;
    let state = app.shared.read();
    paginate(
        objects(&state, kind),
        q,
        None,
        app.shared.applied_revision(),
    )
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

// ------------------------------------------------------------------------------------ nodes

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(ListQuery), responses((status = 200, body = ListResponse)))]
pub async fn list_nodes(
    State(app): State<Arc<App>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    // Nodes have no project; a `phase` filter matches their state (online/offline).
    q.project = None;
    let phase = q.phase.take();
    let mut list = list_kind_raw(&app, Kind::Node, &q).await?;
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

// ------------------------------------------------------------------------------------ actions

#[utoipa::path(post, path = "/v1/vms/{id}/{action}", tag = "vms",
    params(("id" = String, Path, description = "id or name"), ("action" = String, Path, description = "start, stop, kill or restart"), ProjectQuery),
    responses((status = 200, body = Vm), (status = 404, body = ErrorEnvelope)))]
pub async fn vm_action(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(String, String)>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    if !["start", "stop", "kill", "restart"].contains(&action.as_str()) {
        return Err(ApiError::new(
            "not_found",
            format!("unknown VM action {action:?}: start, stop, kill or restart"),
        ));
    }
    let q = query(q)?;
    let id = resolve(&app.shared.read(), Kind::Vm, &id, q.project.as_deref())?;
    let (_, value) = app
        .submit(
            Command::VmAction {
                id,
                action,
                now: now(),
            },
            None,
        )
        .await?;
    Ok(object_response(StatusCode::OK, value))
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
                        format: "raw".into(),
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

#[utoipa::path(post, path = "/v1/security-groups/{id}/rules", tag = "security-groups", request_body = SecurityGroupRule, params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses((status = 201, body = SecurityGroupRule), (status = 400, body = ErrorEnvelope)))]
pub async fn add_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    JsonBody(mut rule, _): JsonBody<SecurityGroupRule>,
) -> Result<Response, ApiError> {
    validate::rule(&rule)?;
    rule.id.get_or_insert_with(new_id);
    let q = query(q)?;
    let security_group_id = resolve(
        &app.shared.read(),
        Kind::SecurityGroup,
        &id,
        q.project.as_deref(),
    )?;
    let (_, value) = app
        .submit(
            Command::AddRule {
                security_group_id,
                rule,
                now: now(),
            },
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

#[utoipa::path(delete, path = "/v1/security-groups/{id}/rules/{rule_id}", tag = "security-groups", params(("id" = String, Path, description = "id or name"), ("rule_id" = String, Path, description = "rule id"), ProjectQuery),
    responses((status = 204), (status = 404, body = ErrorEnvelope)))]
pub async fn delete_rule(
    State(app): State<Arc<App>>,
    Path((id, rule_id)): Path<(String, String)>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let security_group_id = resolve(
        &app.shared.read(),
        Kind::SecurityGroup,
        &id,
        q.project.as_deref(),
    )?;
    app.submit(
        Command::DeleteRule {
            security_group_id,
            rule_id,
            now: now(),
        },
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .merge(networks::routes())
        .merge(nics::routes())
        .merge(security_groups::routes())
        .merge(templates::routes())
        .merge(volumes::routes())
        .merge(vms::routes())
        .route("/v1/projects", get(list_projects).post(create_project))
        .route(
            "/v1/projects/{id}",
            get(get_project).put(update_project).delete(delete_project),
        )
        .route("/v1/nodes", get(list_nodes))
        .route(
            "/v1/nodes/{id}",
            get(get_node).put(update_node).delete(delete_node),
        )
        .route("/v1/vms/{id}/console", get(super::console::vm_console))
        .route("/v1/vms/{id}/{action}", post(vm_action))
        .route("/v1/volumes/{id}/resize", post(resize_volume))
        .route(
            "/v1/volumes/{id}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/volumes/{id}/snapshots/{snapshot_id}",
            delete_route(delete_snapshot),
        )
        .route("/v1/templates/{id}/cancel", post(cancel_import))
        .route(
            "/v1/volumes/{id}/snapshots/{snapshot_id}/rollback",
            post(rollback_snapshot),
        )
        .route(
            "/v1/volumes/{id}/snapshots/{snapshot_id}/promote",
            post(promote_snapshot),
        )
        .route("/v1/security-groups/{id}/rules", post(add_rule))
        .route(
            "/v1/security-groups/{id}/rules/{rule_id}",
            delete_route(delete_rule),
        )
}
