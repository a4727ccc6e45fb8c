//! The member-to-member HTTP API on the Raft listener (`:6001`). Every call carries the cluster
//! secret as a Bearer token. Besides openraft's three RPCs it serves what followers forward to
//! the leader (writes, read-index requests and node heartbeats) and the leader's request to a
//! follower to campaign when the leader hands over before its own removal (`/raft/elect`).
//!
//! With TLS (the default) the listener requires a client certificate from the cluster CA at the
//! handshake, and the certificate's member identity must be in the membership (see
//! [`unknown_peer`]). A request is authenticated (and its `x-mvirt-raft-target` checked) on its
//! certificate and headers alone, in a layer in front of every route, so a stranger's body is
//! never read. Each route caps its body
//! (see the `*_BODY_LIMIT` constants); a `Content-Length` over the cap is answered 413 before
//! any of the body is read, a chunked body is cut off at the cap.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{CheckIsLeaderError, InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tower_http::limit::RequestBodyLimitLayer;

use crate::app::{App, HeartbeatForward};
use crate::proposer::WriteFailure;
use crate::raft::{MemberId, TypeConfig};
use crate::state::{ApiError, ErrorCode, Proposal};

/// Vote, read-index, heartbeat and elect bodies: a few hundred bytes.
pub const SMALL_BODY_LIMIT: usize = 64 * 1024;
/// A forwarded write: one proposal, whose REST body is at most `rest::BODY_LIMIT` (1 MiB) and
/// whose gRPC origin (a batch of status reports) at most tonic's 4 MiB, with room for JSON.
pub const WRITE_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// `POST /raft/append` (the fallback of the AppendEntries stream) and one stream frame: up to
/// `max_payload_entries` (64) entries, each a group-commit batch of proposals.
pub const APPEND_BODY_LIMIT: usize = crate::raft::MAX_FRAME;
/// One InstallSnapshot chunk: at most `snapshot_max_chunk_size` (pinned to 3 MiB in
/// [`crate::raft::config`]) of snapshot bytes, which JSON writes as an array of numbers (up to
/// 4 characters a byte), plus the snapshot's metadata (membership).
pub const SNAPSHOT_BODY_LIMIT: usize = 64 * 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    let limit = RequestBodyLimitLayer::new;
    Router::new()
        .route("/raft/append", post(append).layer(limit(APPEND_BODY_LIMIT)))
        .route("/raft/vote", post(vote).layer(limit(SMALL_BODY_LIMIT)))
        .route(
            "/raft/snapshot",
            post(snapshot).layer(limit(SNAPSHOT_BODY_LIMIT)),
        )
        .route("/raft/write", post(write).layer(limit(WRITE_BODY_LIMIT)))
        .route(
            "/raft/read-index",
            post(read_index).layer(limit(SMALL_BODY_LIMIT)),
        )
        .route(
            "/raft/heartbeat",
            post(heartbeat).layer(limit(SMALL_BODY_LIMIT)),
        )
        .route("/raft/elect", post(elect).layer(limit(SMALL_BODY_LIMIT)))
        .route("/raft/stream", get(stream))
        // Runs before the route (and so before any extractor reads the body).
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate))
        // The per-route limits above replace axum's default of 2 MB.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

/// The gate in front of every route: the cluster secret, then the target member, from the
/// headers only.
async fn authenticate(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(refused) = unknown_peer(&app, &req) {
        return refused;
    }
    if !authorized(&app, req.headers()) {
        return denied();
    }
    if let Some(refused) = misdirected(&app, req.headers()) {
        return refused;
    }
    next.run(req).await
}

/// With TLS the listener already required a certificate from the cluster CA at the handshake;
/// here its identity must be a member: one in the current membership (voters and learners,
/// which includes a joiner from the moment it is added), or any member while this member has
/// no membership yet (a joiner waiting for the leader's first message). A removed member's
/// certificate is still signed by the CA, but it is no longer let in. 403 otherwise.
fn unknown_peer(app: &App, req: &Request) -> Option<Response> {
    if !app.tls_on() {
        return None;
    }
    let peer = req.extensions().get::<mvirt_common::tls::PeerInfo>();
    let Some(id) = crate::tls::peer_member(peer) else {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "the Raft listener takes member certificates only",
            )
                .into_response(),
        );
    };
    let metrics = app.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let mut nodes = membership.nodes().peekable();
    let known = nodes.peek().is_none() || membership.get_node(&id).is_some();
    (!known).then(|| {
        (
            StatusCode::FORBIDDEN,
            format!("member {id} is not a member of this cluster"),
        )
            .into_response()
    })
}

fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", app.secret);
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Some(421)` when the RPC names another member as its target ([`crate::raft::TARGET_HEADER`];
/// absent on RPCs from older builds and on forwards, which are taken).
fn misdirected(app: &App, headers: &HeaderMap) -> Option<Response> {
    let target = headers.get(crate::raft::TARGET_HEADER)?;
    let target = target
        .to_str()
        .ok()
        .and_then(|t| t.parse::<MemberId>().ok());
    (target != Some(app.member_id)).then(|| {
        (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this is member {}, not {target:?}", app.member_id),
        )
            .into_response()
    })
}

fn denied() -> Response {
    (StatusCode::UNAUTHORIZED, "bad cluster secret").into_response()
}

async fn append(
    State(app): State<Arc<App>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    Json(app.raft.append_entries(req).await).into_response()
}

/// `GET /raft/stream` with `Upgrade: mvirt-raft-append`: the leader's replication task to this
/// member sends its AppendEntries as frames on one upgraded connection (see
/// [`crate::raft::write_frame`]) instead of one HTTP request each.
async fn stream(State(app): State<Arc<App>>, headers: HeaderMap, mut req: Request) -> Response {
    let wanted = headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if wanted != Some(crate::raft::STREAM_PROTOCOL) {
        return (
            StatusCode::BAD_REQUEST,
            format!("expected Upgrade: {}", crate::raft::STREAM_PROTOCOL),
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                if let Err(e) = serve_stream(&app, io).await {
                    tracing::debug!(error = %e, "raft stream closed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "raft stream upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, crate::raft::STREAM_PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn serve_stream<S>(app: &App, mut io: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(frame) = crate::raft::read_frame(&mut io).await? {
        let req: AppendEntriesRequest<TypeConfig> =
            serde_json::from_slice(&frame).map_err(std::io::Error::other)?;
        let resp = app.raft.append_entries(req).await;
        crate::raft::send_frame(&mut io, crate::raft::encode_frame(&resp, 256)?).await?;
    }
    Ok(())
}

async fn vote(State(app): State<Arc<App>>, Json(req): Json<VoteRequest<MemberId>>) -> Response {
    Json(app.raft.vote(req).await).into_response()
}

async fn snapshot(
    State(app): State<Arc<App>>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    let result: Result<_, RaftError<MemberId, InstallSnapshotError>> =
        app.raft.install_snapshot(req).await;
    Json(result).into_response()
}

async fn write(State(app): State<Arc<App>>, Json(proposal): Json<Proposal>) -> Response {
    // Only the leader appends; a follower that got this (leadership moved) says so.
    let result = match app.write_local(proposal).await {
        Ok(outcome) => Ok(outcome),
        Err(WriteFailure::NotLeader(_)) => Err(ApiError::no_leader("not the leader; not written")),
        Err(WriteFailure::Unknown(e)) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("outcome unknown: {e}"),
        )),
    };
    Json(result).into_response()
}

async fn read_index(State(app): State<Arc<App>>) -> Response {
    let result: Result<u64, ApiError> = match app.raft.ensure_linearizable().await {
        Ok(id) => Ok(id.map(|l| l.index).unwrap_or(0)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            Err(ApiError::no_leader("not the leader"))
        }
        Err(e) => Err(ApiError::no_leader(e.to_string())),
    };
    Json(result).into_response()
}

async fn heartbeat(State(app): State<Arc<App>>, Json(hb): Json<HeartbeatForward>) -> Response {
    let result = if app.is_leader() {
        app.heartbeat(hb).await
    } else {
        Err(ApiError::no_leader("not the leader"))
    };
    Json(result).into_response()
}

/// `POST /raft/elect`: the leader, about to remove itself, asks this member to campaign now
/// (see [`App::remove_member`](crate::app::App::remove_member)). Only a follower starts a
/// campaign: a candidate's own randomized timer already retries (restarting its campaign on
/// every request would keep splitting the vote with other candidates), and openraft ignores it
/// on a learner or a leader.
async fn elect(State(app): State<Arc<App>>) -> Response {
    let state = app.raft.metrics().borrow().state;
    let result: Result<(), ApiError> = if state == openraft::ServerState::Follower {
        app.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot campaign: {e}")))
    } else {
        Ok(())
    };
    Json(result).into_response()
}
