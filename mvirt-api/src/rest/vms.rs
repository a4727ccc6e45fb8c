//! `/v1/vms`: CRUD of VMs (with their owned root volume and NICs) and their actions. The
//! console is `console.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::resources::{crud, query, resolve};
use super::{object_response, JsonBody};
use crate::app::{new_id, now, random_secret, App};
use crate::model::*;
use crate::state::{ApiError, Command, ErrorCode};
use crate::validate;

crud!(
    Kind::Vm,
    "vms",
    "/v1/vms",
    "/v1/vms/{id}",
    Vm,
    VmSpec,
    validate::vm,
    build_vm
);

/// A name for an owned object: `<vm>-<suffix>`, cut to a DNS label.
fn owned_name(vm: &str, suffix: &str) -> String {
    let keep = 63usize.saturating_sub(suffix.len() + 1);
    let base: String = vm.chars().take(keep).collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

fn build_vm(meta: Meta, mut spec: VmSpec) -> Result<Command, ApiError> {
    let mut owned_volumes = Vec::new();
    let mut owned_nics = Vec::new();
    if let Some(root) = &spec.root_volume {
        let mut vmeta = meta.clone();
        vmeta.id = new_id();
        vmeta.name = owned_name(&meta.name, "root");
        vmeta.labels = BTreeMap::new();
        spec.volume_ids.insert(0, vmeta.id.clone());
        owned_volumes.push(Volume {
            meta: vmeta,
            spec: VolumeSpec {
                size_bytes: root.size_bytes,
                template_id: Some(root.template_id.clone()),
                ..VolumeSpec::default()
            },
            status: Status::default(),
            node_id: None,
            owner_vm_id: Some(meta.id.clone()),
            vm_id: Some(meta.id.clone()),
            snapshots: Vec::new(),
            rollback: None,
            promote_replica: false,
        });
    }
    for (i, req) in spec.network_interfaces.iter().enumerate() {
        let mut nmeta = meta.clone();
        nmeta.id = new_id();
        nmeta.name = owned_name(&meta.name, &format!("nic{i}"));
        nmeta.labels = BTreeMap::new();
        spec.nic_ids.push(nmeta.id.clone());
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
            vm_id: Some(meta.id.clone()),
            owner_vm_id: Some(meta.id.clone()),
            pod_id: None,
            owner_pod_id: None,
        });
    }
    Ok(Command::CreateVm {
        vm: Vm::new(meta, spec),
        owned_volumes,
        owned_nics,
    })
}

#[utoipa::path(post, path = "/v1/vms/{id}/{action}", tag = "vms",
    params(("id" = String, Path, description = "id or name"), ("action" = String, Path, description = "start, stop, kill or restart"), ProjectQuery),
    responses((status = 200, body = Vm), (status = 404, body = ErrorEnvelope)))]
pub async fn vm_action(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(String, String)>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Ok(action) = action.parse::<VmAction>() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("unknown VM action {action:?}: start, stop, kill or restart"),
        ));
    };
    let q = query(q)?;
    let id = resolve(&app.shared.read(), Kind::Vm, &id, q.project.as_deref())?;
    let (_, value) = app
        .submit(
            Command::VmAction {
                id,
                action,
                now: now(),
            },
            None,
        )
        .await?;
    Ok(object_response(StatusCode::OK, value))
}

#[utoipa::path(post, path = "/v1/vms/{id}/migrate", tag = "vms",
    request_body = MigrateRequest,
    params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses(
        (status = 202, description = "the migration started; the VM's `migration` shows its phase. A running VM migrates live; a stopped one (`desired_state: stopped`, reported stopped) moves cold (`migration.cold`: its volumes are sent to the target and promoted there, then the VM switches; a start cancels the move)", body = Vm),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "the VM is starting or stopping, migrating already, a stopped VM's volume has snapshots, the target cannot take it, or there is no other node", body = ErrorEnvelope)))]
pub async fn migrate_vm(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    JsonBody(req, _): JsonBody<MigrateRequest>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let id = resolve(&app.shared.read(), Kind::Vm, &id, q.project.as_deref())?;
    if let Some(node) = &req.node {
        if node.is_empty() || node.len() > 253 {
            return Err(ApiError::invalid("node: a node id or name"));
        }
    }
    let (_, value) = app
        .submit(
            Command::MigrateVm {
                id,
                node: req.node,
                migration_id: new_id(),
                grant_token: random_secret(),
                now: now(),
            },
            None,
        )
        .await?;
    Ok(object_response(StatusCode::ACCEPTED, value))
}
