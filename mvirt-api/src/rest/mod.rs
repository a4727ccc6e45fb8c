//! The REST API under `/v1` (axum). Handlers only translate: they validate the request
//! (`validate.rs`), mint ids and timestamps, submit a [`Command`] through [`App::submit`] and turn
//! the outcome into JSON. Reads go through the Raft read index first ([`App::read_barrier`]).
//!
//! Cross-cutting behaviour lives here: Bearer authentication and roles (`access.rs`), the error envelope, JSON bodies
//! with unknown fields rejected and a size limit, `If-Match`/`ETag`, `Idempotency-Key`, lists
//! with filters and pagination. One file per resource: `projects.rs`, `nodes.rs`, `networks.rs`, `nics.rs`,
//! `security_groups.rs`, `templates.rs`, `volumes.rs`, `vms.rs`, `pods.rs` (each with its actions; the
//! shared CRUD is `resources.rs`), `cluster.rs` (tokens, control plane, join), `events.rs` (SSE),
//! `logs.rs` (mvirt-log), `hosts.rs`, `console.rs`; `ui.rs` serves the web dashboard next to
//! `/v1`. Every route is in the one table of [`routes`].

mod access;
mod backups;
mod cluster;
mod console;
mod events;
mod hosts;
mod logs;
mod networks;
mod nics;
mod nodes;
pub mod openapi;
mod pods;
mod projects;
mod replications;
mod resources;
mod security_groups;
mod stats;
mod templates;
pub mod ui;
mod vms;
mod volumes;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::app::App;
use crate::model::*;
use crate::state::{ApiError, ErrorCode};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 1024 * 1024;

pub use access::{access, Access, Caller};
pub use cluster::JoinResponse;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.message, "internal error");
        }
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "request_id": mvirt_common::trace::current(),
        }});
        (status, Json(body)).into_response()
    }
}

/// The error envelope, for the OpenAPI document.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `invalid_argument`, `unauthenticated`, `permission_denied`, `not_found`, `already_exists`,
    /// `conflict`, `precondition_failed`, `payload_too_large`, `no_leader`, `internal`.
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Value,
    /// The request's id (also in the `X-Request-Id` response header): quote it when reporting
    /// a problem; `GET /v1/logs?trace_id=` finds the work it caused.
    pub request_id: Option<String>,
}

/// Gives every request an id: the client's `X-Request-Id` when it is a sane token (1-128
/// characters of `A-Z a-z 0-9 . _ : -`), a fresh one otherwise. The handler runs in that trace
/// ([`mvirt_common::trace::scope`]): the Raft command, the objects it changes (`meta.trace_id`),
/// the audit entries and the node agent's calls carry it. The answer echoes it in
/// `X-Request-Id` (and error bodies in `error.request_id`).
pub async fn request_id(req: Request, next: middleware::Next) -> Response {
    with_request_id(req, |req| next.run(req)).await
}

/// What [`request_id`] does, around `rest` (the rest of the stack).
async fn with_request_id<F: std::future::Future<Output = Response>>(
    mut req: Request,
    rest: impl FnOnce(Request) -> F,
) -> Response {
    let offered = req
        .headers()
        .get(mvirt_common::trace::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok());
    let id = mvirt_common::trace::accept_or_new(offered);
    let value = HeaderValue::from_str(&id).ok();
    if let Some(value) = &value {
        req.headers_mut()
            .insert(mvirt_common::trace::REQUEST_ID_HEADER, value.clone());
    }
    let span = tracing::info_span!("request", trace_id = %id);
    let mut resp =
        tracing::Instrument::instrument(mvirt_common::trace::scope(Some(id), rest(req)), span)
            .await;
    if let Some(value) = value {
        resp.headers_mut()
            .insert(mvirt_common::trace::REQUEST_ID_HEADER, value);
    }
    resp
}

/// The outer layers of every route in one `from_fn` (each layer costs a boxed future and a
/// service clone per request), from the outside in: the request id ([`request_id`]), the HTTP
/// metrics ([`mvirt_common::metrics::track`]: every answer is counted, refusals by auth and the
/// body limit included) and the error envelope for what axum answers by itself
/// ([`openapi::envelope_rejections`]).
pub async fn front(
    State(metrics): State<&'static mvirt_common::metrics::HttpMetrics>,
    req: Request,
    next: middleware::Next,
) -> Response {
    with_request_id(req, |req| {
        mvirt_common::metrics::tracked(metrics, req, |req| async move {
            openapi::envelope(next.run(req).await).await
        })
    })
    .await
}

/// A JSON body: parsed with serde (unknown fields are rejected by the types), errors in the
/// envelope, 413 over [`BODY_LIMIT`].
pub struct JsonBody<T>(pub T, pub Bytes);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("expected application/json, got {ct}"),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body exceeds {BODY_LIMIT} bytes"),
                )
            } else {
                ApiError::invalid(format!("cannot read body: {e}"))
            }
        })?;
        // Every body is an object (serde would also take a struct's fields as an array).
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        let value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            // JSON Schema (and JavaScript) count `3.0` as the integer 3: accept it as one.
            Err(e) => integral_floats(&bytes)
                .and_then(|v| T::deserialize(v).ok())
                .ok_or_else(|| ApiError::invalid(format!("invalid JSON body: {e}")))?,
        };
        Ok(JsonBody(value, bytes))
    }
}

/// `bytes` as JSON with every float that is a whole number turned into an integer, or `None`
/// when it is no JSON or holds no such float (so the first error stands).
fn integral_floats(bytes: &[u8]) -> Option<Value> {
    fn walk(v: &mut Value) -> bool {
        match v {
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() != 0.0 || !f.is_finite() || f.abs() > 9.007_199_254_740_992e15 {
                    return false;
                }
                *v = Value::from(f as i64);
                true
            }
            Value::Array(a) => a.iter_mut().fold(false, |c, x| walk(x) | c),
            Value::Object(o) => o.values_mut().fold(false, |c, x| walk(x) | c),
            _ => false,
        }
    }
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    walk(&mut value).then_some(value)
}

/// `ETag: "<revision>"`.
pub fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Parses `If-Match: "<revision>"` (`*` or absent = no condition).
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::invalid("invalid If-Match header"))?
        .trim();
    if s == "*" {
        return Ok(None);
    }
    let s = s.trim_start_matches("W/").trim_matches('"');
    s.parse::<u64>().map(Some).map_err(|_| {
        ApiError::invalid(format!(
            "invalid If-Match {s:?}: expected a revision like \"42\""
        ))
    })
}

/// Reads `Idempotency-Key` and fingerprints the request it came with.
pub fn idempotency(
    headers: &HeaderMap,
    scope: &str,
    body: &[u8],
) -> Result<Option<crate::state::Idempotency>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::invalid("invalid Idempotency-Key"))?;
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::invalid(
            "Idempotency-Key must be 1-255 characters",
        ));
    }
    let mut material = scope.as_bytes().to_vec();
    material.push(0);
    material.extend_from_slice(body);
    Ok(Some(crate::state::Idempotency {
        key: format!("{scope}:{key}"),
        fingerprint: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&material)),
        created_at_ms: crate::app::now_ms(),
    }))
}

/// An object already serialized by the state (`model::Json`) as the response, with its ETag:
/// the text goes out as it is, without a `Value` round trip.
pub fn json_response(status: StatusCode, object: crate::model::Json) -> Response {
    #[derive(Deserialize)]
    struct Revision {
        #[serde(default)]
        revision: u64,
    }
    let revision = serde_json::from_str::<Revision>(object.get())
        .map(|r| r.revision)
        .unwrap_or(0);
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    let mut resp = (status, content_type, String::from(object)).into_response();
    resp.headers_mut().insert(header::ETAG, etag(revision));
    resp
}

/// A JSON object response with its ETag.
pub fn object_response(status: StatusCode, value: Value) -> Response {
    let revision = value.get("revision").and_then(|r| r.as_u64()).unwrap_or(0);
    let mut resp = (status, Json(value)).into_response();
    resp.headers_mut().insert(header::ETAG, etag(revision));
    resp
}

/// Common list filters and pagination.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only objects of this project (name). Default: all projects.
    pub project: Option<String>,
    /// Only objects placed on this node (id or name): VMs, volumes.
    pub node: Option<String>,
    /// Label selector `k=v,k2=v2` (all must match).
    pub label: Option<String>,
    /// Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs).
    pub phase: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ListResponse {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    pub next_page_token: Option<String>,
    /// The applied revision the list was read at.
    pub revision: u64,
}

/// Filters and paginates `objects` (sorted by id).
pub fn paginate(
    objects: Vec<Value>,
    q: &ListQuery,
    node_id: Option<&str>,
    revision: u64,
) -> Result<ListResponse, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let labels: Vec<(String, String)> = match &q.label {
        None => Vec::new(),
        Some(sel) => sel
            .split(',')
            .map(|t| {
                let mut kv = t.splitn(2, '=');
                match (kv.next(), kv.next()) {
                    (Some(k), Some(v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => Err(ApiError::invalid(format!(
                        "invalid label selector term {t:?}: expected k=v"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?,
    };
    let after = q.page_token.clone().unwrap_or_default();
    let mut items = Vec::new();
    let mut next = None;
    for obj in objects {
        let id = obj
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        if !after.is_empty() && id.as_str() <= after.as_str() {
            continue;
        }
        if let Some(p) = &q.project {
            if obj.get("project").and_then(|v| v.as_str()) != Some(p.as_str()) {
                continue;
            }
        }
        if let Some(n) = node_id {
            if obj.get("node_id").and_then(|v| v.as_str()) != Some(n) {
                continue;
            }
        }
        if !labels.iter().all(|(k, v)| {
            obj.get("labels")
                .and_then(|l| l.get(k))
                .and_then(|x| x.as_str())
                == Some(v.as_str())
        }) {
            continue;
        }
        if let Some(phase) = &q.phase {
            let st = obj
                .pointer("/status/phase")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let sched = obj
                .pointer("/scheduling/state")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if st != phase && !(phase == "pending" && sched == "pending") {
                continue;
            }
        }
        if items.len() == limit {
            next = items
                .last()
                .and_then(|o: &Value| o.get("id"))
                .and_then(|v| v.as_str())
                .map(String::from);
            break;
        }
        items.push(obj);
    }
    Ok(ListResponse {
        items,
        next_page_token: next,
        revision,
    })
}

#[utoipa::path(get, path = "/v1/health", tag = "system", responses((status = 200, description = "the member is up")))]
async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    Json(
        json!({"status": "ok", "member_id": app.member_id, "applied_revision": app.shared.applied_revision()}),
    )
}

async fn not_found_fallback() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mvirt API",
        description = "mvirt control plane REST API. Every call needs `Authorization: Bearer <token>`."
    ),
    paths(
        health,
        projects::list_projects,
        projects::get_project,
        projects::create_project,
        projects::update_project,
        projects::delete_project,
        networks::list,
        networks::get,
        networks::create,
        networks::update,
        networks::delete,
        nics::list,
        nics::get,
        nics::create,
        nics::update,
        nics::delete,
        security_groups::list,
        security_groups::get,
        security_groups::create,
        security_groups::update,
        security_groups::delete,
        templates::list,
        templates::get,
        templates::create,
        templates::update,
        templates::delete,
        volumes::list,
        volumes::get,
        volumes::create,
        volumes::update,
        volumes::delete,
        vms::list,
        vms::get,
        vms::create,
        vms::update,
        vms::delete,
        stats::vm_stats,
        stats::pod_stats,
        stats::node_stats,
        pods::list,
        pods::get,
        pods::create,
        pods::update,
        pods::delete,
        pods::pod_action,
        pods::pod_logs,
        pods::pod_exec,
        nodes::list_nodes,
        nodes::get_node,
        nodes::update_node,
        nodes::delete_node,
        nodes::drain_node,
        nodes::undrain_node,
        hosts::get_host,
        vms::vm_action,
        vms::migrate_vm,
        console::vm_console,
        volumes::resize_volume,
        volumes::create_snapshot,
        volumes::delete_snapshot,
        volumes::list_snapshots,
        volumes::rollback_snapshot,
        templates::cancel_import,
        volumes::promote_snapshot,
        backups::list,
        backups::get,
        backups::create,
        backups::update,
        backups::delete,
        backups::backup_volume,
        backups::backup_vm,
        backups::restore_backup,
        replications::list,
        replications::get,
        replications::create,
        replications::update,
        replications::delete,
        security_groups::add_rule,
        security_groups::delete_rule,
        cluster::list_tokens,
        cluster::create_token,
        cluster::delete_token,
        cluster::controlplane,
        cluster::create_join_token,
        cluster::remove_member,
        cluster::join,
        events::events,
        logs::logs,
        access::whoami,
    ),
    components(schemas(
        ErrorEnvelope,
        ErrorBody,
        ListResponse,
        Event,
        Project,
        Node,
        NodeDrain,
        DrainFailure,
        DrainRequest,
        Network,
        Nic,
        SecurityGroup,
        SecurityGroupRule,
        Template,
        Volume,
        VolumeSnapshot,
        SnapshotStatus,
        VolumeRollback,
        SnapshotSource,
        Backup,
        BackupSpec,
        BackupReport,
        backups::TakeBackupRequest,
        backups::RestoreRequest,
        backups::VmBackups,
        Replication,
        ReplicationSpec,
        ReplicaReport,
        Vm,
        Migration,
        HaStatus,
        MigrateRequest,
        Pod,
        PodSpec,
        PodContainer,
        ContainerPort,
        RegistryCredential,
        ContainerStatus,
        pods::PodLogLine,
        Status,
        PerNodeStatus,
        Capacity,
        Member,
        hosts::HostInfo,
        stats::GuestStats,
        stats::NicStats,
        stats::HostStats,
        stats::NodeStats,
        hosts::StoragePool,
        access::WhoAmI,
    ))
)]
pub struct ApiDoc;

/// Every route of the REST API, in one table: path and its handlers.
fn routes() -> Vec<(&'static str, MethodRouter<Arc<App>>)> {
    vec![
        ("/v1/health", get(health)),
        ("/v1/openapi.json", get(openapi::openapi_json)),
        ("/v1/docs", get(openapi::docs_html)),
        ("/v1/docs/docs.js", get(openapi::docs_js)),
        ("/v1/docs/docs.css", get(openapi::docs_css)),
        // Resources (one file each).
        (
            "/v1/projects",
            get(projects::list_projects).post(projects::create_project),
        ),
        (
            "/v1/projects/{id}",
            get(projects::get_project)
                .put(projects::update_project)
                .delete(projects::delete_project),
        ),
        ("/v1/nodes", get(nodes::list_nodes)),
        (
            "/v1/nodes/{id}",
            get(nodes::get_node)
                .put(nodes::update_node)
                .delete(nodes::delete_node),
        ),
        (
            "/v1/nodes/{id}/drain",
            post(nodes::drain_node).delete(nodes::undrain_node),
        ),
        ("/v1/nodes/{id}/host", get(hosts::get_host)),
        ("/v1/nodes/{id}/stats", get(stats::node_stats)),
        ("/v1/networks", get(networks::list).post(networks::create)),
        (
            "/v1/networks/{id}",
            get(networks::get)
                .put(networks::update)
                .delete(networks::delete),
        ),
        ("/v1/nics", get(nics::list).post(nics::create)),
        (
            "/v1/nics/{id}",
            get(nics::get).put(nics::update).delete(nics::delete),
        ),
        (
            "/v1/security-groups",
            get(security_groups::list).post(security_groups::create),
        ),
        (
            "/v1/security-groups/{id}",
            get(security_groups::get)
                .put(security_groups::update)
                .delete(security_groups::delete),
        ),
        (
            "/v1/security-groups/{id}/rules",
            post(security_groups::add_rule),
        ),
        (
            "/v1/security-groups/{id}/rules/{rule_id}",
            delete(security_groups::delete_rule),
        ),
        (
            "/v1/templates",
            get(templates::list).post(templates::create),
        ),
        (
            "/v1/templates/{id}",
            get(templates::get)
                .put(templates::update)
                .delete(templates::delete),
        ),
        ("/v1/templates/{id}/cancel", post(templates::cancel_import)),
        ("/v1/volumes", get(volumes::list).post(volumes::create)),
        (
            "/v1/volumes/{id}",
            get(volumes::get)
                .put(volumes::update)
                .delete(volumes::delete),
        ),
        ("/v1/volumes/{id}/resize", post(volumes::resize_volume)),
        (
            "/v1/volumes/{id}/snapshots",
            get(volumes::list_snapshots).post(volumes::create_snapshot),
        ),
        (
            "/v1/volumes/{id}/snapshots/{snapshot_id}",
            delete(volumes::delete_snapshot),
        ),
        (
            "/v1/volumes/{id}/snapshots/{snapshot_id}/rollback",
            post(volumes::rollback_snapshot),
        ),
        (
            "/v1/volumes/{id}/snapshots/{snapshot_id}/promote",
            post(volumes::promote_snapshot),
        ),
        ("/v1/volumes/{id}/backups", post(backups::backup_volume)),
        ("/v1/backups", get(backups::list).post(backups::create)),
        (
            "/v1/backups/{id}",
            get(backups::get)
                .put(backups::update)
                .delete(backups::delete),
        ),
        ("/v1/backups/{id}/restore", post(backups::restore_backup)),
        (
            "/v1/replications",
            get(replications::list).post(replications::create),
        ),
        (
            "/v1/replications/{id}",
            get(replications::get)
                .put(replications::update)
                .delete(replications::delete),
        ),
        ("/v1/vms", get(vms::list).post(vms::create)),
        (
            "/v1/vms/{id}",
            get(vms::get).put(vms::update).delete(vms::delete),
        ),
        ("/v1/vms/{id}/console", get(console::vm_console)),
        ("/v1/vms/{id}/backups", post(backups::backup_vm)),
        ("/v1/vms/{id}/stats", get(stats::vm_stats)),
        ("/v1/vms/{id}/migrate", post(vms::migrate_vm)),
        ("/v1/vms/{id}/{action}", post(vms::vm_action)),
        ("/v1/pods", get(pods::list).post(pods::create)),
        (
            "/v1/pods/{id}",
            get(pods::get).put(pods::update).delete(pods::delete),
        ),
        ("/v1/pods/{id}/logs", get(pods::pod_logs)),
        ("/v1/pods/{id}/stats", get(stats::pod_stats)),
        ("/v1/pods/{id}/exec", get(pods::pod_exec)),
        ("/v1/pods/{id}/{action}", post(pods::pod_action)),
        // The cluster.
        (
            "/v1/tokens",
            get(cluster::list_tokens).post(cluster::create_token),
        ),
        ("/v1/tokens/{id}", delete(cluster::delete_token)),
        ("/v1/controlplane", get(cluster::controlplane)),
        (
            "/v1/controlplane/join-tokens",
            post(cluster::create_join_token),
        ),
        (
            "/v1/controlplane/members/{id}",
            delete(cluster::remove_member),
        ),
        ("/v1/controlplane/join", post(cluster::join)),
        ("/v1/events", get(events::events)),
        ("/v1/logs", get(logs::logs)),
        ("/v1/whoami", get(access::whoami)),
    ]
}

/// The REST router (with auth, body limit and the error envelope for unknown paths).
pub fn router(app: Arc<App>) -> Router {
    let api = routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handlers)| {
            router.route(path, handlers)
        })
        .fallback(not_found_fallback)
        .layer(middleware::from_fn_with_state(app.clone(), access::auth))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Request id, metrics and the error envelope (see `front`).
        .layer(middleware::from_fn_with_state(
            mvirt_common::metrics::HttpMetrics::of(crate::metrics::DAEMON),
            front,
        ));
    api.with_state(app)
}

/// Labels from an optional map, validated.
pub fn labels_of(
    l: Option<BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let l = l.unwrap_or_default();
    crate::validate::labels(&l)?;
    Ok(l)
}
