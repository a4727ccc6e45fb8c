//! API tokens and the control plane: members, join tokens, joining and removal.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ErrorEnvelope, JsonBody};
use crate::app::{hash_secret, new_id, now, now_ms, random_secret, App, Removal};
use crate::model::{ApiToken, JoinToken, Member, Role};
use crate::state::{ApiError, Command, ErrorCode};
use crate::validate;

/// A token as listed (never with its secret or hash).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    #[schema(inline)]
    pub role: Role,
    /// Operator and viewer tokens: the projects the token sees; empty = every project.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Node tokens: the node the token is bound to (after its first `Register`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub created_at: String,
    /// Only in the answer to the create call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Only in the answer to the create call: the cluster CA's fingerprint (`sha256:<hex>`),
    /// to pin when using the token (absent with `--insecure-plaintext`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

impl TokenView {
    fn of(t: &ApiToken, token: Option<String>) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            projects: t.projects.clone(),
            node_id: t.node_id.clone(),
            created_at: t.created_at.clone(),
            token,
            ca_fingerprint: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    /// `admin` (everything), `operator` (changes project resources, reads everything in its
    /// projects), `viewer` (reads only; no console) or `node` (NodeService only, bound to the
    /// first node it registers).
    #[schema(inline)]
    pub role: Role,
    /// Operator and viewer tokens only: the projects (names) the token sees; omitted or empty =
    /// every project. Objects of other projects are invisible to it (404), creates there 403.
    #[serde(default)]
    pub projects: Option<Vec<String>>,
}

#[utoipa::path(get, path = "/v1/tokens", tag = "auth", responses((status = 200, body = [TokenView])))]
pub async fn list_tokens(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    app.read_barrier().await?;
    let state = app.shared.read();
    let tokens: Vec<TokenView> = state
        .tokens
        .values()
        .map(|t| TokenView::of(t, None))
        .collect();
    Ok(Json(tokens).into_response())
}

#[utoipa::path(post, path = "/v1/tokens", tag = "auth", request_body = CreateTokenRequest,
    responses((status = 201, body = TokenView), (status = 400, body = ErrorEnvelope)))]
pub async fn create_token(
    State(app): State<Arc<App>>,
    JsonBody(req, _): JsonBody<CreateTokenRequest>,
) -> Result<Response, ApiError> {
    validate::name("token name", &req.name)?;
    let mut projects = req.projects.unwrap_or_default();
    if projects.len() > 100 {
        return Err(ApiError::invalid("projects: at most 100"));
    }
    for p in &projects {
        validate::name("project", p)?;
    }
    projects.sort();
    projects.dedup();
    if !projects.is_empty() && !matches!(req.role, Role::Operator | Role::Viewer) {
        return Err(ApiError::invalid(
            "projects: only operator and viewer tokens are limited to projects",
        ));
    }
    let secret = random_secret();
    let token = ApiToken {
        id: new_id(),
        name: req.name,
        role: req.role,
        hash: hash_secret(&secret),
        created_at: now(),
        revision: 0,
        projects,
        node_id: None,
    };
    app.submit(
        Command::CreateToken {
            token: token.clone(),
        },
        None,
    )
    .await?;
    let mut view = TokenView::of(&token, Some(secret));
    view.ca_fingerprint = app.tls.as_ref().map(|t| t.fingerprint());
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "auth", params(("id" = String, Path, description = "token id")), responses((status = 204), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn delete_token(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.submit(Command::DeleteToken { id }, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub id: u64,
    pub api_url: String,
    pub raft_addr: String,
    /// `leader`, `voter` or `learner`.
    pub role: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ControlPlaneView {
    pub member_id: u64,
    pub members: Vec<MemberView>,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub state: String,
    pub last_log_index: Option<u64>,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    /// The log is purged up to here (entries up to it exist only in the snapshot).
    pub purged_index: Option<u64>,
    /// The cluster CA's fingerprint (`sha256:<hex>`; absent with `--insecure-plaintext`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

#[utoipa::path(get, path = "/v1/controlplane", tag = "controlplane", responses((status = 200, body = ControlPlaneView)))]
pub async fn controlplane(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| MemberView {
            id: *id,
            api_url: node.api_url.clone(),
            raft_addr: node.raft_addr.clone(),
            role: if Some(*id) == m.current_leader {
                "leader".into()
            } else if voters.contains(id) {
                "voter".into()
            } else {
                "learner".into()
            },
        })
        .collect();
    let state = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    Ok(Json(ControlPlaneView {
        member_id: app.member_id,
        members,
        leader_id: m.current_leader,
        term: m.current_term,
        state: state.into(),
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        ca_fingerprint: app.tls.as_ref().map(|t| t.fingerprint()),
    })
    .into_response())
}

#[derive(Debug, Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    /// Seconds until the token expires (default 3600, at most 7 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    pub token: String,
    pub expires_at_ms: i64,
    /// The cluster CA's fingerprint (`sha256:<hex>`): the joiner pins it with
    /// `--ca-fingerprint` (absent with `--insecure-plaintext`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

#[utoipa::path(post, path = "/v1/controlplane/join-tokens", tag = "controlplane", request_body = CreateJoinTokenRequest, responses((status = 201, body = JoinTokenView)))]
pub async fn create_join_token(
    State(app): State<Arc<App>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: CreateJoinTokenRequest = if body.is_empty() {
        CreateJoinTokenRequest::default()
    } else if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("the body must be a JSON object"));
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?
    };
    let ttl = req.ttl_seconds.unwrap_or(3600);
    if ttl == 0 || ttl > 7 * 24 * 3600 {
        return Err(ApiError::invalid(
            "ttl_seconds must be between 1 and 604800",
        ));
    }
    let secret = random_secret();
    let expires_at_ms = now_ms() + (ttl as i64) * 1000;
    let token = JoinToken {
        id: new_id(),
        hash: hash_secret(&secret),
        expires_at_ms,
        used: false,
    };
    app.submit(Command::CreateJoinToken { token }, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenView {
            token: secret,
            expires_at_ms,
            ca_fingerprint: app.tls.as_ref().map(|t| t.fingerprint()),
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/v1/controlplane/members/{id}", tag = "controlplane", params(("id" = u64, Path, description = "member id")), responses((status = 204), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn remove_member(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The caller's (admin) token is valid on every member: pass it on.
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let path = format!("/v1/controlplane/members/{id}");
    if !app.is_leader() {
        return forward_to_leader_rest(
            &app,
            reqwest::Method::DELETE,
            &path,
            token.as_deref(),
            None,
        )
        .await;
    }
    match app.remove_member(id).await? {
        Removal::Removed => Ok(StatusCode::NO_CONTENT.into_response()),
        // This member led and is the one to go: the new leader removes it.
        Removal::HandedOver(_) => {
            forward_to_leader_rest(&app, reqwest::Method::DELETE, &path, token.as_deref(), None)
                .await
        }
    }
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The single-use join token.
    pub token: String,
    /// The joining member's REST URL (`https://host:port`; `http://` with `--insecure-plaintext`).
    pub api_url: String,
    /// The joining member's Raft address (`host:port`).
    pub raft_addr: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    pub member_id: u64,
    /// The secret members authenticate Raft traffic with.
    pub cluster_secret: String,
    /// The cluster CA certificate (PEM). Absent with `--insecure-plaintext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The cluster CA key (PEM): every member can issue certificates. Sent only over TLS,
    /// after the join token was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key_pem: Option<String>,
    /// The joiner's member certificate chain `[leaf, ca]` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// The key of `cert_pem` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

/// Called by `mvirt-api --join`: authenticated by the join token in the body (no Bearer).
///
/// The joiner's `api_url` must be `https://` on a TLS cluster (the default), `http://` on one
/// running with `--insecure-plaintext`. Over TLS the answer carries the cluster CA (certificate
/// and key) and the joiner's member certificate.
/// The token is checked against the replicated state in memory first (a bad one costs no Raft
/// write), and refused tokens are rate-limited per source address: past
/// [`crate::app::JOIN_FAILURE_BURST`] of them the address gets 429 with `Retry-After`.
#[utoipa::path(post, path = "/v1/controlplane/join", tag = "controlplane", request_body = JoinRequest, responses((status = 200, body = JoinResponse), (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope)))]
pub async fn join(
    State(app): State<Arc<App>>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    JsonBody(req, raw): JsonBody<JoinRequest>,
) -> Result<Response, ApiError> {
    if !req.api_url.starts_with("http://") && !req.api_url.starts_with("https://") {
        return Err(ApiError::invalid("api_url must be an http(s) URL"));
    }
    if app.tls_on() != req.api_url.starts_with("https://") {
        return Err(ApiError::invalid(if app.tls_on() {
            "this cluster serves TLS: the joining member's api_url must be https:// (is it running with --insecure-plaintext?)"
        } else {
            "this cluster runs with --insecure-plaintext: the joining member's api_url must be http://"
        }));
    }
    if req.raft_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::invalid(
            "raft_addr must be host:port with an IP address",
        ));
    }
    // Without connection info (a router served in-process) every caller shares one bucket.
    let source = peer
        .map(|Extension(ConnectInfo(addr))| addr.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    if let Err(wait) = app.join_limiter.admit(source) {
        return Ok(too_many_joins(wait));
    }
    if let Err(e) = app.verify_join_token(&req.token).await {
        if e.code == ErrorCode::PermissionDenied {
            app.join_limiter.charge(source);
        }
        return Err(e);
    }
    if !app.is_leader() {
        return forward_to_leader_rest(
            &app,
            reqwest::Method::POST,
            "/v1/controlplane/join",
            None,
            Some(raw.to_vec()),
        )
        .await;
    }
    // A join never reuses a member's address: the leader would send a stranger's log there.
    let raft_addr = req.raft_addr.parse::<std::net::SocketAddr>().ok();
    let taken = app
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .find(|(_, m)| {
            m.api_url.trim_end_matches('/') == req.api_url.trim_end_matches('/')
                || m.raft_addr.parse::<std::net::SocketAddr>().ok() == raft_addr
        })
        .map(|(id, _)| *id);
    if let Some(id) = taken {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("member {id} already has this api_url or raft_addr"),
        ));
    }
    // Still refused when another join used the token since the check above.
    let (_, value) = app
        .submit(
            Command::ConsumeJoinToken {
                hash: hash_secret(&req.token),
                now_ms: now_ms(),
            },
            None,
        )
        .await
        .inspect_err(|e| {
            if e.code == ErrorCode::PermissionDenied {
                app.join_limiter.charge(source);
            }
        })?;
    let member_id = value
        .get("member_id")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| ApiError::internal("join did not mint a member id"))?;
    // Over TLS the joiner gets the CA and its member certificate (SANs: the hosts of its
    // api_url and raft_addr, and loopback).
    let issued = match &app.tls {
        Some(tls) => {
            let mut sans = crate::tls::member_sans(&crate::tls::host_of(&req.api_url));
            let raft_host = crate::tls::host_of(&req.raft_addr);
            if !sans.contains(&raft_host) {
                sans.push(raft_host);
            }
            let issued = tls
                .ca
                .issue(
                    mvirt_common::tls::PeerIdentity::Member(member_id),
                    &sans,
                    tls.lifetime,
                )
                .map_err(|e| ApiError::internal(format!("issuing the member certificate: {e}")))?;
            Some((tls.ca.clone(), issued))
        }
        None => None,
    };
    let member = Member {
        api_url: req.api_url,
        raft_addr: req.raft_addr,
    };
    // The joiner starts its Raft listener after this answer; adding it waits until it catches up.
    let adder = app.clone();
    tokio::spawn(async move {
        if let Err(e) = adder.add_member(member_id, member).await {
            tracing::error!(member_id, error = %e.message, "adding the joining member failed");
        }
    });
    Ok(Json(JoinResponse {
        member_id,
        cluster_secret: app.secret.to_string(),
        ca_pem: issued.as_ref().map(|(ca, _)| ca.cert_pem().to_string()),
        ca_key_pem: issued.as_ref().map(|(ca, _)| ca.key_pem().to_string()),
        cert_pem: issued.as_ref().map(|(_, i)| i.cert_pem.clone()),
        key_pem: issued.map(|(_, i)| i.key_pem),
    })
    .into_response())
}

/// 429 for a source address that used up its failed joins.
fn too_many_joins(wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let body = serde_json::json!({"error": {
        "code": "rate_limited",
        "message": format!("too many refused joins from this address; retry in {seconds}s"),
        "details": {"retry_after_seconds": seconds},
    }});
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(axum::http::header::RETRY_AFTER, seconds.to_string())],
        Json(body),
    )
        .into_response()
}

/// Re-sends a REST call to the leader's REST API (for membership calls only the leader does).
async fn forward_to_leader_rest(
    app: &App,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<Response, ApiError> {
    // Right after a hand-over or a failover the leader may not be known yet: wait a little.
    let (_, leader) = app
        .wait_for_leader(std::time::Instant::now() + crate::app::LEADER_WAIT)
        .await
        .ok_or_else(|| ApiError::no_leader("no Raft leader elected"))?;
    let mut req = app
        .http
        .request(method, format!("{}{}", leader.api_url, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::no_leader(format!("leader unreachable: {e}")))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ApiError::no_leader(format!("leader answer lost: {e}")))?;
    Ok((status, [("content-type", "application/json")], bytes).into_response())
}
