//! `/v1/pods`: CRUD of pods (with their owned NICs), their actions, and the relays of a pod's
//! container logs (`GET /v1/pods/{id}/logs`, NDJSON) and exec (`GET /v1/pods/{id}/exec`,
//! WebSocket) to the node the pod runs on.
//!
//! Relay path (like the VM console, `console.rs`): client ⇄ this member ⇄ gRPC `NodeAgent`
//! (`PodLogs` server stream, `PodExec` bidirectional stream; `authorization: Bearer <console
//! secret>`) on the node agent's `console_endpoint` ⇄ mvirt-vmm's PodService ⇄ mvirt-one.
//!
//! Exec frames (Kubernetes `v4.channel.k8s.io` style): every WebSocket message is binary, its
//! first byte the channel: 0 stdin (client → server; an empty `[0]` closes stdin), 1 stdout,
//! 2 stderr, 3 status (JSON `{"exit_code": n}` or `{"error": "..."}`, then close), 4 resize
//! (client → server, JSON `{"cols": n, "rows": n}`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

use super::object_response;
use super::resources::{crud, query, resolve};
use crate::app::{new_id, now, App};
use crate::model::*;
use crate::proto;
use crate::state::{ApiError, Command, ErrorCode};
use crate::tls::AgentClient;
use crate::validate;

crud!(
    Kind::Pod,
    "pods",
    "/v1/pods",
    "/v1/pods/{id}",
    Pod,
    PodSpec,
    validate::pod,
    build_pod
);

/// A name for an owned NIC: `<pod>-<suffix>`, cut to a DNS label.
fn owned_name(pod: &str, suffix: &str) -> String {
    let keep = 63usize.saturating_sub(suffix.len() + 1);
    let base: String = pod.chars().take(keep).collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

fn build_pod(meta: Meta, mut spec: PodSpec) -> Result<Command, ApiError> {
    let mut owned_nics = Vec::new();
    let mut owned_ids = Vec::new();
    for (i, req) in spec.network_interfaces.iter().enumerate() {
        let mut nmeta = meta.clone();
        nmeta.id = new_id();
        nmeta.name = owned_name(&meta.name, &format!("nic{i}"));
        nmeta.labels = BTreeMap::new();
        owned_ids.push(nmeta.id.clone());
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
            vm_id: None,
            owner_vm_id: None,
            pod_id: Some(meta.id.clone()),
            owner_pod_id: Some(meta.id.clone()),
        });
    }
    // Owned NICs first (the pod's first interface is its own), then the attached ones.
    owned_ids.append(&mut spec.nic_ids);
    spec.nic_ids = owned_ids;
    Ok(Command::CreatePod {
        pod: Pod::new(meta, spec),
        owned_nics,
    })
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PodActionQuery {
    /// Project (name) for resolving a name in the path (default `default`).
    pub project: Option<String>,
    /// `stop` only: kill the pod's microVM instead of stopping its containers gracefully.
    #[serde(default)]
    pub force: bool,
}

#[utoipa::path(post, path = "/v1/pods/{id}/{action}", tag = "pods",
    params(("id" = String, Path, description = "id or name"), ("action" = String, Path, description = "start, stop or restart"), PodActionQuery),
    responses((status = 200, body = Pod), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn pod_action(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(String, String)>,
    q: Result<Query<PodActionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Ok(action) = action.parse::<PodAction>() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("unknown pod action {action:?}: start, stop or restart"),
        ));
    };
    let q = query(q)?;
    if q.force && action != PodAction::Stop {
        return Err(ApiError::invalid("force applies to stop only"));
    }
    let id = resolve(&app.shared.read(), Kind::Pod, &id, q.project.as_deref())?;
    let (_, value) = app
        .submit(
            Command::PodAction {
                id,
                action,
                force: q.force,
                now: now(),
            },
            None,
        )
        .await?;
    Ok(object_response(StatusCode::OK, value))
}

// ------------------------------------------------------------------------- relays to the node

/// Where a pod's relays go: the pod id, the container, the node agent's endpoint and secret.
struct Target {
    pod_id: String,
    container: String,
    endpoint: String,
    secret: String,
}

/// Resolves the pod and its container (required when the pod has more than one) and the node
/// agent that runs it.
fn target(
    app: &App,
    id: &str,
    project: Option<&str>,
    container: Option<&str>,
) -> Result<Target, ApiError> {
    let state = app.shared.read();
    let pod_id = resolve(&state, Kind::Pod, id, project)?;
    let pod = state
        .pods
        .get(&pod_id)
        .ok_or_else(|| ApiError::not_found(Kind::Pod, &pod_id))?;
    let names: Vec<&str> = pod
        .spec
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let container = match container {
        Some(c) if names.contains(&c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "pod {} has no container {c:?}; its containers: {}",
                    pod.meta.name,
                    names.join(", ")
                ),
            )
            .with_details(serde_json::json!({"containers": names})))
        }
        None if names.len() == 1 => names[0].to_string(),
        None => {
            return Err(ApiError::invalid(format!(
                "pod {} has {} containers: name one with ?container= ({})",
                pod.meta.name,
                names.len(),
                names.join(", ")
            ))
            .with_details(serde_json::json!({"containers": names})))
        }
    };
    let node_id = pod
        .node_id
        .clone()
        .ok_or_else(|| ApiError::conflict(format!("pod {pod_id} is not placed on a node yet")))?;
    let node = state
        .nodes
        .get(&node_id)
        .ok_or_else(|| ApiError::not_found(Kind::Node, &node_id))?;
    if node.status.console_endpoint.is_empty() {
        return Err(ApiError::conflict(format!(
            "node {node_id} offers no relay (its agent announced no console endpoint)"
        )));
    }
    Ok(Target {
        pod_id,
        container,
        endpoint: node.status.console_endpoint.clone(),
        secret: node.console_secret.clone(),
    })
}

async fn dial(app: &App, endpoint: &str) -> Result<AgentClient, ApiError> {
    app.node_agent(endpoint).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("node agent unreachable: {}", e.message),
        )
    })
}

fn authorized<T>(message: T, secret: &str) -> Result<tonic::Request<T>, ApiError> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {secret}")
        .parse()
        .map_err(|_| ApiError::internal("the node's relay secret is not a header value"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// The node's refusal as an API error with the node's message.
fn node_error(status: tonic::Status) -> ApiError {
    let code = match status.code() {
        tonic::Code::NotFound => ErrorCode::NotFound,
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => {
            ErrorCode::Conflict
        }
        tonic::Code::Unimplemented => ErrorCode::NotImplemented,
        _ => ErrorCode::Unavailable,
    };
    ApiError::new(code, format!("the pod's node: {}", status.message()))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PodLogsQuery {
    /// Project (name) for resolving a name in the path (default `default`).
    pub project: Option<String>,
    /// The container; required when the pod has more than one.
    pub container: Option<String>,
    /// Keep the response open and stream new lines.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines (default: all).
    pub tail: Option<u32>,
}

/// One line of `GET /v1/pods/{id}/logs` (NDJSON: one such object per line).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PodLogLine {
    pub container: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339.
    pub time: String,
    pub line: String,
}

#[utoipa::path(get, path = "/v1/pods/{id}/logs", tag = "pods",
    params(("id" = String, Path, description = "id or name"), PodLogsQuery),
    responses((status = 200, description = "application/x-ndjson: one PodLogLine per line; with follow the response stays open", content_type = "application/x-ndjson", body = PodLogLine),
        (status = 400, description = "no container named and the pod has several (the message lists them)", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, description = "the pod is not placed yet or its node offers no relay", body = ErrorEnvelope),
        (status = 503, description = "the node agent is unreachable", body = ErrorEnvelope)))]
pub async fn pod_logs(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<PodLogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    app.read_barrier().await?;
    let t = target(&app, &id, q.project.as_deref(), q.container.as_deref())?;
    let mut client = dial(&app, &t.endpoint).await?;
    let request = authorized(
        proto::PodLogsRequest {
            pod_id: t.pod_id.clone(),
            container: t.container.clone(),
            tail: q.tail.unwrap_or(0),
            follow: q.follow,
        },
        &t.secret,
    )?;
    let mut stream = client
        .pod_logs(request)
        .await
        .map_err(node_error)?
        .into_inner();
    let container = t.container;
    let pod_id = t.pod_id;
    let body = async_stream::stream! {
        loop {
            match stream.message().await {
                Ok(Some(entry)) => {
                    let line = PodLogLine {
                        container: container.clone(),
                        stream: entry.stream,
                        time: log_time(entry.timestamp_ns),
                        line: String::from_utf8_lossy(&entry.line).into_owned(),
                    };
                    let mut text = serde_json::to_string(&line).unwrap_or_default();
                    text.push('\n');
                    yield Ok::<_, std::io::Error>(axum::body::Bytes::from(text));
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%pod_id, error = %status, "pod log stream ended with an error");
                    break;
                }
            }
        }
    };
    let mut resp = Body::from_stream(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

fn log_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
    .unwrap_or_default()
    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The query of `GET /v1/pods/{id}/exec` (`command` repeats: one per argument).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PodExecQuery {
    /// Project (name) for resolving a name in the path (default `default`).
    pub project: Option<String>,
    /// The container; required when the pod has more than one.
    pub container: Option<String>,
    /// Allocate a terminal (stdout and stderr then arrive together on channel 1).
    #[serde(default)]
    pub tty: bool,
    /// The command and its arguments, one `command=` per argument (default: `/bin/sh`).
    #[serde(default)]
    pub command: Vec<String>,
    /// Initial terminal rows (with tty).
    pub rows: Option<u32>,
    /// Initial terminal columns (with tty).
    pub cols: Option<u32>,
}

/// Parses the exec query by hand: `command` repeats, which `Query` cannot express.
fn exec_query(raw: Option<&str>) -> Result<PodExecQuery, ApiError> {
    let mut q = PodExecQuery::default();
    for (k, v) in form_urlencoded(raw.unwrap_or("")) {
        let flag = |v: &str| match v {
            "" | "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(ApiError::invalid(format!(
                "invalid query: {k}={v:?} is no boolean"
            ))),
        };
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| ApiError::invalid(format!("invalid query: {k}={v:?} is no number")))
        };
        match k.as_str() {
            "project" => q.project = Some(v),
            "container" => q.container = Some(v),
            "tty" => q.tty = flag(&v)?,
            "command" => q.command.push(v),
            "rows" => q.rows = Some(number(&v)?),
            "cols" => q.cols = Some(number(&v)?),
            other => {
                return Err(ApiError::invalid(format!(
                    "invalid query: unknown parameter {other:?} (project, container, tty, command, rows, cols)"
                )))
            }
        }
    }
    if q.command.len() > 256
        || q.command
            .iter()
            .any(|a| a.contains('\0') || a.len() > 64 * 1024)
    {
        return Err(ApiError::invalid(
            "command: at most 256 arguments of at most 64 KiB, no NUL",
        ));
    }
    Ok(q)
}

/// `application/x-www-form-urlencoded` pairs, percent-decoded (`+` is a space).
fn form_urlencoded(raw: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |b: u8| (b as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    raw.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

/// Exec channels.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

#[derive(Deserialize)]
struct Resize {
    cols: u32,
    rows: u32,
}

#[utoipa::path(get, path = "/v1/pods/{id}/exec", tag = "pods",
    params(("id" = String, Path, description = "id or name"), PodExecQuery),
    responses((status = 101, description = "WebSocket (subprotocol v4.channel.k8s.io offered): binary frames whose first byte is the channel: 0 stdin (client→server; an empty [0] closes stdin), 1 stdout, 2 stderr, 3 status (JSON {\"exit_code\": n} or {\"error\": \"...\"}, then close), 4 resize (client→server, JSON {\"cols\": n, \"rows\": n})"),
        (status = 400, description = "no container named and the pod has several, or a bad query", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub async fn pod_exec(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut q = exec_query(raw.as_deref())?;
    let command = std::mem::take(&mut q.command);
    app.read_barrier().await?;
    let t = target(&app, &id, q.project.as_deref(), q.container.as_deref())?;
    let ws = ws.map_err(|e| ApiError::invalid(format!("a WebSocket upgrade is required: {e}")))?;
    // Connect before upgrading so a dead relay is an HTTP error, not a closed socket.
    let client = dial(&app, &t.endpoint).await?;
    let program = command.first().cloned().unwrap_or_else(|| "/bin/sh".into());
    app.audit.audit(
        format!(
            "exec in pod {} container {} ({program}, {} argument(s), tty {})",
            t.pod_id,
            t.container,
            command.len().saturating_sub(1),
            q.tty
        ),
        &[&t.pod_id],
    );
    let start = proto::PodExecStart {
        pod_id: t.pod_id.clone(),
        container: t.container.clone(),
        command,
        tty: q.tty,
        env: Default::default(),
        working_dir: String::new(),
        rows: q.rows.unwrap_or(0),
        cols: q.cols.unwrap_or(0),
    };
    let secret = t.secret;
    // The relay runs on a task of its own after the upgrade: it keeps the request's trace id.
    let trace = mvirt_common::trace::current();
    Ok(ws
        .protocols(["v4.channel.k8s.io"])
        .on_upgrade(move |socket| {
            mvirt_common::trace::scope(trace, exec_relay(socket, client, start, secret))
        }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

fn status_frame(value: serde_json::Value) -> Message {
    frame(STATUS, value.to_string().as_bytes())
}

async fn exec_relay(
    socket: WebSocket,
    mut client: AgentClient,
    start: proto::PodExecStart,
    secret: String,
) {
    use proto::pod_exec_input::Input;
    use proto::pod_exec_output::Output;
    let pod_id = start.pod_id.clone();
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<proto::PodExecInput>(64);
    let first = proto::PodExecInput {
        input: Some(Input::Start(start)),
    };
    if in_tx.send(first).await.is_err() {
        return;
    }
    let request = match authorized(ReceiverStream::new(in_rx), &secret) {
        Ok(r) => r,
        Err(e) => {
            let _ = ws_tx
                .send(status_frame(serde_json::json!({"error": e.message})))
                .await;
            let _ = ws_tx.send(Message::Close(None)).await;
            return;
        }
    };
    let mut output = match client.pod_exec(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let _ = ws_tx
                .send(status_frame(
                    serde_json::json!({"error": node_error(status).message}),
                ))
                .await;
            let _ = ws_tx.send(Message::Close(None)).await;
            return;
        }
    };
    // Client → node: stdin, resize, close of stdin. Ends when the client goes away; the
    // process's stdin is closed then (the output keeps flowing until the exit code).
    let input = async move {
        let mut stdin_open = true;
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let input = match channel {
                STDIN if payload.is_empty() => {
                    stdin_open = false;
                    Input::CloseStdin(true)
                }
                STDIN => Input::Stdin(payload.to_vec()),
                RESIZE => match serde_json::from_slice::<Resize>(payload) {
                    Ok(r) => Input::Resize(proto::TerminalSize {
                        rows: r.rows,
                        cols: r.cols,
                    }),
                    Err(_) => continue,
                },
                _ => continue,
            };
            if in_tx
                .send(proto::PodExecInput { input: Some(input) })
                .await
                .is_err()
            {
                return;
            }
        }
        if stdin_open {
            let _ = in_tx
                .send(proto::PodExecInput {
                    input: Some(Input::CloseStdin(true)),
                })
                .await;
        }
        // Keep the request stream open until the node ends the call.
        in_tx.closed().await;
    };
    let out = async move {
        let status = loop {
            match output.message().await {
                Ok(Some(proto::PodExecOutput { output: Some(o) })) => {
                    let msg = match o {
                        Output::Stdout(b) => frame(STDOUT, &b),
                        Output::Stderr(b) => frame(STDERR, &b),
                        Output::ExitCode(code) => {
                            break serde_json::json!({"exit_code": code});
                        }
                    };
                    if ws_tx.send(msg).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    break serde_json::json!({"error": "the node ended the exec without an exit code"})
                }
                Err(status) => break serde_json::json!({"error": node_error(status).message}),
            }
        };
        let _ = ws_tx.send(status_frame(status)).await;
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    let input = tokio::spawn(input);
    out.await;
    input.abort();
    tracing::debug!(%pod_id, "exec closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_query_keeps_every_command_argument_in_order() {
        let q = exec_query(Some(
            "container=web&command=sh&command=-c&command=echo+a%20b%3Dc&tty=true",
        ))
        .unwrap();
        assert_eq!(q.command, ["sh", "-c", "echo a b=c"]);
        assert_eq!(q.container.as_deref(), Some("web"));
        assert!(q.tty);
        assert!(exec_query(Some("bogus=1")).is_err());
        assert!(exec_query(Some("tty=maybe")).is_err());
    }
}
