//! `GET /v1/vms/{id}/stats`, `GET /v1/pods/{id}/stats` and `GET /v1/nodes/{id}/stats`: usage
//! sampled live on the node
//! (the hypervisor process's CPU time, memory and I/O from `/proc`, NIC counters from the eBPF
//! datapath; the host's CPU, memory and load).
//!
//! Stats are not state: nothing here is a Raft write. This member relays to the node agent's
//! `NodeAgent.GetStats` on the endpoint the agent registered (the console relay's, with the
//! same secret), as `GET /v1/nodes/{id}/host` does.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::resources::ProjectQuery;
use super::ErrorEnvelope;
use crate::app::App;
use crate::model::{Kind, NodeState};
use crate::proto::GetStatsRequest;
use crate::state::{ApiError, ErrorCode};

/// One NIC's datapath counters (`rx` = from the guest, `tx` = to the guest).
#[derive(Debug, Serialize, ToSchema)]
pub struct NicStats {
    pub nic_id: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_drops: u64,
}

/// A VM's (or pod's) usage as its node reads it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuestStats {
    pub id: String,
    pub node_id: String,
    /// When the node read the numbers (Unix milliseconds).
    pub sampled_at_ms: i64,
    /// Whether its hypervisor process runs (otherwise only `nics` is filled).
    pub running: bool,
    pub pid: u32,
    /// User + system CPU time of the hypervisor process (counts since it started).
    pub cpu_seconds: f64,
    /// Resident memory of the hypervisor process.
    pub memory_rss_bytes: u64,
    pub threads: u32,
    /// Bytes the process made the block layer read / write (`/proc/<pid>/io` read_bytes,
    /// write_bytes).
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    /// Bytes through its read/write system calls (rchar, wchar: the page cache too).
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub nics: Vec<NicStats>,
}

/// The host's usage (counters since the host booted).
#[derive(Debug, Serialize, ToSchema)]
pub struct HostStats {
    pub cpus: u32,
    pub cpu_busy_seconds: f64,
    /// Idle and iowait.
    pub cpu_idle_seconds: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub load1: f64,
}

/// A node's usage and that of every VM and pod on it, as its agent reads them now.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStats {
    pub node_id: String,
    pub sampled_at_ms: i64,
    pub host: Option<HostStats>,
    pub vms: Vec<GuestStats>,
    pub pods: Vec<GuestStats>,
}

fn guest(node_id: &str, sampled_at_ms: i64, g: crate::proto::GuestUsage) -> GuestStats {
    GuestStats {
        id: g.id,
        node_id: node_id.to_string(),
        sampled_at_ms,
        running: g.running,
        pid: g.pid,
        cpu_seconds: g.cpu_seconds,
        memory_rss_bytes: g.memory_rss_bytes,
        threads: g.threads,
        disk_read_bytes: g.disk_read_bytes,
        disk_write_bytes: g.disk_write_bytes,
        io_read_bytes: g.io_read_bytes,
        io_write_bytes: g.io_write_bytes,
        nics: g
            .nics
            .into_iter()
            .map(|n| NicStats {
                nic_id: n.nic_id,
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                rx_drops: n.rx_drops,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                tx_drops: n.tx_drops,
            })
            .collect(),
    }
}

/// The agent endpoint and secret of an online node (409 otherwise).
fn agent_of(app: &App, node_id: &str) -> Result<(String, String), ApiError> {
    let state = app.shared.read();
    let node = state
        .nodes
        .get(node_id)
        .ok_or_else(|| ApiError::not_found(Kind::Node, node_id))?;
    if node.status.state != NodeState::Online {
        return Err(ApiError::conflict(format!(
            "node {} is {}",
            node.meta.name, node.status.state
        )));
    }
    if node.status.console_endpoint.is_empty() {
        return Err(ApiError::conflict(format!(
            "node {} offers no agent endpoint (start mvirt-node with --console-listen)",
            node.meta.name
        )));
    }
    Ok((
        node.status.console_endpoint.clone(),
        node.console_secret.clone(),
    ))
}

/// Asks the node's agent.
async fn ask(
    app: &App,
    node_id: &str,
    request: GetStatsRequest,
) -> Result<crate::proto::NodeStats, ApiError> {
    let (endpoint, secret) = agent_of(app, node_id)?;
    let unavailable = |e: String| ApiError::new(ErrorCode::Unavailable, e);
    let mut client = app
        .node_agent(&endpoint)
        .await
        .map_err(|e| unavailable(format!("node agent unreachable: {}", e.message)))?;
    let mut request = tonic::Request::new(request);
    let bearer = format!("Bearer {secret}")
        .parse()
        .map_err(|_| ApiError::internal("the node's secret is not a valid header"))?;
    request.metadata_mut().insert("authorization", bearer);
    match client.get_stats(request).await {
        Ok(stats) => Ok(stats.into_inner()),
        // The node does not have it (yet, or any more): the VM is not running there.
        Err(s) if s.code() == tonic::Code::NotFound => Err(ApiError::conflict(format!(
            "node {node_id}: {}",
            s.message()
        ))),
        Err(s) => Err(unavailable(format!("node agent: {}", s.message()))),
    }
}

#[utoipa::path(get, path = "/v1/vms/{id}/stats", tag = "vms",
    params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses(
        (status = 200, body = GuestStats),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the VM is not placed on a node, its node is offline or offers no agent endpoint, or the node has no such VM (yet)", body = ErrorEnvelope),
        (status = 503, description = "the node's agent cannot be reached or its daemons fail", body = ErrorEnvelope)))]
pub async fn vm_stats(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<ProjectQuery>,
) -> Result<Response, ApiError> {
    app.read_barrier().await?;
    let (vm_id, node_id) = {
        let state = app.shared.read();
        let vm_id = super::resources::resolve(&state, Kind::Vm, &id, q.project.as_deref())?;
        let vm = state
            .vms
            .get(&vm_id)
            .ok_or_else(|| ApiError::not_found(Kind::Vm, &vm_id))?;
        let node_id = vm.node_id.clone().ok_or_else(|| {
            ApiError::conflict(format!("VM {} is not placed on a node yet", vm.meta.name))
        })?;
        (vm_id, node_id)
    };
    let stats = ask(
        &app,
        &node_id,
        GetStatsRequest {
            vm_ids: vec![vm_id.clone()],
            pod_ids: vec![],
        },
    )
    .await?;
    let usage = stats
        .vms
        .into_iter()
        .find(|g| g.id == vm_id)
        .ok_or_else(|| ApiError::conflict(format!("node {node_id} has no VM {vm_id}")))?;
    Ok(Json(guest(&node_id, stats.sampled_at_ms, usage)).into_response())
}

#[utoipa::path(get, path = "/v1/pods/{id}/stats", tag = "pods",
    params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses(
        (status = 200, body = GuestStats),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the pod is not placed on a node, its node is offline or offers no agent endpoint, or the node has no such pod (yet)", body = ErrorEnvelope),
        (status = 503, description = "the node's agent cannot be reached or its daemons fail", body = ErrorEnvelope)))]
pub async fn pod_stats(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<ProjectQuery>,
) -> Result<Response, ApiError> {
    app.read_barrier().await?;
    let (pod_id, node_id) = {
        let state = app.shared.read();
        let pod_id = super::resources::resolve(&state, Kind::Pod, &id, q.project.as_deref())?;
        let pod = state
            .pods
            .get(&pod_id)
            .ok_or_else(|| ApiError::not_found(Kind::Pod, &pod_id))?;
        let node_id = pod.node_id.clone().ok_or_else(|| {
            ApiError::conflict(format!("pod {} is not placed on a node yet", pod.meta.name))
        })?;
        (pod_id, node_id)
    };
    let stats = ask(
        &app,
        &node_id,
        GetStatsRequest {
            vm_ids: vec![],
            pod_ids: vec![pod_id.clone()],
        },
    )
    .await?;
    let usage = stats
        .pods
        .into_iter()
        .find(|g| g.id == pod_id)
        .ok_or_else(|| ApiError::conflict(format!("node {node_id} has no pod {pod_id}")))?;
    Ok(Json(guest(&node_id, stats.sampled_at_ms, usage)).into_response())
}

#[utoipa::path(get, path = "/v1/nodes/{id}/stats", tag = "nodes",
    params(("id" = String, Path, description = "id or name")),
    responses(
        (status = 200, body = NodeStats),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the node is offline or offers no agent endpoint", body = ErrorEnvelope),
        (status = 503, description = "the node's agent cannot be reached or its daemons fail", body = ErrorEnvelope)))]
pub async fn node_stats(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.read_barrier().await?;
    let node_id = {
        let state = app.shared.read();
        super::resources::resolve(&state, Kind::Node, &id, None)?
    };
    let stats = ask(&app, &node_id, GetStatsRequest::default()).await?;
    let at = stats.sampled_at_ms;
    Ok(Json(NodeStats {
        node_id: node_id.clone(),
        sampled_at_ms: at,
        host: stats.host.map(|h| HostStats {
            cpus: h.cpus,
            cpu_busy_seconds: h.cpu_busy_seconds,
            cpu_idle_seconds: h.cpu_idle_seconds,
            memory_total_bytes: h.memory_total_bytes,
            memory_available_bytes: h.memory_available_bytes,
            load1: h.load1,
        }),
        vms: stats
            .vms
            .into_iter()
            .map(|g| guest(&node_id, at, g))
            .collect(),
        pods: stats
            .pods
            .into_iter()
            .map(|g| guest(&node_id, at, g))
            .collect(),
    })
    .into_response())
}
