//! `GET /v1/events`: every event as Server-Sent Events, resumable.
//!
//! The `id:` of each SSE event is its revision (several events can share one revision: a VM
//! create also creates its volume and NIC). A client that reconnects with `Last-Event-ID: <r>`
//! (or `?from_revision=r`) gets every event with revision > r, then the live feed, with no gap
//! and no duplicate: the live subscription is opened *before* the backlog is read from SQLite,
//! and live events at or below the last revision sent are skipped. Without either, the stream
//! starts with the live feed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::resources::query;
use super::Caller;
use crate::app::App;
use crate::model::{Event, Role};
use crate::state::ApiError;
use crate::store;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this project.
    pub project: Option<String>,
    /// Only events of this type (`vm.created`) or kind prefix (`vm`).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Resume after this revision (like `Last-Event-ID`).
    pub from_revision: Option<u64>,
}

const PAGE: usize = 1000;

/// Whether `e` passes the query's filters and the caller may see it: events about tokens, join
/// tokens and idempotency records only for admins; a project-scoped token only its projects'
/// events (and nodes' and control-plane members', which belong to no project).
fn matches(q: &EventsQuery, caller: &Caller, e: &Event) -> bool {
    let bookkeeping = matches!(e.kind.as_str(), "token" | "join_token" | "idempotency");
    if bookkeeping && caller.role != Role::Admin {
        return false;
    }
    let projectless = matches!(e.kind.as_str(), "node" | "member");
    if caller.is_scoped() && !projectless && !caller.sees(&e.project) {
        return false;
    }
    if let Some(p) = &q.project {
        if &e.project != p {
            return false;
        }
    }
    if let Some(t) = &q.event_type {
        if &e.event_type != t && e.kind != *t {
            return false;
        }
    }
    true
}

fn to_sse(e: &Event) -> SseEvent {
    SseEvent::default()
        .id(e.revision.to_string())
        .event(e.event_type.clone())
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// Reads the backlog after `after`, in pages that never split a revision.
fn backlog(db: &rusqlite::Connection, after: u64) -> Result<Vec<Event>, ApiError> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let mut page =
            store::events_after(db, cursor, PAGE).map_err(|e| ApiError::internal(e.to_string()))?;
        if page.is_empty() {
            return Ok(out);
        }
        let full = page.len() == PAGE;
        if full {
            let last = page.last().map(|e| e.revision).unwrap_or(cursor);
            let kept: Vec<Event> = page.iter().filter(|e| e.revision < last).cloned().collect();
            if kept.is_empty() {
                // One revision with more than a page of events: take it whole.
                page = store::events_after(db, cursor, usize::MAX >> 1)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                page.retain(|e| e.revision <= last);
            } else {
                page = kept;
            }
        }
        cursor = page.last().map(|e| e.revision).unwrap_or(cursor);
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "resume after this revision")),
    description = "Server-Sent Events: `id:` the revision, `event:` the type, `data:` an Event. Types are `<kind>.<verb>`. Resources (`project`, `node`, `network`, `nic`, `security_group`, `template`, `volume`, `vm`, `pod`): `created`, `updated`, `deleted` and the kind's own verbs (`status`, actions); the object is the resource as `GET` shows it, `null` when deleted. API tokens (`token.created`, `token.updated` when a node token binds to its node, `token.deleted` on revocation) and join tokens (`join_token.created`, `join_token.updated` once used, `join_token.deleted` when pruned), for admins only: the object is the token without its secret or its hash (`{id,name,role,projects,node_id,created_at,revision}`; a join token `{id,expires_at_ms,used}`). Control-plane members (`member.joined` as a learner, `member.updated` when its role changes between learner and voter, `member.removed` with a `null` object), for every role: the object is `{id,api_url,raft_addr,role}`; who leads is not an event (read `/v1/controlplane`).",
    responses((status = 200, description = "text/event-stream of Event objects: those the token may see (a project-scoped token: its projects', nodes' and members'; tokens' and join tokens' only for admins)", body = Event)))]
pub async fn events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let last_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID must be a revision number"))?,
        ),
        None => q.from_revision,
    };
    let mut live = app.shared.events.subscribe();
    let db_path = app.shared.db_path.clone();
    let start = match last_id {
        Some(r) => r,
        None => app.shared.applied_revision(),
    };
    let stream = async_stream::stream! {
        let db = match store::open(&db_path) {
            Ok(db) => db,
            Err(e) => {
                tracing::error!(error = %e, "events: cannot open the database");
                return;
            }
        };
        // `floor`: everything at or below it was delivered from the database. `complete`: the
        // last revision known to be delivered whole (a live revision is whole once a later one
        // arrives).
        let mut floor = start;
        let mut complete = start;
        let mut current = start;
        let mut replay_from = Some(start);
        loop {
            if let Some(from) = replay_from.take() {
                match backlog(&db, from) {
                    Ok(events) => {
                        for e in events {
                            floor = floor.max(e.revision);
                            if matches(&q, &caller, &e) {
                                yield Ok::<_, Infallible>(to_sse(&e));
                            }
                        }
                        complete = floor;
                        current = floor;
                    }
                    Err(e) => {
                        tracing::error!(error = %e.message, "events: backlog read failed");
                        return;
                    }
                }
            }
            match live.recv().await {
                Ok(e) => {
                    if e.revision <= floor {
                        continue;
                    }
                    if e.revision > current {
                        complete = current;
                        current = e.revision;
                    }
                    if matches(&q, &caller, &e) {
                        yield Ok(to_sse(&e));
                    }
                }
                // Too slow for the live feed: catch up from the database (events of a revision
                // that was being delivered when the feed lagged may be sent twice, never lost).
                Err(RecvError::Lagged(_)) => replay_from = Some(complete),
                Err(RecvError::Closed) => return,
            }
        }
    };
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
