//! `GET /v1/logs`: the audit log, queried through mvirt-log's `Query` (`follow=true` streams
//! new entries as Server-Sent Events; otherwise one JSON page).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mvirt_log::proto::log_service_client::LogServiceClient;
use mvirt_log::proto::{query_response, LogEntry, LogLevel, Order, QueryRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::resources::query;
use super::Caller;
use crate::app::App;
use crate::state::{ApiError, ErrorCode};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    pub object_id: Option<String>,
    pub component: Option<String>,
    /// Comma-separated levels: audit, info, warn, error, debug.
    pub level: Option<String>,
    /// Inclusive lower bound, nanoseconds since the epoch.
    pub since_ns: Option<i64>,
    /// Exclusive upper bound, nanoseconds since the epoch.
    pub until_ns: Option<i64>,
    /// Substring of the message.
    pub text: Option<String>,
    /// Only entries written for this request id (`X-Request-Id`, an object's `meta.trace_id`).
    pub trace_id: Option<String>,
    /// `newest` (default) or `oldest`.
    pub order: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    #[serde(default)]
    pub follow: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogEntryView {
    pub id: String,
    pub timestamp_ns: i64,
    pub message: String,
    pub level: String,
    pub component: String,
    pub object_ids: Vec<String>,
    /// The request whose work wrote the entry; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub entries: Vec<LogEntryView>,
    pub next_cursor: Option<String>,
}

fn view(e: LogEntry) -> LogEntryView {
    let level = match LogLevel::try_from(e.level).unwrap_or(LogLevel::Unspecified) {
        LogLevel::Audit => "audit",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Debug => "debug",
        LogLevel::Unspecified => "",
    };
    LogEntryView {
        id: e.id,
        timestamp_ns: e.timestamp_ns,
        message: e.message,
        level: level.into(),
        component: e.component,
        object_ids: e.object_ids,
        trace_id: Some(e.trace_id).filter(|t| !t.is_empty()),
    }
}

/// Whether a project-scoped caller sees an entry: only when it names objects and every one is
/// visible to it now (entries about deleted objects, tokens or nothing in particular are not).
fn visible(app: &App, caller: &Caller, e: &LogEntryView) -> bool {
    if !caller.is_scoped() {
        return true;
    }
    let state = app.shared.read();
    !e.object_ids.is_empty() && e.object_ids.iter().all(|id| caller.sees_id(&state, id))
}

/// mvirt-log refusing the query (a bad cursor, an empty time range) is the caller's error (400);
/// anything else means the log is not there (503).
fn query_failed(s: tonic::Status) -> ApiError {
    let code = match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
        _ => ErrorCode::Unavailable,
    };
    ApiError::new(code, format!("mvirt-log query failed: {}", s.message()))
}

fn request(q: &LogsQuery) -> Result<QueryRequest, ApiError> {
    let mut levels = Vec::new();
    for l in q
        .level
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        levels.push(match l {
            "audit" => LogLevel::Audit,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "debug" => LogLevel::Debug,
            other => return Err(ApiError::invalid(format!("unknown level {other:?}"))),
        } as i32);
    }
    if let Some(t) = q
        .trace_id
        .as_deref()
        .filter(|t| !t.is_empty() && !mvirt_common::trace::is_valid(t))
    {
        return Err(ApiError::invalid(format!(
            "trace_id {t:?} must be 1 to {} characters of A-Z a-z 0-9 . _ : -",
            mvirt_common::trace::MAX_LEN
        )));
    }
    if q.limit.is_some_and(|l| l == 0 || l > 10_000) {
        return Err(ApiError::invalid("limit must be between 1 and 10000"));
    }
    let order = match q.order.as_deref() {
        None | Some("newest") => Order::NewestFirst,
        Some("oldest") => Order::OldestFirst,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "order must be newest or oldest, not {other:?}"
            )))
        }
    };
    Ok(QueryRequest {
        object_id: q.object_id.clone().unwrap_or_default(),
        component: q.component.clone().unwrap_or_default(),
        levels,
        since_ns: q.since_ns.unwrap_or(0),
        until_ns: q.until_ns.unwrap_or(0),
        contains: q.text.clone().unwrap_or_default(),
        order: order as i32,
        limit: q.limit.unwrap_or(100).min(10_000),
        cursor: q.cursor.clone().unwrap_or_default(),
        follow: q.follow,
        // Empty = no filter, like the other filters.
        trace_id: q.trace_id.clone().unwrap_or_default(),
    })
}

#[utoipa::path(get, path = "/v1/logs", tag = "logs", params(LogsQuery),
    description = "A project-scoped token gets only entries whose objects are all visible to it now \
        (a page may then hold fewer than `limit` entries; follow `next_cursor`).",
    responses((status = 200, body = LogPage), (status = 503, body = super::ErrorEnvelope)))]
pub async fn logs(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let req = request(&q)?;
    if app.log_endpoint.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "no mvirt-log endpoint configured (--log-endpoint)",
        ));
    }
    let mut client = LogServiceClient::connect(app.log_endpoint.clone())
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!("mvirt-log unreachable: {e}"),
            )
        })?;
    let mut stream = client.query(req).await.map_err(query_failed)?.into_inner();
    if !q.follow {
        let mut page = LogPage {
            entries: Vec::new(),
            next_cursor: None,
        };
        while let Some(item) = stream.message().await.map_err(query_failed)? {
            match item.item {
                Some(query_response::Item::Entry(e)) => {
                    let v = view(e);
                    if visible(&app, &caller, &v) {
                        page.entries.push(v);
                    }
                }
                Some(query_response::Item::PageEnd(end)) => {
                    page.next_cursor = Some(end.next_cursor).filter(|c| !c.is_empty());
                    break;
                }
                None => {}
            }
        }
        return Ok(Json(page).into_response());
    }
    let sse = async_stream::stream! {
        loop {
            match stream.message().await {
                Ok(Some(item)) => {
                    if let Some(query_response::Item::Entry(e)) = item.item {
                        let v = view(e);
                        if !visible(&app, &caller, &v) {
                            continue;
                        }
                        yield Ok::<_, Infallible>(SseEvent::default().id(v.id.clone()).event("log").data(serde_json::to_string(&v).unwrap_or_default()));
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    };
    Ok(Sse::new(sse)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
