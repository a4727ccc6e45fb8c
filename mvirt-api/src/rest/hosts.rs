//! `GET /v1/nodes/{id}/host`: a node's host facts (CPU model, cores, NUMA nodes, memory,
//! hugepages) and its storage pool's use (size, allocated, free, provisioned bytes, compression
//! ratio), read live from the node.
//!
//! Stats are not state: nothing here is a Raft write. This member dials the node agent's
//! `NodeAgent.GetHost` on the endpoint the agent registered (the console relay's, with the same
//! secret), and the agent asks its mvirt-vmm and mvirt-zfs.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::ErrorEnvelope;
use crate::app::App;
use crate::model::{Kind, NodeState};
use crate::proto::GetHostRequest;
use crate::state::{ApiError, ErrorCode};

/// A node's host, as its agent reads it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostInfo {
    pub node_id: String,
    pub hostname: String,
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_cores: u32,
    pub numa_nodes: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
    pub hugepage_size_bytes: u64,
    pub running_vms: u32,
    pub pool: Option<StoragePool>,
}

/// The node's ZFS pool (or parent dataset) that holds volumes and templates.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoragePool {
    pub pool: String,
    pub dataset: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
    pub free_bytes: u64,
    /// Sum of the virtual sizes of all volumes and templates (thin provisioning).
    pub provisioned_bytes: u64,
    pub compression_ratio: f64,
    pub volume_count: u32,
    pub template_count: u32,
}

#[utoipa::path(get, path = "/v1/nodes/{id}/host", tag = "nodes",
    params(("id" = String, Path, description = "id or name")),
    responses(
        (status = 200, body = HostInfo),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the node is offline or offers no agent endpoint", body = ErrorEnvelope),
        (status = 503, description = "the node's agent cannot be reached or its daemons fail", body = ErrorEnvelope)))]
pub async fn get_host(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (node_id, endpoint, secret) = {
        let state = app.shared.read();
        let node_id = super::resources::resolve(&state, Kind::Node, &id, None)?;
        let node = state
            .nodes
            .get(&node_id)
            .ok_or_else(|| ApiError::not_found(Kind::Node, &node_id))?;
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
        (
            node_id,
            node.status.console_endpoint.clone(),
            node.console_secret.clone(),
        )
    };
    let unavailable = |e: String| ApiError::new(ErrorCode::Unavailable, e);
    let mut client = app
        .node_agent(&endpoint)
        .await
        .map_err(|e| unavailable(format!("unreachable: {}", e.message)))?;
    let mut request = tonic::Request::new(GetHostRequest {});
    let bearer = format!("Bearer {secret}")
        .parse()
        .map_err(|_| ApiError::internal("the node's secret is not a valid header"))?;
    request.metadata_mut().insert("authorization", bearer);
    let host = client
        .get_host(request)
        .await
        .map_err(|s| unavailable(format!("node agent: {}", s.message())))?
        .into_inner();
    Ok(Json(HostInfo {
        node_id,
        hostname: host.hostname,
        cpu_model: host.cpu_model,
        cpu_cores: host.cpu_cores,
        numa_nodes: host.numa_nodes,
        memory_total_bytes: host.memory_total_bytes,
        memory_available_bytes: host.memory_available_bytes,
        hugepages_total: host.hugepages_total,
        hugepages_free: host.hugepages_free,
        hugepage_size_bytes: host.hugepage_size_bytes,
        running_vms: host.running_vms,
        pool: host.pool.map(|p| StoragePool {
            pool: p.pool,
            dataset: p.dataset,
            size_bytes: p.size_bytes,
            allocated_bytes: p.allocated_bytes,
            free_bytes: p.free_bytes,
            provisioned_bytes: p.provisioned_bytes,
            compression_ratio: p.compression_ratio,
            volume_count: p.volume_count,
            template_count: p.template_count,
        }),
    })
    .into_response())
}
