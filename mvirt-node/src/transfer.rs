//! The node-to-node transfer channel (`NodePeer` in mvirt-api's `node.proto`).
//!
//! mvirt-zfs and mvirt-vmm listen only on their local unix sockets, so data that must move to
//! another host goes agent to agent: the source agent reads its local daemon (mvirt-zfs
//! `SendVolume`, or a unix socket a hypervisor writes its migration stream to) and streams it
//! to the target agent's `NodePeer` service, which feeds its local daemon (`ReceiveVolume`, or
//! the socket the incoming hypervisor listens on).
//!
//! ```text
//! source agent                                 target agent
//! zfs.SendVolume ──chunks──> PushVolume ───────> zfs.ReceiveVolume (verifies the SHA-256 trailer)
//! unix socket  <──bytes──>   Relay      <──────> unix socket (IncomingSockets)
//! (migration sent)           CompleteMigration ──> vmm.CompleteIncomingMigration
//! (completion refused)       AbortMigration ─────> never completes it (unless it runs already)
//! ```
//!
//! **Authorisation.** NodePeer shares the NodeAgent listener (TLS with the node certificate,
//! client certificate of the cluster CA required). A call must (1) come from a node certificate
//! (`mvirt://node/<id>`) — members and unauthenticated callers are refused, (2) name a
//! [`TransferGrant`] that is in this node's current spec with this node as target and the
//! caller as source, and (3) present the grant's token (`authorization: Bearer`). The control
//! plane puts each grant into both nodes' specs for as long as the work (a migration, a
//! replication) runs, so a node can push only what the control plane asked for. A call that
//! arrives before this node's spec carries the grant waits for it up to [`GRANT_WAIT`].
//!
//! **Streaming.** Nothing is buffered whole: each side pulls the next chunk only when the
//! other side has taken the previous one (gRPC flow control end to end), so a slow target
//! slows the source's `zfs send` down. The SHA-256 trailer SendVolume computes travels
//! unchanged to the target's mvirt-zfs, which checks it before the received snapshot exists.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use mvirt_api::proto::node_peer_client::NodePeerClient;
use mvirt_api::proto::node_peer_server::NodePeer;
use mvirt_api::proto::{
    AbortMigrationRequest, AbortMigrationResponse, CompleteMigrationRequest,
    CompleteMigrationResponse, MigratedNicFlows, NodeSpec, PeerVolumeChunk, PeerVolumeHeader,
    PeerVolumeResult, RelayFrame, RelayOpen, RelayTarget, TransferGrant,
};
use mvirt_common::tls::{self as ctls, CertStore, PeerIdentity, PeerInfo};
use mvirt_zfs::proto as zfs;

use crate::daemons::Daemons;

/// How long a call waits for its grant to appear in this node's spec (the control plane
/// sends both nodes their new spec at once, but the target may get it a moment later).
pub const GRANT_WAIT: Duration = Duration::from_secs(15);

/// How long a migration relay waits for this node to prepare the incoming VM (less than the
/// 30 s mvirt-vmm lets a migration stream stall, so the source learns why).
pub const PREPARE_WAIT: Duration = Duration::from_secs(25);

/// Size of the pieces a relay reads from its local socket.
const RELAY_CHUNK: usize = 256 * 1024;

/// Send buffer of the relay's socket to the incoming hypervisor (the kernel caps it at
/// `net.core.wmem_max`, 4 MiB here).
const RELAY_SEND_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the grant {0} names no endpoint of the target node")]
    NoEndpoint(String),
    #[error("cannot dial the target node at {endpoint}: {message}")]
    Dial { endpoint: String, message: String },
    #[error("the source's mvirt-zfs: {0}")]
    Source(Status),
    #[error("the target node: {0}")]
    Target(Status),
    #[error("the local socket: {0}")]
    Io(#[from] std::io::Error),
}

impl TransferError {
    /// The gRPC status this error stands for (the target's or the source's code when one of
    /// them failed).
    pub fn status(&self) -> Status {
        match self {
            TransferError::Source(s) | TransferError::Target(s) => {
                Status::new(s.code(), self.to_string())
            }
            TransferError::NoEndpoint(_) => Status::failed_precondition(self.to_string()),
            TransferError::Dial { .. } | TransferError::Io(_) => {
                Status::unavailable(self.to_string())
            }
        }
    }
}

/// The grant `grant_id` if it lets `caller` push to this node (`node_id`), from `spec`.
/// `tls`: the listener runs TLS, so the caller's certificate identity must be the grant's
/// source (without TLS — `--insecure-plaintext` — only the token is checked).
pub fn authorize(
    spec: Option<&NodeSpec>,
    node_id: &str,
    grant_id: &str,
    caller: Option<&PeerIdentity>,
    tls: bool,
    bearer: Option<&str>,
) -> Result<TransferGrant, Status> {
    if tls {
        match caller {
            Some(PeerIdentity::Node(_)) => {}
            Some(other) => {
                return Err(Status::permission_denied(format!(
                "NodePeer answers only nodes of the cluster; the client certificate names {other}"
            )))
            }
            None => {
                return Err(Status::unauthenticated(
                    "NodePeer needs a node client certificate of the cluster",
                ))
            }
        }
    }
    let grant = spec
        .and_then(|s| s.transfers.iter().find(|g| g.id == grant_id))
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "no transfer grant {grant_id:?} in this node's spec"
            ))
        })?;
    if grant.target_node_id != node_id {
        return Err(Status::permission_denied(format!(
            "the transfer grant {grant_id} is for node {}, not this node ({node_id})",
            grant.target_node_id
        )));
    }
    if let Some(PeerIdentity::Node(caller)) = caller {
        if tls && *caller != grant.source_node_id {
            return Err(Status::permission_denied(format!(
                "the transfer grant {grant_id} lets node {} push, not node {caller}",
                grant.source_node_id
            )));
        }
    }
    let presented = bearer
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing the grant's bearer token"))?;
    crate::console::check_secret(Some(&format!("Bearer {presented}")), &grant.token)
        .map_err(|_| Status::unauthenticated("bad token for the transfer grant"))?;
    Ok(grant.clone())
}

/// Local sockets an incoming relay may reach, by VM id: filled by whoever prepares an
/// incoming migration on this node (the socket the incoming hypervisor listens on), emptied
/// when it ends.
#[derive(Clone, Default)]
pub struct IncomingSockets {
    inner: Arc<Mutex<HashMap<String, PathBuf>>>,
    /// Woken on every insert (relays that arrived before the prepare wait for it).
    inserted: Arc<tokio::sync::Notify>,
}

impl IncomingSockets {
    pub fn insert(&self, vm_id: &str, path: PathBuf) {
        self.lock().insert(vm_id.to_string(), path);
        self.inserted.notify_waiters();
    }

    /// The socket of `vm_id`, once it is registered (or `None` after `timeout`): the source may
    /// start sending as soon as both specs carry the grant, before this node prepared the VM.
    pub async fn wait(&self, vm_id: &str, timeout: Duration) -> Option<PathBuf> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let inserted = self.inserted.notified();
            if let Some(path) = self.get(vm_id) {
                return Some(path);
            }
            if tokio::time::timeout_at(deadline, inserted).await.is_err() {
                return self.get(vm_id);
            }
        }
    }

    pub fn remove(&self, vm_id: &str) {
        self.lock().remove(vm_id);
    }

    pub fn get(&self, vm_id: &str) -> Option<PathBuf> {
        self.lock().get(vm_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PathBuf>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Test failpoint: nodes whose `CompleteMigration` and `AbortMigration` do their work and then
/// answer `UNAVAILABLE`, as if the agent died right after it (the answer is lost). Set only by
/// tests (`lose_migration_answers`); empty in production.
static LOSE_ANSWERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Test failpoint: while `lose` is set, node `node_id`'s `CompleteMigration` and
/// `AbortMigration` answers are lost after their work is done (see `tests/migration.rs`).
#[doc(hidden)]
pub fn lose_migration_answers(node_id: &str, lose: bool) {
    let mut nodes = LOSE_ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
    nodes.retain(|n| n != node_id);
    if lose {
        nodes.push(node_id.to_string());
    }
}

fn answer_lost(node_id: &str) -> Result<(), Status> {
    let nodes = LOSE_ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
    if nodes.iter().any(|n| n == node_id) {
        return Err(Status::unavailable("the answer was lost (test failpoint)"));
    }
    Ok(())
}

/// The migrations this node aborted as their target (`AbortMigration`): it never completes
/// them. Kept in memory and as `<dir>/<grant id>.aborted` files, so an agent restarted while
/// the grant exists still refuses; files of grants no longer in the spec are removed.
#[derive(Clone, Default)]
struct Aborted {
    dir: Option<PathBuf>,
    ids: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Serialises completions and aborts on this node, so an abort never races a completion.
    settle: Arc<tokio::sync::Mutex<()>>,
}

impl Aborted {
    fn marker(&self, id: &str) -> Option<PathBuf> {
        // Grant ids are minted by the API; anything that is not a plain name has no file.
        let plain = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        self.dir
            .as_ref()
            .filter(|_| plain)
            .map(|d| d.join(format!("{id}.aborted")))
    }

    fn contains(&self, id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
            || self.marker(id).is_some_and(|m| m.exists())
    }

    fn insert(&self, id: &str) -> Result<(), Status> {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        if let Some(marker) = self.marker(id) {
            let written = marker
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&marker, b"aborted\n"));
            written.map_err(|e| {
                Status::internal(format!(
                    "cannot record the abort in {}: {e}",
                    marker.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Forgets aborts whose grants are gone from `spec` (no call can name them any more).
    fn retain(&self, spec: Option<&NodeSpec>) {
        let Some(spec) = spec else { return };
        let live = |id: &str| spec.transfers.iter().any(|g| g.id == id);
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id| live(id));
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(id) = name.strip_suffix(".aborted") {
                if !live(id) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// The `NodePeer` service of this node (the target side).
pub struct PeerServer {
    node_id: String,
    specs: watch::Receiver<Option<NodeSpec>>,
    daemons: Daemons,
    incoming: IncomingSockets,
    /// Served over TLS: callers must present a node certificate of the cluster.
    tls: bool,
    aborted: Aborted,
    /// While fenced (`crate::fencing`), no incoming migration completes here.
    fence: Option<std::sync::Arc<crate::fencing::Fence>>,
    /// Closed when the agent is gone (its `run` future dropped): what it served ends at once,
    /// as with `kill -9`, not after a graceful drain.
    alive: Option<watch::Receiver<()>>,
}

impl PeerServer {
    pub fn new(
        node_id: String,
        specs: watch::Receiver<Option<NodeSpec>>,
        daemons: Daemons,
        incoming: IncomingSockets,
        tls: bool,
    ) -> Self {
        Self {
            node_id,
            specs,
            daemons,
            incoming,
            tls,
            aborted: Aborted::default(),
            fence: None,
            alive: None,
        }
    }

    /// `alive`'s sender lives as long as the agent: once it is dropped, relays end, and
    /// completions and aborts are refused (UNAVAILABLE), as if the process had died.
    pub fn with_alive(mut self, alive: watch::Receiver<()>) -> Self {
        self.alive = Some(alive);
        self
    }

    fn gone(&self) -> Result<(), Status> {
        match &self.alive {
            Some(rx) if rx.has_changed().is_err() => {
                Err(Status::unavailable("the node agent is gone"))
            }
            _ => Ok(()),
        }
    }

    /// While `fence` holds, `CompleteMigration` is refused and `AbortMigration` kills the
    /// incoming copy before it records the abort.
    pub fn with_fence(mut self, fence: std::sync::Arc<crate::fencing::Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    fn fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(|f| f.fenced())
    }

    /// Records aborted incoming migrations under `dir` too (the agent's migration directory),
    /// so they stay aborted across an agent restart.
    pub fn with_migration_dir(mut self, dir: PathBuf) -> Self {
        self.aborted.dir = Some(dir);
        self
    }

    /// The grant the request names, once this node's spec carries it (see [`GRANT_WAIT`]).
    async fn grant<T>(
        &self,
        request: &Request<T>,
        grant_id: &str,
    ) -> Result<TransferGrant, Status> {
        let caller = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.identity.clone());
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut specs = self.specs.clone();
        let deadline = tokio::time::Instant::now() + GRANT_WAIT;
        loop {
            let result = authorize(
                specs.borrow_and_update().as_ref(),
                &self.node_id,
                grant_id,
                caller.as_ref(),
                self.tls,
                bearer.as_deref(),
            );
            match result {
                Ok(grant) => return Ok(grant),
                // Only a grant that is not (yet) here is worth waiting for.
                Err(status)
                    if status.code() == tonic::Code::PermissionDenied
                        && status.message().starts_with("no transfer grant") =>
                {
                    tokio::select! {
                        changed = specs.changed() => {
                            if changed.is_err() { return Err(status); }
                        }
                        _ = tokio::time::sleep_until(deadline) => return Err(status),
                    }
                }
                Err(status) => return Err(status),
            }
        }
    }
}

type RelayStream = Pin<Box<dyn Stream<Item = Result<RelayFrame, Status>> + Send>>;

#[tonic::async_trait]
impl NodePeer for PeerServer {
    type RelayStream = RelayStream;

    async fn push_volume(
        &self,
        request: Request<Streaming<PeerVolumeChunk>>,
    ) -> Result<Response<PeerVolumeResult>, Status> {
        let (metadata, extensions, mut input) = request.into_parts();
        let first = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the first message must carry the header"))??;
        let header = first
            .header
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first message must carry the header"))?;
        let probe = Request::from_parts(metadata, extensions, ());
        let grant = self.grant(&probe, &header.grant_id).await?;
        if !grant.volume_ids.contains(&header.volume_id) {
            return Err(Status::permission_denied(format!(
                "the transfer grant {} does not cover volume {}",
                grant.id, header.volume_id
            )));
        }
        let zfs_header = zfs::ReceiveVolumeHeader {
            volume_id: header.volume_id.clone(),
            name: header.name.clone(),
            base_snapshot_id: header.base_snapshot_id.clone(),
            source: format!("node:{}", grant.source_node_id),
        };
        let head = tokio_stream::once(zfs::ReceiveVolumeRequest {
            header: Some(zfs_header),
            data: first.data,
            sha256: first.sha256,
            byte_count: first.byte_count,
        });
        // A broken client stream ends the upstream without its trailer: mvirt-zfs then refuses
        // the stream and leaves nothing behind.
        let rest = input
            .take_while(|chunk| chunk.is_ok())
            .filter_map(|chunk| chunk.ok())
            .map(|chunk| zfs::ReceiveVolumeRequest {
                header: None,
                data: chunk.data,
                sha256: chunk.sha256,
                byte_count: chunk.byte_count,
            });
        tracing::info!(
            grant = %grant.id,
            purpose = %grant.purpose,
            volume = %header.volume_id,
            source = %grant.source_node_id,
            incremental = !header.base_snapshot_id.is_empty(),
            "receiving a volume stream from a peer node"
        );
        let received = self
            .daemons
            .zfs
            .clone()
            .receive_volume(head.chain(rest))
            .await?
            .into_inner();
        Ok(Response::new(PeerVolumeResult {
            volume_id: header.volume_id,
            snapshot_id: received.snapshot_id,
            byte_count: received.byte_count,
            sha256: received.sha256,
        }))
    }

    async fn relay(
        &self,
        request: Request<Streaming<RelayFrame>>,
    ) -> Result<Response<Self::RelayStream>, Status> {
        let (metadata, extensions, mut input) = request.into_parts();
        let first = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the first frame must carry `open`"))??;
        let open = first
            .open
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first frame must carry `open`"))?;
        let probe = Request::from_parts(metadata, extensions, ());
        let grant = self.grant(&probe, &open.grant_id).await?;
        let path = match RelayTarget::try_from(open.target) {
            Ok(RelayTarget::VmMigration) => {
                if grant.vm_id.is_empty() || grant.vm_id != open.vm_id {
                    return Err(Status::permission_denied(format!(
                        "the transfer grant {} does not cover the migration of VM {}",
                        grant.id, open.vm_id
                    )));
                }
                let prepared = tokio::select! {
                    prepared = self.incoming.wait(&open.vm_id, PREPARE_WAIT) => prepared,
                    () = agent_gone(self.alive.clone()) => None,
                };
                prepared.ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "no incoming migration of VM {} is prepared on this node",
                        open.vm_id
                    ))
                })?
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown relay target {}",
                    open.target
                )))
            }
        };
        let socket = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
            Status::unavailable(format!("cannot connect to {}: {e}", path.display()))
        })?;
        tracing::info!(grant = %grant.id, vm = %open.vm_id, socket = %path.display(), "relaying a migration stream from a peer node");
        enlarge_send_buffer(&socket);
        let (reader, mut writer) = socket.into_split();
        // Peer → local socket (both directions end when the agent is gone).
        let alive = self.alive.clone();
        tokio::spawn(async move {
            let copy = async move {
                if !first.data.is_empty() && writer.write_all(&first.data).await.is_err() {
                    return;
                }
                while let Some(Ok(frame)) = input.next().await {
                    if writer.write_all(&frame.data).await.is_err() {
                        return;
                    }
                }
                let _ = writer.shutdown().await;
            };
            tokio::select! {
                () = copy => {}
                () = agent_gone(alive) => {}
            }
        });
        // Local socket → peer.
        let output = read_frames(reader)
            .map(|frame| frame.map_err(|e| Status::unavailable(format!("local socket: {e}"))));
        let output = futures::StreamExt::take_until(output, agent_gone(self.alive.clone()));
        Ok(Response::new(Box::pin(output)))
    }

    async fn complete_migration(
        &self,
        request: Request<CompleteMigrationRequest>,
    ) -> Result<Response<CompleteMigrationResponse>, Status> {
        self.gone()?;
        let grant_id = request.get_ref().grant_id.clone();
        let grant = self.grant(&request, &grant_id).await?;
        let CompleteMigrationRequest {
            vm_id, nic_flows, ..
        } = request.into_inner();
        if grant.vm_id.is_empty() || grant.vm_id != vm_id {
            return Err(Status::permission_denied(format!(
                "the transfer grant {} does not cover the migration of VM {vm_id}",
                grant.id
            )));
        }
        let _settle = self.aborted.settle.lock().await;
        if self.aborted.contains(&grant.id) {
            return Err(Status::failed_precondition(format!(
                "the migration {} of VM {vm_id} was aborted on this node: it will not run here",
                grant.id
            )));
        }
        if self.fenced() {
            return Err(Status::failed_precondition(format!(
                "node {} is fenced (no contact with the API): the migration {} of VM {vm_id} \
                 will not run here",
                self.node_id, grant.id
            )));
        }
        tracing::info!(grant = %grant.id, vm = %vm_id, "completing an incoming migration");
        let flows_error =
            crate::migration_flows::import(self.daemons.net.clone(), &nic_flows).await;
        // Idempotent: a VM that runs here already (an earlier call whose answer was lost)
        // answers as a completion.
        self.daemons
            .vmm
            .clone()
            .complete_incoming_migration(mvirt_vmm::proto::CompleteIncomingMigrationRequest {
                id: vm_id.clone(),
            })
            .await?;
        self.incoming.remove(&vm_id);
        answer_lost(&self.node_id)?;
        self.gone()?;
        Ok(Response::new(CompleteMigrationResponse { flows_error }))
    }

    async fn abort_migration(
        &self,
        request: Request<AbortMigrationRequest>,
    ) -> Result<Response<AbortMigrationResponse>, Status> {
        self.gone()?;
        let grant_id = request.get_ref().grant_id.clone();
        let grant = self.grant(&request, &grant_id).await?;
        let vm_id = request.into_inner().vm_id;
        if grant.vm_id.is_empty() || grant.vm_id != vm_id {
            return Err(Status::permission_denied(format!(
                "the transfer grant {} does not cover the migration of VM {vm_id}",
                grant.id
            )));
        }
        let _settle = self.aborted.settle.lock().await;
        self.aborted.retain(self.specs.borrow().as_ref());
        if self.fenced() {
            // The fence kills the copy anyway; kill it now, so "not running" holds.
            let kill = mvirt_vmm::proto::KillVmRequest { id: vm_id.clone() };
            match self.daemons.vmm.clone().kill_vm(kill).await {
                Ok(_) => tracing::error!(vm = %vm_id, "fencing: killed incoming VM on abort"),
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {}
                Err(status) => return Err(status),
            }
        }
        let here = self
            .daemons
            .vmm
            .clone()
            .get_vm(mvirt_vmm::proto::GetVmRequest { id: vm_id.clone() })
            .await;
        let running = match here {
            Ok(vm) => vm.into_inner().state == mvirt_vmm::proto::VmState::Running as i32,
            Err(status) if status.code() == tonic::Code::NotFound => false,
            Err(status) => return Err(status),
        };
        if !running {
            self.aborted.insert(&grant.id)?;
            self.incoming.remove(&vm_id);
            tracing::warn!(grant = %grant.id, vm = %vm_id, "incoming migration aborted by its source");
        } else {
            tracing::info!(grant = %grant.id, vm = %vm_id, "abort asked for a migration that completed here");
        }
        answer_lost(&self.node_id)?;
        Ok(Response::new(AbortMigrationResponse { running }))
    }
}

/// How this node dials other nodes' NodePeer: TLS against the cluster CA presenting the node
/// certificate, or plain with `--insecure-plaintext`. Cheap to clone.
#[derive(Clone)]
pub struct PeerDialer {
    ca_pem: Option<String>,
    store: Option<CertStore>,
}

impl PeerDialer {
    /// `ca_pem` and `store` are `None` with `--insecure-plaintext`.
    pub fn new(ca_pem: Option<String>, store: Option<CertStore>) -> Self {
        Self { ca_pem, store }
    }

    fn client(
        &self,
        grant: &TransferGrant,
    ) -> Result<
        NodePeerClient<
            tonic::service::interceptor::InterceptedService<
                tonic::transport::Channel,
                crate::daemons::BearerAuth,
            >,
        >,
        TransferError,
    > {
        if grant.target_endpoint.is_empty() {
            return Err(TransferError::NoEndpoint(grant.id.clone()));
        }
        let dial = |message: String| TransferError::Dial {
            endpoint: grant.target_endpoint.clone(),
            message,
        };
        let config = match &self.ca_pem {
            Some(ca) => {
                Some(ctls::client_config(ca, self.store.clone()).map_err(|e| dial(e.to_string()))?)
            }
            None => None,
        };
        let channel =
            ctls::grpc_channel(&grant.target_endpoint, config).map_err(|e| dial(e.to_string()))?;
        let auth = crate::daemons::bearer_auth(&grant.token)
            .map_err(|_| dial("the grant's token is not a valid header".into()))?;
        Ok(NodePeerClient::with_interceptor(channel, auth)
            .max_decoding_message_size(8 * 1024 * 1024)
            .max_encoding_message_size(8 * 1024 * 1024))
    }

    /// Pushes the replication snapshot `snapshot_id` of the local volume `volume_id` (an
    /// increment from `base_snapshot_id` when not empty, which the target's replica must hold)
    /// to the grant's target node, where it becomes (or updates) a replica. A full stream
    /// names the replica like the local volume.
    pub async fn push_volume(
        &self,
        daemons: &Daemons,
        grant: &TransferGrant,
        volume_id: &str,
        snapshot_id: &str,
        base_snapshot_id: &str,
    ) -> Result<PeerVolumeResult, TransferError> {
        let mut client = self.client(grant)?;
        let mut zfs = daemons.zfs.clone();
        let name = if base_snapshot_id.is_empty() {
            zfs.get_volume(zfs::GetVolumeRequest {
                id: volume_id.to_string(),
            })
            .await
            .map_err(TransferError::Source)?
            .into_inner()
            .name
        } else {
            String::new()
        };
        let source = zfs
            .send_volume(zfs::SendVolumeRequest {
                volume_id: volume_id.to_string(),
                snapshot_id: snapshot_id.to_string(),
                base_snapshot_id: base_snapshot_id.to_string(),
            })
            .await
            .map_err(TransferError::Source)?
            .into_inner();
        // A failing source ends the upload without its trailer (the target refuses it and
        // keeps nothing); the source's own error is what the caller gets.
        let source_error: Arc<Mutex<Option<Status>>> = Arc::default();
        let seen = source_error.clone();
        let mut header = Some(PeerVolumeHeader {
            grant_id: grant.id.clone(),
            volume_id: volume_id.to_string(),
            name,
            base_snapshot_id: base_snapshot_id.to_string(),
        });
        let upload = source
            .map_while(move |chunk| match chunk {
                Ok(chunk) => Some(chunk),
                Err(status) => {
                    *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                    None
                }
            })
            .map(move |chunk| PeerVolumeChunk {
                header: header.take(),
                data: chunk.data,
                sha256: chunk.sha256,
                byte_count: chunk.byte_count,
            });
        let result = client.push_volume(upload).await;
        if let Some(status) = source_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(TransferError::Source(status));
        }
        Ok(result.map_err(TransferError::Target)?.into_inner())
    }

    /// Relays `local` (e.g. the connection a hypervisor opened to send its migration stream)
    /// to the grant's target node, which connects it to the incoming socket of `vm_id`.
    /// Returns when both directions ended.
    pub async fn relay(
        &self,
        grant: &TransferGrant,
        vm_id: &str,
        local: tokio::net::UnixStream,
    ) -> Result<(), TransferError> {
        let mut client = self.client(grant)?;
        let (reader, mut writer) = local.into_split();
        let open = RelayFrame {
            open: Some(RelayOpen {
                grant_id: grant.id.clone(),
                target: RelayTarget::VmMigration as i32,
                vm_id: vm_id.to_string(),
            }),
            data: Vec::new(),
        };
        let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
        let seen = read_error.clone();
        let upload = read_frames(reader).map_while(move |frame| match frame {
            Ok(frame) => Some(frame),
            Err(e) => {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                None
            }
        });
        let mut replies = client
            .relay(tokio_stream::once(open).chain(upload))
            .await
            .map_err(TransferError::Target)?
            .into_inner();
        while let Some(frame) = replies.next().await {
            let frame = frame.map_err(TransferError::Target)?;
            writer.write_all(&frame.data).await?;
        }
        let _ = writer.shutdown().await;
        if let Some(err) = read_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(TransferError::Io(err));
        }
        Ok(())
    }
}

impl PeerDialer {
    /// Asks the grant's target never to let the incoming VM `vm_id` run for this grant; `true`
    /// when it runs there already (the completion took effect after all).
    pub async fn abort_migration(
        &self,
        grant: &TransferGrant,
        vm_id: &str,
    ) -> Result<bool, TransferError> {
        let mut client = self.client(grant)?;
        let answer = client
            .abort_migration(AbortMigrationRequest {
                grant_id: grant.id.clone(),
                vm_id: vm_id.to_string(),
            })
            .await
            .map_err(TransferError::Target)?;
        Ok(answer.into_inner().running)
    }

    /// Asks the grant's target to let the incoming VM `vm_id` run (its hypervisor received
    /// everything), with its NICs' tracked flows; returns once it runs there, with the
    /// target's flow import error (empty: none).
    pub async fn complete_migration(
        &self,
        grant: &TransferGrant,
        vm_id: &str,
        nic_flows: Vec<MigratedNicFlows>,
    ) -> Result<String, TransferError> {
        let mut client = self.client(grant)?;
        let answer = client
            .complete_migration(CompleteMigrationRequest {
                grant_id: grant.id.clone(),
                vm_id: vm_id.to_string(),
                nic_flows,
            })
            .await
            .map_err(TransferError::Target)?;
        Ok(answer.into_inner().flows_error)
    }
}

/// The bytes read from `reader` as relay frames of at most [`RELAY_CHUNK`] bytes, read only
/// when the consumer asks for the next one; ends at EOF, and after yielding a read error.
/// Ends when the agent behind `alive` is gone (never without one).
async fn agent_gone(alive: Option<watch::Receiver<()>>) {
    match alive {
        Some(mut rx) => while rx.changed().await.is_ok() {},
        None => std::future::pending().await,
    }
}

/// Lets the relay hand the incoming hypervisor up to [`RELAY_SEND_BUFFER`] bytes ahead of
/// its reads (the default ~208 KiB is less than one frame), so a write to it returns at once
/// and the next frames keep arriving while it loads the last ones. Best effort.
fn enlarge_send_buffer(socket: &tokio::net::UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(err) = setsockopt(socket, sockopt::SndBuf, &RELAY_SEND_BUFFER) {
        tracing::debug!(error = %err, "cannot enlarge the relay's socket buffer");
    }
}

fn read_frames<R>(reader: R) -> impl Stream<Item = std::io::Result<RelayFrame>> + Send
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        // Read straight into the frame's own buffer: no zeroing, no copy into the message.
        let mut data = Vec::with_capacity(RELAY_CHUNK);
        match reader.read_buf(&mut data).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(RelayFrame { open: None, data }), Some(reader))),
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        NodeSpec {
            node_id: "b".into(),
            transfers: vec![TransferGrant {
                id: "g1".into(),
                source_node_id: "a".into(),
                target_node_id: "b".into(),
                target_endpoint: "https://127.0.0.1:1".into(),
                volume_ids: vec!["v1".into()],
                vm_id: "vm1".into(),
                token: "secret".into(),
                purpose: "test".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_aborted_migration_stays_aborted_across_a_restart_until_its_grant_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let aborted = Aborted {
            dir: Some(dir.path().join("migrations")),
            ..Default::default()
        };
        assert!(!aborted.contains("g1"));
        aborted.insert("g1").unwrap();
        assert!(aborted.contains("g1"));
        // A restarted agent (nothing in memory) still refuses: the marker file.
        let restarted = Aborted {
            dir: Some(dir.path().join("migrations")),
            ..Default::default()
        };
        assert!(restarted.contains("g1"));
        assert!(!restarted.contains("g2"));
        // While the grant is in the spec the abort holds; once it left, it is forgotten.
        restarted.retain(Some(&spec()));
        assert!(restarted.contains("g1"));
        restarted.retain(Some(&NodeSpec::default()));
        assert!(!restarted.contains("g1"));
        assert!(!dir.path().join("migrations/g1.aborted").exists());
        // A grant id that is no plain name has no file (and no path outside the directory).
        assert!(aborted.marker("../x").is_none());
        aborted.insert("../x").unwrap();
        assert!(aborted.contains("../x"));
    }

    #[test]
    fn only_the_granted_source_node_with_the_token_may_push() {
        let spec = spec();
        let a = PeerIdentity::Node("a".into());
        let ok = authorize(
            Some(&spec),
            "b",
            "g1",
            Some(&a),
            true,
            Some("Bearer secret"),
        );
        assert_eq!(ok.unwrap().id, "g1");
        // Another node, a member, no certificate.
        let c = PeerIdentity::Node("c".into());
        let err = authorize(
            Some(&spec),
            "b",
            "g1",
            Some(&c),
            true,
            Some("Bearer secret"),
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("not node c"), "{}", err.message());
        let member = PeerIdentity::Member(1);
        let err = authorize(
            Some(&spec),
            "b",
            "g1",
            Some(&member),
            true,
            Some("Bearer secret"),
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = authorize(Some(&spec), "b", "g1", None, true, Some("Bearer secret")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // A wrong or missing token.
        let err =
            authorize(Some(&spec), "b", "g1", Some(&a), true, Some("Bearer nope")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = authorize(Some(&spec), "b", "g1", Some(&a), true, None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // An unknown grant, no spec yet, a grant for another target.
        let err = authorize(
            Some(&spec),
            "b",
            "g2",
            Some(&a),
            true,
            Some("Bearer secret"),
        )
        .unwrap_err();
        assert!(
            err.message().starts_with("no transfer grant"),
            "{}",
            err.message()
        );
        assert!(authorize(None, "b", "g1", Some(&a), true, Some("Bearer secret")).is_err());
        let err = authorize(
            Some(&spec),
            "c",
            "g1",
            Some(&a),
            true,
            Some("Bearer secret"),
        )
        .unwrap_err();
        assert!(err.message().contains("not this node"), "{}", err.message());
        // Without TLS only the token is checked.
        assert!(authorize(Some(&spec), "b", "g1", None, false, Some("Bearer secret")).is_ok());
        assert!(authorize(Some(&spec), "b", "g1", None, false, Some("Bearer x")).is_err());
    }
}
