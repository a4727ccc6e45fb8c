//! Who may call what (README "Tokens and roles"): the Bearer authentication middleware, the
//! role each route needs ([`access`]), and the project scope of operator and viewer tokens.
//!
//! A request flows: [`auth`] finds the token, checks the role the route needs (403), and for a
//! project-scoped token checks that the object an item path names is in one of its projects
//! (404, as if it did not exist); the handler gets a [`Caller`]. Lists, creates, events and the
//! audit log apply the scope themselves through [`Caller::sees`] and [`Caller::may_create_in`].

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::openapi;
use crate::app::{hash_secret, App};
use crate::model::{ApiToken, Kind, Role};
use crate::state::{ApiError, State as Cluster, DEFAULT_PROJECT};

/// Who is calling: the token, its role and its projects (empty = every project).
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub projects: Vec<String>,
    pub node_id: Option<String>,
}

impl Caller {
    fn of(t: &ApiToken) -> Self {
        Self {
            token_id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            projects: t.projects.clone(),
            node_id: t.node_id.clone(),
        }
    }

    /// Limited to some projects.
    pub fn is_scoped(&self) -> bool {
        !self.projects.is_empty()
    }

    /// Whether objects of `project` are visible to the caller.
    pub fn sees(&self, project: &str) -> bool {
        self.projects.is_empty() || self.projects.iter().any(|p| p == project)
    }

    /// A create into `project`: refused (403) outside the caller's projects.
    pub fn may_create_in(&self, project: &str) -> Result<(), ApiError> {
        if self.sees(project) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this token may not create objects in project {project:?}"
            )))
        }
    }

    /// Whether the JSON `object` of `kind` (as lists serve it) is visible: nodes to everyone,
    /// projects by their name, everything else by its project.
    pub fn sees_object(&self, kind: Kind, object: &Value) -> bool {
        let field = match kind {
            Kind::Node => return true,
            Kind::Project => "name",
            _ => "project",
        };
        self.sees(object.get(field).and_then(|v| v.as_str()).unwrap_or(""))
    }

    /// Whether the object with this id (of any kind) is visible, for the audit log: unknown ids
    /// (deleted objects, tokens) are visible only to unscoped callers.
    pub fn sees_id(&self, state: &Cluster, id: &str) -> bool {
        if !self.is_scoped() {
            return true;
        }
        if state.nodes.contains_key(id) {
            return true;
        }
        SCOPED_KINDS
            .iter()
            .chain(&[Kind::Project])
            .find_map(|k| state.meta(*k, id))
            .is_some_and(|m| self.sees(&m.project))
    }
}

/// The kinds that live in a project (their item paths are checked against a token's scope).
const SCOPED_KINDS: [Kind; 9] = [
    Kind::Network,
    Kind::Nic,
    Kind::SecurityGroup,
    Kind::Template,
    Kind::Volume,
    Kind::Vm,
    Kind::Pod,
    Kind::Backup,
    Kind::Replication,
];

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: health, the OpenAPI document and docs, joining with a join token.
    Public,
    /// Any valid token, node tokens included: `GET /v1/whoami`.
    AnyToken,
    /// Reading: admin, operator, viewer.
    Read,
    /// Changing project-scoped resources (and the console, a write channel): admin, operator.
    Write,
    /// Tokens, the control plane, nodes and projects: admin only.
    Admin,
}

impl Access {
    fn allows(self, role: Role) -> bool {
        match self {
            Access::Public | Access::AnyToken => true,
            Access::Read => matches!(role, Role::Admin | Role::Operator | Role::Viewer),
            Access::Write => matches!(role, Role::Admin | Role::Operator),
            Access::Admin => role == Role::Admin,
        }
    }
}

/// The access `method` on `path` needs. Every route of `routes()` falls under one rule here;
/// `tests/authz.rs` walks them all with every role.
pub fn access(method: &Method, path: &str) -> Access {
    if path == "/v1/health" || path == "/v1/controlplane/join" || openapi::is_docs_path(path) {
        return Access::Public;
    }
    if path == "/v1/whoami" {
        return Access::AnyToken;
    }
    let collection = path
        .strip_prefix("/v1/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    let admin_only = matches!(collection, "tokens" | "controlplane" | "projects" | "nodes");
    let read = *method == Method::GET || *method == Method::HEAD;
    if read {
        if collection == "tokens" {
            Access::Admin
        } else if (collection == "vms" && path.ends_with("/console"))
            || (collection == "pods" && path.ends_with("/exec"))
        {
            // A write channel into the guest or container.
            Access::Write
        } else {
            Access::Read
        }
    } else if admin_only {
        // Nodes included: a drain moves every project's VMs and cordons the node, and an
        // undrain uncordons it — what `PUT /v1/nodes/{id}` does, which is an admin's.
        Access::Admin
    } else {
        Access::Write
    }
}

fn kind_of_collection(collection: &str) -> Option<Kind> {
    Some(match collection {
        "projects" => Kind::Project,
        "networks" => Kind::Network,
        "nics" => Kind::Nic,
        "security-groups" => Kind::SecurityGroup,
        "templates" => Kind::Template,
        "volumes" => Kind::Volume,
        "vms" => Kind::Vm,
        "pods" => Kind::Pod,
        "backups" => Kind::Backup,
        "replications" => Kind::Replication,
        _ => return None,
    })
}

/// The value of `key` in a query string.
fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// For a scoped caller on an item path (`/v1/<kind>/{id}[/...]`): whether the object is
/// visible. `None` = the answer needs the state as of the read index (an id this member does
/// not know yet).
fn item_visible(
    state: &Cluster,
    caller: &Caller,
    kind: Kind,
    id: &str,
    project: &str,
) -> Option<bool> {
    if let Some(meta) = state.meta(kind, id) {
        return Some(caller.sees(&meta.project));
    }
    if kind == Kind::Project {
        // A project's path names it by id or by its name.
        return Some(caller.sees(id));
    }
    if !caller.sees(project) {
        return Some(false);
    }
    // A name in a visible project resolves inside it.
    if state.id_by_name(kind, project, id).is_some() {
        return Some(true);
    }
    None
}

/// Applies the scope of `caller` to an item path: `Err(404)` when the object is not visible.
async fn check_scope(
    app: &App,
    caller: &Caller,
    path: &str,
    query: Option<&str>,
) -> Result<(), ApiError> {
    if !caller.is_scoped() {
        return Ok(());
    }
    let mut segments = path.trim_start_matches("/v1/").split('/');
    let (Some(kind), Some(id)) = (
        segments.next().and_then(kind_of_collection),
        segments.next().filter(|s| !s.is_empty()),
    ) else {
        return Ok(());
    };
    let project = query_value(query, "project").unwrap_or(DEFAULT_PROJECT);
    let visible = item_visible(&app.shared.read(), caller, kind, id, project);
    let visible = match visible {
        Some(v) => v,
        None => {
            // Not known here (yet): decide on the state as of the read index, so that an
            // object just created elsewhere is not served unchecked by the handler.
            app.read_barrier().await?;
            let state = app.shared.read();
            item_visible(&state, caller, kind, id, project).unwrap_or(true)
        }
    };
    if visible {
        Ok(())
    } else {
        Err(ApiError::not_found(kind, id))
    }
}

/// The authentication and authorization middleware (every `/v1` request).
pub async fn auth(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let needs = access(req.method(), &path);
    if needs == Access::Public {
        return next.run(req).await;
    }
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    // Browsers cannot set headers on EventSource and WebSocket: those two accept
    // `?access_token=` instead (removed from the query before the handler sees it).
    let streaming = path == "/v1/events"
        || path.ends_with("/console")
        || (path.starts_with("/v1/pods/") && (path.ends_with("/exec") || path.ends_with("/logs")));
    let token = match header_token {
        Some(t) => Some(t),
        None if streaming => take_query_token(&mut req),
        None => None,
    };
    let Some(token) = token else {
        return ApiError::unauthenticated("missing Authorization: Bearer <token>").into_response();
    };
    let hash = hash_secret(&token);
    let caller = {
        let state = app.shared.read();
        state
            .tokens
            .values()
            .find(|t| t.hash == hash)
            .map(Caller::of)
    };
    let Some(caller) = caller else {
        return ApiError::unauthenticated("unknown or revoked token").into_response();
    };
    if caller.role == Role::Node && needs != Access::AnyToken {
        return ApiError::forbidden("this token may only be used by node agents on NodeService")
            .into_response();
    }
    if !needs.allows(caller.role) {
        let what = match needs {
            Access::Admin => "an admin token",
            _ => "an admin or operator token",
        };
        return ApiError::forbidden(format!(
            "{} {path} needs {what}; this token is {}",
            req.method(),
            caller.role
        ))
        .into_response();
    }
    let query = req.uri().query().map(String::from);
    if let Err(e) = check_scope(&app, &caller, &path, query.as_deref()).await {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Removes `access_token=<t>` from the request's query string and returns it.
fn take_query_token(req: &mut Request) -> Option<String> {
    let query = req.uri().query()?.to_string();
    let mut token = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("access_token=") {
            Some(t) => {
                token = Some(t.to_string());
                false
            }
            None => true,
        })
        .collect();
    let token = token?;
    let path = req.uri().path().to_string();
    let new = if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    if let Ok(uri) = new.parse() {
        *req.uri_mut() = uri;
    }
    Some(token)
}

/// The caller's own token, as `GET /v1/whoami` shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Token id.
    pub id: String,
    /// Token name.
    pub name: String,
    #[schema(inline)]
    pub role: Role,
    /// The projects the token sees; empty = every project.
    pub projects: Vec<String>,
    /// Node tokens: the node the token is bound to (after its first `Register`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, description = "the calling token (any role, node tokens too)", body = WhoAmI),
        (status = 401, body = super::ErrorEnvelope)))]
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        id: caller.token_id,
        name: caller.name,
        role: caller.role,
        projects: caller.projects,
        node_id: caller.node_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_route_needs_the_role_the_readme_names() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(access(&get, "/v1/health"), Access::Public);
        assert_eq!(access(&post, "/v1/controlplane/join"), Access::Public);
        assert_eq!(access(&get, "/v1/whoami"), Access::AnyToken);
        assert_eq!(access(&get, "/v1/vms/x"), Access::Read);
        assert_eq!(access(&get, "/v1/vms/x/console"), Access::Write);
        assert_eq!(access(&get, "/v1/tokens"), Access::Admin);
        assert_eq!(access(&get, "/v1/controlplane"), Access::Read);
        assert_eq!(access(&post, "/v1/vms/x/start"), Access::Write);
        assert_eq!(access(&get, "/v1/pods/x/exec"), Access::Write);
        assert_eq!(access(&get, "/v1/pods/x/logs"), Access::Read);
        assert_eq!(access(&post, "/v1/pods/x/restart"), Access::Write);
        assert_eq!(access(&Method::PUT, "/v1/nodes/x"), Access::Admin);
        assert_eq!(access(&post, "/v1/projects"), Access::Admin);
        assert_eq!(access(&post, "/v1/controlplane/join-tokens"), Access::Admin);
        assert!(!Access::Write.allows(Role::Viewer));
        assert!(!Access::Read.allows(Role::Node));
        assert!(Access::Write.allows(Role::Operator));
    }

    #[test]
    fn a_query_value_is_found_by_its_whole_key() {
        assert_eq!(query_value(Some("a=1&project=b"), "project"), Some("b"));
        assert_eq!(query_value(Some("projects=b"), "project"), None);
        assert_eq!(query_value(None, "project"), None);
    }
}
