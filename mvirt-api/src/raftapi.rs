//! The member-to-member HTTP API on the Raft listener (`:6001`). Every call carries the cluster
//! secret as a Bearer token. Besides openraft's three RPCs it serves what followers forward to
//! the leader: writes, read-index requests and node heartbeats.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{CheckIsLeaderError, InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::app::{App, HeartbeatForward};
use crate::proposer::WriteFailure;
use crate::raft::{MemberId, TypeConfig};
use crate::state::{ApiError, ErrorCode, Proposal};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/write", post(write))
        .route("/raft/read-index", post(read_index))
        .route("/raft/heartbeat", post(heartbeat))
        .route("/raft/stream", get(stream))
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(app)
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
/// absent on RPCs from older builds, which are taken).
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
    headers: HeaderMap,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if !authorized(&app, &headers) {
        return denied();
    }
    if let Some(refused) = misdirected(&app, &headers) {
        return refused;
    }
    Json(app.raft.append_entries(req).await).into_response()
}

/// `GET /raft/stream` with `Upgrade: mvirt-raft-append`: the leader's replication task to this
/// member sends its AppendEntries as frames on one upgraded connection (see
/// [`crate::raft::write_frame`]) instead of one HTTP request each.
async fn stream(State(app): State<Arc<App>>, headers: HeaderMap, mut req: Request) -> Response {
    if !authorized(&app, &headers) {
        return denied();
    }
    if let Some(refused) = misdirected(&app, &headers) {
        return refused;
    }
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
        let body = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
        crate::raft::write_frame(&mut io, &body).await?;
    }
    Ok(())
}

async fn vote(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest<MemberId>>,
) -> Response {
    if !authorized(&app, &headers) {
        return denied();
    }
    if let Some(refused) = misdirected(&app, &headers) {
        return refused;
    }
    Json(app.raft.vote(req).await).into_response()
}

async fn snapshot(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if !authorized(&app, &headers) {
        return denied();
    }
    if let Some(refused) = misdirected(&app, &headers) {
        return refused;
    }
    let result: Result<_, RaftError<MemberId, InstallSnapshotError>> =
        app.raft.install_snapshot(req).await;
    Json(result).into_response()
}

async fn write(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(proposal): Json<Proposal>,
) -> Response {
    if !authorized(&app, &headers) {
        return denied();
    }
    // Only the leader appends; a follower that got this (leadership moved) says so.
    let result = match app.write_local(proposal).await {
        Ok(outcome) => Ok(outcome),
        Err(WriteFailure::NotLeader) => Err(ApiError::no_leader("not the leader; not written")),
        Err(WriteFailure::Unknown(e)) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("outcome unknown: {e}"),
        )),
    };
    Json(result).into_response()
}

async fn read_index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorized(&app, &headers) {
        return denied();
    }
    let result: Result<u64, ApiError> = match app.raft.ensure_linearizable().await {
        Ok(id) => Ok(id.map(|l| l.index).unwrap_or(0)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            Err(ApiError::no_leader("not the leader"))
        }
        Err(e) => Err(ApiError::no_leader(e.to_string())),
    };
    Json(result).into_response()
}

async fn heartbeat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(hb): Json<HeartbeatForward>,
) -> Response {
    if !authorized(&app, &headers) {
        return denied();
    }
    let result = if app.is_leader() {
        app.heartbeat(hb).await
    } else {
        Err(ApiError::no_leader("not the leader"))
    };
    Json(result).into_response()
}
