//! NodeService (gRPC, `proto/node.proto`): translates between proto messages and commands.
//! Every call needs `authorization: Bearer <token>` with a node or admin token. A node token is
//! bound to the node it registers first (`BindToken`); from then on it acts for that node only:
//! another `node_id` is PERMISSION_DENIED, and status reports about resources not on its node
//! are dropped and returned in `unknown_ids`. Admin tokens may act for any node.
//!
//! With TLS (the default) `Register` signs the node's CSR for `mvirt://node/<id>` and every
//! other call of a node token also needs that client certificate (the listener asks for one
//! but lets a first `Register` in without); another node's certificate, or none, is
//! PERMISSION_DENIED. Admin tokens need no certificate.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::app::{hash_secret, new_id, now, App, HeartbeatForward};
use crate::model::{
    Capacity, Condition, Kind, Meta, Node, NodeSpec, NodeState, NodeStatus, Phase, Role,
    SnapshotStatus, Status as ResourceStatus,
};
use crate::nodespec;
use crate::proto::{self, node_service_server::NodeService};
use crate::state::{ApiError, Command, SnapshotReport, StatusReport};
use crate::validate;

pub struct NodeServiceImpl {
    app: Arc<App>,
    shutdown: mvirt_common::Shutdown,
}

impl NodeServiceImpl {
    pub fn new(app: Arc<App>, shutdown: mvirt_common::Shutdown) -> Self {
        Self { app, shutdown }
    }

    /// The caller of any RPC but `Register`: its token, and with TLS a node token's client
    /// certificate must name the node the token is bound to (`mvirt://node/<id>`).
    fn authenticate<T>(&self, req: &Request<T>) -> Result<NodeCaller, Status> {
        let caller = self.token_caller(req)?;
        if let (true, NodeCaller::Node { bound, .. }) = (self.app.tls_on(), &caller) {
            let presented = req
                .extensions()
                .get::<mvirt_common::tls::PeerInfo>()
                .and_then(|p| p.identity.clone());
            let Some(bound) = bound else {
                return Err(Status::permission_denied(
                    "this node token has registered no node yet: Register first",
                ));
            };
            match presented {
                Some(mvirt_common::tls::PeerIdentity::Node(id)) if &id == bound => {}
                Some(other) => {
                    return Err(Status::permission_denied(format!(
                        "the client certificate is {other}, but this token is bound to node {bound}"
                    )))
                }
                None => {
                    return Err(Status::permission_denied(format!(
                    "this call needs the client certificate of node {bound} (issued by Register)"
                )))
                }
            }
        }
        Ok(caller)
    }

    /// The caller as its token says (Register: a node's first registration has no certificate).
    fn token_caller<T>(&self, req: &Request<T>) -> Result<NodeCaller, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <node token>"))?;
        let hash = hash_secret(token);
        let state = self.app.shared.read();
        match state.tokens.values().find(|t| t.hash == hash) {
            Some(t) if t.role == Role::Admin => Ok(NodeCaller::Admin),
            Some(t) if t.role == Role::Node => Ok(NodeCaller::Node {
                token_id: t.id.clone(),
                bound: t.node_id.clone(),
            }),
            Some(_) => Err(Status::permission_denied(
                "token not allowed on NodeService",
            )),
            None => Err(Status::unauthenticated("unknown or revoked token")),
        }
    }
}

/// Who calls NodeService.
enum NodeCaller {
    /// May act for any node.
    Admin,
    /// A node token; `bound` is the node it registered first.
    Node {
        token_id: String,
        bound: Option<String>,
    },
}

impl NodeCaller {
    /// Refuses a call for `node_id` by a node token bound to another node (or to none yet).
    fn may_act_for(&self, node_id: &str) -> Result<(), Status> {
        match self {
            NodeCaller::Admin => Ok(()),
            NodeCaller::Node { bound: Some(b), .. } if b == node_id => Ok(()),
            NodeCaller::Node { bound: Some(b), .. } => Err(Status::permission_denied(format!(
                "this token is bound to node {b}, not {node_id}"
            ))),
            NodeCaller::Node { bound: None, .. } => Err(Status::permission_denied(
                "this node token has registered no node yet: Register first",
            )),
        }
    }
}

/// Whether a report about `kind`/`id` may come from `node_id` when a node token sends it: NICs
/// only when attached to a VM placed on that node (VMs and volumes are checked by the state).
fn on_node(state: &crate::state::State, kind: Kind, id: &str, node_id: &str) -> bool {
    match kind {
        Kind::Nic => state.nics.get(id).is_some_and(|n| {
            let vm = n.vm_id.as_deref().and_then(|vm| state.vms.get(vm));
            let pod = n.pod_id.as_deref().and_then(|p| state.pods.get(p));
            vm.is_some_and(|vm| vm.node_id.as_deref() == Some(node_id))
                || pod.is_some_and(|p| p.node_id.as_deref() == Some(node_id))
        }),
        _ => true,
    }
}

/// A pod artefacts version as a node reports it: a manifest's `version`, short and printable.
fn pod_artefacts_version(version: &str) -> Result<(), Status> {
    if version.len() > 128 || version.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "pod_artefacts_version: at most 128 bytes, no control characters",
        ));
    }
    Ok(())
}

fn capacity(c: Option<proto::NodeCapacity>) -> Option<Capacity> {
    c.map(|c| Capacity {
        vcpus: c.vcpus,
        memory_bytes: c.memory_bytes,
        storage_bytes: c.storage_bytes,
    })
}

fn kind_of(k: i32) -> Option<Kind> {
    Some(match proto::ResourceKind::try_from(k).ok()? {
        proto::ResourceKind::Network => Kind::Network,
        proto::ResourceKind::SecurityGroup => Kind::SecurityGroup,
        proto::ResourceKind::Template => Kind::Template,
        proto::ResourceKind::Volume => Kind::Volume,
        proto::ResourceKind::Nic => Kind::Nic,
        proto::ResourceKind::Vm => Kind::Vm,
        proto::ResourceKind::Pod => Kind::Pod,
        proto::ResourceKind::Backup => Kind::Backup,
        proto::ResourceKind::Replication => Kind::Replication,
        proto::ResourceKind::Route | proto::ResourceKind::Unspecified => return None,
    })
}

fn phase_of(p: i32) -> Phase {
    match proto::Phase::try_from(p).unwrap_or(proto::Phase::Unspecified) {
        proto::Phase::Unspecified => Phase::Unknown,
        proto::Phase::Pending => Phase::Pending,
        proto::Phase::Creating => Phase::Creating,
        proto::Phase::Ready => Phase::Ready,
        proto::Phase::Running => Phase::Running,
        proto::Phase::Stopping => Phase::Stopping,
        proto::Phase::Stopped => Phase::Stopped,
        proto::Phase::Failed => Phase::Failed,
        proto::Phase::Importing => Phase::Importing,
        proto::Phase::Deleting => Phase::Deleting,
    }
}

type SpecStream = Pin<Box<dyn Stream<Item = Result<proto::NodeSpec, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeServiceImpl {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let caller = self.token_caller(&request)?;
        let req = request.into_inner();
        // A bound token asking for a new id is refused below (it may only be its node again): a
        // second machine using the same token fails instead of taking over the first's node.
        let node_id = if req.node_id.is_empty() {
            new_id()
        } else {
            req.node_id.clone()
        };
        validate::id("node_id", &node_id)?;
        validate::name("node name", &req.name)?;
        if req.address.is_empty()
            || req.address.len() > 255
            || req.address.chars().any(|c| c.is_whitespace())
        {
            return Err(Status::invalid_argument("address must be a host address"));
        }
        let endpoint_ok = req.console_endpoint.is_empty()
            || req.console_endpoint.starts_with("http://")
            || req.console_endpoint.starts_with("https://");
        if !endpoint_ok {
            return Err(Status::invalid_argument(
                "console_endpoint must be an http(s):// URL",
            ));
        }
        if req.console_secret.len() > 1024 {
            return Err(Status::invalid_argument(
                "console_secret: at most 1024 bytes",
            ));
        }
        pod_artefacts_version(&req.pod_artefacts_version)?;
        let labels = req.labels.into_iter().collect();
        validate::labels(&labels)?;
        if let NodeCaller::Node { bound: Some(_), .. } = &caller {
            caller.may_act_for(&node_id)?;
        }
        // The node's certificate (identity set here, SANs limited to its own hosts), signed
        // before anything is written so that a bad CSR changes nothing.
        let certificate_pem = match (&self.app.tls, req.csr_pem.is_empty()) {
            (Some(tls), false) => tls.sign_node_csr(
                &req.csr_pem,
                &node_id,
                &[
                    crate::tls::host_of(&req.address),
                    crate::tls::host_of(&req.console_endpoint),
                ],
            )?,
            _ => String::new(),
        };
        if let NodeCaller::Node { token_id, bound } = &caller {
            if bound.is_some() {
                caller.may_act_for(&node_id)?;
            } else {
                // Bound before the node exists, so two registrations racing with one token
                // cannot both win.
                self.app
                    .submit(
                        Command::BindToken {
                            id: token_id.clone(),
                            node_id: node_id.clone(),
                        },
                        None,
                    )
                    .await?;
            }
        }
        let now = now();
        let node = Node {
            meta: Meta {
                id: node_id.clone(),
                name: req.name,
                project: String::new(),
                labels,
                revision: 0,
                spec_revision: 0,
                created_at: now.clone(),
                updated_at: now.clone(),
                trace_id: None,
            },
            spec: NodeSpec { schedulable: true },
            status: NodeStatus {
                state: NodeState::Online,
                address: req.address,
                capacity: capacity(req.capacity).unwrap_or_default(),
                agent_version: req.agent_version,
                last_state_change_at: Some(now),
                console_endpoint: req.console_endpoint,
                pod_artefacts_version: req.pod_artefacts_version,
                drain: None,
            },
            allocated: Capacity::default(),
            console_secret: req.console_secret,
        };
        let (revision, _) = self
            .app
            .submit(Command::RegisterNode { node }, None)
            .await?;
        if self.app.is_leader() {
            self.app.touch(&node_id);
        } else {
            // Liveness lives on the leader: tell it the node is alive.
            let _ = self
                .app
                .heartbeat(HeartbeatForward {
                    node_id: node_id.clone(),
                    capacity: None,
                    pod_artefacts_version: None,
                })
                .await;
        }
        Ok(Response::new(proto::RegisterResponse {
            node_id,
            revision,
            heartbeat_interval_ms: self.app.heartbeat_interval.as_millis() as u32,
            certificate_pem,
            ca_pem: self
                .app
                .tls
                .as_ref()
                .map(|t| t.ca.cert_pem().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        validate::id("node_id", &req.node_id)?;
        caller.may_act_for(&req.node_id)?;
        if let Some(version) = &req.pod_artefacts_version {
            pod_artefacts_version(version)?;
        }
        self.app
            .heartbeat(HeartbeatForward {
                node_id: req.node_id,
                capacity: capacity(req.capacity),
                pod_artefacts_version: req.pod_artefacts_version,
            })
            .await?;
        Ok(Response::new(proto::HeartbeatResponse {
            revision: self.app.shared.applied_revision(),
        }))
    }

    async fn deregister(
        &self,
        request: Request<proto::DeregisterRequest>,
    ) -> Result<Response<proto::DeregisterResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        validate::id("node_id", &req.node_id)?;
        caller.may_act_for(&req.node_id)?;
        self.app
            .submit(
                Command::Delete {
                    kind: Kind::Node,
                    id: req.node_id,
                    if_match: None,
                    force: false,
                },
                None,
            )
            .await?;
        Ok(Response::new(proto::DeregisterResponse {}))
    }

    type WatchSpecsStream = SpecStream;

    async fn watch_specs(
        &self,
        request: Request<proto::WatchSpecsRequest>,
    ) -> Result<Response<Self::WatchSpecsStream>, Status> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        validate::id("node_id", &req.node_id)?;
        caller.may_act_for(&req.node_id)?;
        self.app.read_barrier().await?;
        if !self.app.shared.read().nodes.contains_key(&req.node_id) {
            return Err(ApiError::not_found(Kind::Node, &req.node_id).into());
        }
        let app = self.app.clone();
        let shutdown = self.shutdown.clone();
        let node_id = req.node_id;
        let mut last = req.from_revision;
        let stream = async_stream::try_stream! {
            let mut applied = app.shared.applied.subscribe();
            loop {
                let spec = {
                    let state = app.shared.read();
                    state.nodes.contains_key(&node_id).then(|| nodespec::desired_for(&state, &node_id))
                };
                let Some(spec) = spec else {
                    Err(Status::not_found(format!("node {node_id} was deregistered")))?;
                    break;
                };
                if spec.revision > last {
                    last = spec.revision;
                    yield spec;
                }
                tokio::select! {
                    changed = applied.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    _ = shutdown.wait() => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update_resource_status(
        &self,
        request: Request<proto::UpdateResourceStatusRequest>,
    ) -> Result<Response<proto::UpdateResourceStatusResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        validate::id("node_id", &req.node_id)?;
        caller.may_act_for(&req.node_id)?;
        if req.statuses.len() > 10_000 {
            return Err(Status::invalid_argument("at most 10000 statuses per call"));
        }
        let mut reports = Vec::new();
        let mut unknown = Vec::new();
        for s in req.statuses {
            let Some(kind) = kind_of(s.kind) else {
                // Routes have no stored status; unknown kinds are reported back.
                if s.kind != proto::ResourceKind::Route as i32 {
                    unknown.push(s.id);
                }
                continue;
            };
            if s.message.len() > 4096 {
                return Err(Status::invalid_argument(
                    "status message: at most 4096 bytes",
                ));
            }
            let snapshots = s
                .snapshots
                .into_iter()
                .map(|r| SnapshotReport {
                    id: r.id,
                    status: SnapshotStatus {
                        phase: phase_of(r.phase),
                        message: r.message.chars().take(4096).collect(),
                        used_bytes: (r.used_bytes > 0).then_some(r.used_bytes),
                    },
                })
                .collect();
            let migration = s.migration.as_ref().and_then(migration_update);
            reports.push(StatusReport {
                kind,
                id: s.id,
                snapshots,
                migration,
                status: ResourceStatus {
                    phase: phase_of(s.phase),
                    message: s.message,
                    conditions: s
                        .conditions
                        .into_iter()
                        .take(16)
                        .map(|c| Condition {
                            kind: c.r#type.chars().take(64).collect(),
                            status: c.status.chars().take(16).collect(),
                            message: c.message.chars().take(4096).collect(),
                        })
                        .collect(),
                    node_id: None,
                    observed_revision: s.observed_revision,
                    updated_at: None,
                    ipv4_addresses: s.ipv4_addresses,
                    ipv6_addresses: s.ipv6_addresses,
                    import_bytes_done: (s.import_bytes_total > 0 || s.import_bytes_done > 0)
                        .then_some(s.import_bytes_done),
                    import_bytes_total: (s.import_bytes_total > 0).then_some(s.import_bytes_total),
                    used_bytes: (s.used_bytes > 0).then_some(s.used_bytes),
                    rollback_generation: (s.rollback_generation > 0)
                        .then_some(s.rollback_generation),
                    fields: s.fields.into_iter().collect(),
                    containers: s
                        .containers
                        .into_iter()
                        .take(crate::validate::MAX_CONTAINERS)
                        .map(crate::nodespec::container_status)
                        .collect(),
                    artefacts_version: (!s.artefacts_version.is_empty())
                        .then(|| s.artefacts_version.chars().take(256).collect()),
                    nodes: Default::default(),
                    backup: s.backup.map(|b| crate::model::BackupReport {
                        size_bytes: b.size_bytes,
                        sha256: b.sha256.chars().take(64).collect(),
                        base_backup_id: (!b.base_backup_id.is_empty())
                            .then(|| b.base_backup_id.chars().take(64).collect()),
                        volume_size_bytes: b.volume_size_bytes,
                    }),
                    replicas: crate::nodespec::replica_reports(s.replicas),
                },
            });
        }
        if matches!(caller, NodeCaller::Node { .. }) {
            let state = self.app.shared.read();
            reports.retain(|r| {
                let ok = on_node(&state, r.kind, &r.id, &req.node_id);
                if !ok {
                    unknown.push(r.id.clone());
                }
                ok
            });
        }
        let (_, value) = self
            .app
            .submit(
                Command::UpdateStatuses {
                    node_id: req.node_id,
                    reports,
                    now: now(),
                },
                None,
            )
            .await?;
        let accepted = value.get("accepted").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if let Some(ids) = value.get("unknown_ids").and_then(|v| v.as_array()) {
            unknown.extend(ids.iter().filter_map(|v| v.as_str().map(String::from)));
        }
        Ok(Response::new(proto::UpdateResourceStatusResponse {
            accepted,
            unknown_ids: unknown,
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<proto::RenewCertificateRequest>,
    ) -> Result<Response<proto::RenewCertificateResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let req = request.into_inner();
        validate::id("node_id", &req.node_id)?;
        caller.may_act_for(&req.node_id)?;
        let tls = self.app.tls.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this member runs with --insecure-plaintext: no certificates",
            )
        })?;
        if req.csr_pem.is_empty() {
            return Err(Status::invalid_argument("csr_pem is empty"));
        }
        let hosts = {
            let state = self.app.shared.read();
            let node = state
                .nodes
                .get(&req.node_id)
                .ok_or_else(|| Status::not_found(format!("node {} not found", req.node_id)))?;
            [
                crate::tls::host_of(&node.status.address),
                crate::tls::host_of(&node.status.console_endpoint),
            ]
        };
        let certificate_pem = tls.sign_node_csr(&req.csr_pem, &req.node_id, &hosts)?;
        Ok(Response::new(proto::RenewCertificateResponse {
            certificate_pem,
        }))
    }
}

/// A source node's migration report in domain form (`None`: no phase given).
fn migration_update(r: &proto::MigrationReport) -> Option<crate::state::MigrationUpdate> {
    use crate::state::ReportedPhase;
    use proto::MigrationReportPhase as P;
    let phase = match P::try_from(r.phase).unwrap_or_default() {
        P::Transferring => ReportedPhase::Transferring,
        P::Completing => ReportedPhase::Completing,
        P::Completed => ReportedPhase::Completed,
        P::Failed => ReportedPhase::Failed,
        P::Unspecified => return None,
    };
    Some(crate::state::MigrationUpdate {
        migration_id: r.migration_id.clone(),
        phase,
        bytes_transferred: r.bytes_transferred,
        bytes_remaining: r.bytes_remaining,
        downtime_ms: r.downtime_ms,
        error: r.error.chars().take(4096).collect(),
    })
}
