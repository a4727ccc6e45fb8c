//! `GET /v1/vms/{id}/console`: the VM's serial console as a WebSocket, relayed to the node the
//! VM runs on.
//!
//! Path: browser/CLI ⇄ WebSocket ⇄ this member ⇄ gRPC `NodeAgent.Console` (bidirectional stream,
//! `authorization: Bearer <console secret>`) on the node agent's `console_endpoint` ⇄ the vmm's
//! console on that host. The node agent announces endpoint and secret in `Register`; the secret
//! is replicated with the node but never shown. Binary (or text) WebSocket messages are console
//! input; console output arrives as binary messages, starting with the vmm's scrollback.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio_stream::wrappers::ReceiverStream;

use super::resources::{query, resolve, ProjectQuery};
use crate::app::App;
use crate::model::Kind;
use crate::proto::ConsoleFrame;
use crate::state::{ApiError, ErrorCode};
use crate::tls::AgentClient;

/// Where a VM's console is: (vm id, endpoint, secret).
fn target(
    app: &App,
    id: &str,
    project: Option<&str>,
) -> Result<(String, String, String), ApiError> {
    let state = app.shared.read();
    let vm_id = resolve(&state, Kind::Vm, id, project)?;
    let vm = state
        .vms
        .get(&vm_id)
        .ok_or_else(|| ApiError::not_found(Kind::Vm, &vm_id))?;
    let node_id = vm
        .node_id
        .clone()
        .ok_or_else(|| ApiError::conflict(format!("VM {vm_id} is not placed on a node yet")))?;
    let node = state
        .nodes
        .get(&node_id)
        .ok_or_else(|| ApiError::not_found(Kind::Node, &node_id))?;
    if node.status.console_endpoint.is_empty() {
        return Err(ApiError::conflict(format!(
            "node {node_id} offers no console relay"
        )));
    }
    Ok((
        vm_id,
        node.status.console_endpoint.clone(),
        node.console_secret.clone(),
    ))
}

#[utoipa::path(get, path = "/v1/vms/{id}/console", tag = "vms", params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses((status = 101, description = "WebSocket: binary frames in both directions"), (status = 409, body = super::ErrorEnvelope)))]
pub async fn vm_console(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (vm_id, endpoint, secret) = target(&app, &id, q.project.as_deref())?;
    let ws = ws.map_err(|e| ApiError::invalid(format!("a WebSocket upgrade is required: {e}")))?;
    // Connect before upgrading so a dead relay is an HTTP error, not a closed socket.
    let client = app.node_agent(&endpoint).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("console relay unreachable: {}", e.message),
        )
    })?;
    app.audit
        .info(format!("console of VM {vm_id} opened"), &[&vm_id]);
    // The relay runs on a task of its own after the upgrade: it keeps the request's trace id,
    // which its call to the agent carries.
    let trace = mvirt_common::trace::current();
    Ok(ws.on_upgrade(move |socket| {
        mvirt_common::trace::scope(trace, relay(socket, client, vm_id, secret))
    }))
}

async fn relay(socket: WebSocket, mut client: AgentClient, vm_id: String, secret: String) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<ConsoleFrame>(64);
    if in_tx
        .send(ConsoleFrame {
            vm_id: vm_id.clone(),
            data: Vec::new(),
        })
        .await
        .is_err()
    {
        return;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(in_rx));
    match format!("Bearer {secret}").parse() {
        Ok(v) => {
            request.metadata_mut().insert("authorization", v);
        }
        Err(_) => return,
    }
    let mut output = match client.console(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let _ = ws_tx
                .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: 1011,
                    reason: format!("console relay refused: {}", status.message())
                        .chars()
                        .take(100)
                        .collect::<String>()
                        .into(),
                })))
                .await;
            return;
        }
    };
    let input = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if in_tx
                .send(ConsoleFrame {
                    vm_id: String::new(),
                    data,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let out = async {
        while let Ok(Some(frame)) = output.message().await {
            if ws_tx
                .send(Message::Binary(frame.data.into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        _ = input => {},
        _ = out => {},
    }
    tracing::debug!(%vm_id, "console closed");
}
