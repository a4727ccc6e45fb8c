//! The agent loop: register, heartbeat, watch the desired set, reconcile, report.
//!
//! Five tasks cooperate. The watcher keeps a `WatchSpecs` stream open (from revision 0 at
//! process start, so a restarted agent always gets the full set; from the last revision
//! received after a reconnect) and publishes the newest set. The VM and pod watchers turn every
//! `WatchVms` / `WatchPods` event into a wake-up. The heartbeat task keeps the node online. The main loop
//! runs a reconcile pass whenever the set changes, something wakes it, or the resync timer
//! fires, then reports the statuses that changed (all of them on a resync).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_stream::{Stream, StreamExt};
use tonic::Code;

use mvirt_api::proto as api;
use mvirt_common::Shutdown;

use crate::daemons::{DaemonError, Daemons, Endpoints};
use crate::imports::ImportTracker;
use crate::ledger::{Ledger, LedgerError};
use crate::reconcile::{Context, NodeReconciler, Settings};

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub endpoints: Endpoints,
    /// Node (or admin) token for NodeService.
    pub token: String,
    /// Node name (DNS label) registered with the API.
    pub name: String,
    /// Address the API and other nodes reach this host on.
    pub address: String,
    pub labels: HashMap<String, String>,
    pub firmware: Option<String>,
    pub resync_interval: Duration,
    pub stop_timeout_secs: u32,
    pub deregister_on_shutdown: bool,
    /// Where the console relay (NodeAgent gRPC) listens; `None` disables it.
    pub console_listen: Option<std::net::SocketAddr>,
    /// The endpoint the API dials for consoles (`https://<address>:<port>`, `http://` with
    /// `--insecure-plaintext`); derived from `address` and the bound port when empty.
    pub console_endpoint: String,
    /// TLS to the API and on the NodeAgent listener (see [`crate::tls`]).
    pub tls: crate::tls::TlsOptions,
    /// vCPU overcommit: the node reports its host threads times this as its vCPU capacity
    /// (`--cpu-overcommit`, at least 1.0; memory is never overcommitted).
    pub cpu_overcommit: f64,
    /// HA fencing time (`crate::fencing`).
    pub ha_fencing: Duration,
}

/// The vCPU capacity a node with `threads` host threads reports under `ratio` (rounded down,
/// never below the threads themselves).
pub fn overcommitted_vcpus(threads: u32, ratio: f64) -> u32 {
    let scaled = (f64::from(threads) * ratio.max(1.0)).floor();
    if scaled >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        (scaled as u32).max(threads)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot open the agent state in the data dir")]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Daemons(#[from] DaemonError),
    #[error("cannot start the console relay")]
    Console(#[from] mvirt_common::grpc::ServeError),
    #[error("registration refused by the API: {0}")]
    RegistrationRefused(String),
    #[error("TLS")]
    Tls(#[from] crate::tls::NodeTlsError),
}

/// The agent's TLS material (absent with `--insecure-plaintext`).
struct AgentTls {
    /// The cluster CA the API (and the NodeAgent's callers) are verified against.
    ca_pem: String,
    /// What the node certificate names besides its identity.
    sans: Vec<String>,
    /// The node certificate, from the first registration on; swapped by renewals.
    store: std::sync::Mutex<Option<mvirt_common::tls::CertStore>>,
}

impl AgentTls {
    fn store(&self) -> Option<mvirt_common::tls::CertStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs the agent until `shutdown` fires.
pub async fn run(config: AgentConfig, shutdown: Shutdown) -> Result<(), AgentError> {
    let mut config = config;
    crate::tls::check_api_url(&config.endpoints.api, &config.tls)?;
    let ledger = Arc::new(Ledger::open(&config.data_dir)?);
    let ca_pem = if config.tls.insecure_plaintext {
        tracing::warn!(
            api = %config.endpoints.api,
            "--insecure-plaintext: the node token, the desired state, statuses and console \
             traffic travel unencrypted, and neither the API nor the console relay's callers \
             are authenticated by certificate; use TLS outside development"
        );
        None
    } else {
        match crate::tls::resolve_ca(
            &config.data_dir,
            &config.endpoints.api,
            &config.tls,
            &shutdown,
        )
        .await?
        {
            Some(ca_pem) => Some(ca_pem),
            None => return Ok(()),
        }
    };
    // Until the first registration returns a certificate the API channel has no client
    // certificate (Register is the one call that needs none).
    let channel = crate::tls::api_channel(&config.endpoints.api, ca_pem.as_deref(), None)?;
    let mut daemons = Daemons::connect_lazy(&config.endpoints, &config.token, channel)?;
    let audit = mvirt_log::create_audit_logger(&config.endpoints.log, "mvirt-node");
    let secret = crate::console::console_secret(&ledger)?;
    let mut console_listener = None;
    if let Some(listen) = config.console_listen {
        let listener = mvirt_common::grpc::bind(listen).await?;
        let bound = listener.local_addr().unwrap_or(listen);
        if config.console_endpoint.is_empty() {
            let scheme = if ca_pem.is_some() { "https" } else { "http" };
            let host = if config.address.contains(':') {
                format!("[{}]", config.address)
            } else {
                config.address.clone()
            };
            config.console_endpoint = format!("{scheme}://{host}:{}", bound.port());
        }
        console_listener = Some(listener);
    }
    let tls = ca_pem.map(|ca_pem| {
        Arc::new(AgentTls {
            ca_pem,
            sans: crate::tls::node_sans(&config.address, &config.console_endpoint),
            store: std::sync::Mutex::new(None),
        })
    });

    let Some((node_id, heartbeat_interval)) = register(
        &config,
        &secret,
        &daemons,
        &ledger,
        tls.as_deref(),
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    if let Some(tls) = &tls {
        // From now on every call presents the node certificate (swapped in place by renewals
        // and re-registrations, so open streams keep their connection).
        let store = tls.store().expect("registration stored a certificate");
        let channel = crate::tls::api_channel(
            &config.endpoints.api,
            Some(&tls.ca_pem),
            Some(store.clone()),
        )?;
        daemons.api = crate::daemons::api_client(channel, &config.token)?;
        crate::tls::spawn_renewal(
            store,
            config.data_dir.clone(),
            node_id.clone(),
            config.name.clone(),
            tls.sans.clone(),
            daemons.api.clone(),
            shutdown.clone(),
        );
    }
    let (spec_tx, mut spec_rx) = watch::channel::<Option<api::NodeSpec>>(None);
    // The node-to-node channel (NodePeer): this node's side as a target, and how it dials
    // other nodes as a source (see crate::transfer).
    let incoming = crate::transfer::IncomingSockets::default();
    let fence = crate::fencing::Fence::new(config.ha_fencing);
    // Lives as long as this future: the peer server's relays end with it (crate::transfer).
    let (_alive, alive) = watch::channel(());
    let peers = crate::transfer::PeerDialer::new(
        tls.as_ref().map(|t| t.ca_pem.clone()),
        tls.as_ref().and_then(|t| t.store()),
    );
    if let Some(listener) = console_listener {
        let server_tls = match &tls {
            Some(tls) => Some(crate::tls::agent_server_config(
                &tls.store().expect("registration stored a certificate"),
                &tls.ca_pem,
            )?),
            None => None,
        };
        let relay = crate::console::ConsoleRelay::new(
            daemons.clone(),
            ledger.clone(),
            secret.clone(),
            server_tls.is_some(),
        );
        let server = mvirt_common::grpc::GrpcServer::for_daemon("mvirt-node")
            .add_service(api::node_agent_server::NodeAgentServer::new(relay))
            .await
            .add_service(
                api::node_peer_server::NodePeerServer::new(
                    crate::transfer::PeerServer::new(
                        node_id.clone(),
                        spec_rx.clone(),
                        daemons.clone(),
                        incoming.clone(),
                        server_tls.is_some(),
                    )
                    .with_migration_dir(config.data_dir.join("migrations"))
                    .with_fence(fence.clone())
                    .with_alive(alive.clone()),
                )
                .max_decoding_message_size(8 * 1024 * 1024)
                .max_encoding_message_size(8 * 1024 * 1024),
            )
            .await;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = server.serve_tls(listener, server_tls, stop).await {
                tracing::error!(error = %mvirt_common::error::error_chain(&err), "console relay stopped");
            }
        });
    }
    audit.info(format!("node agent registered as {node_id}"), &[&node_id]);

    let wake = Arc::new(Notify::new());
    tokio::spawn(crate::fencing::run(
        fence.clone(),
        daemons.clone(),
        spec_rx.clone(),
        audit.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(watch_specs(
        daemons.clone(),
        node_id.clone(),
        spec_tx,
        fence.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(watch_vms(daemons.clone(), wake.clone(), shutdown.clone()));
    tokio::spawn(watch_pods(daemons.clone(), wake.clone(), shutdown.clone()));
    tokio::spawn(heartbeat(
        config.clone(),
        secret.clone(),
        tls.clone(),
        daemons.clone(),
        ledger.clone(),
        node_id.clone(),
        heartbeat_interval,
        fence.clone(),
        shutdown.clone(),
    ));

    let reconciler = NodeReconciler::new(Context {
        daemons: daemons.clone(),
        ledger: ledger.clone(),
        imports: ImportTracker::new(),
        wake: wake.clone(),
        audit: audit.clone(),
        settings: Settings {
            node_id: node_id.clone(),
            firmware: config.firmware.clone(),
            stop_timeout_secs: config.stop_timeout_secs,
        },
        peers,
        incoming,
        migration_dir: config.data_dir.join("migrations"),
    });
    crate::metrics::watch(&daemons, &shutdown);
    let mut reported: HashMap<(i32, String), api::ResourceStatus> = HashMap::new();
    let mut resync = tokio::time::interval(config.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let full = tokio::select! {
            changed = spec_rx.changed() => {
                if changed.is_err() { break; }
                false
            }
            _ = wake.notified() => false,
            _ = resync.tick() => true,
            _ = shutdown.wait() => break,
        };
        let Some(spec) = spec_rx.borrow_and_update().clone() else {
            continue;
        };
        let started = std::time::Instant::now();
        // While fenced, HA VMs are desired stopped (crate::fencing).
        let fenced = fence.filter(&spec);
        let statuses = reconciler.reconcile(fenced.as_ref().unwrap_or(&spec)).await;
        crate::metrics::pass(spec.revision, &statuses, started.elapsed());
        tracing::debug!(
            revision = spec.revision,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconcile pass"
        );
        let to_send: Vec<api::ResourceStatus> = statuses
            .into_iter()
            .filter(|s| {
                full || reported
                    .get(&(s.kind, s.id.clone()))
                    .is_none_or(|prev| !same_status(prev, s))
            })
            .collect();
        if !to_send.is_empty() {
            let request = api::UpdateResourceStatusRequest {
                node_id: node_id.clone(),
                statuses: to_send.clone(),
            };
            match daemons.api.clone().update_resource_status(request).await {
                Ok(_) => {
                    for s in to_send {
                        reported.insert((s.kind, s.id.clone()), s);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "status report failed; retrying on the next pass")
                }
            }
        }
        if let Err(err) = ledger.set_applied_revision(spec.revision) {
            tracing::error!(error = %mvirt_common::error::error_chain(&err), "cannot record the applied revision");
        }
    }

    if config.deregister_on_shutdown {
        match daemons
            .api
            .clone()
            .deregister(api::DeregisterRequest {
                node_id: node_id.clone(),
            })
            .await
        {
            Ok(_) => tracing::info!(node = %node_id, "deregistered"),
            Err(err) => tracing::warn!(error = %err, "deregistration failed"),
        }
    }
    audit.flush().await;
    Ok(())
}

fn same_status(a: &api::ResourceStatus, b: &api::ResourceStatus) -> bool {
    let mut a = a.clone();
    a.observed_revision = b.observed_revision;
    &a == b
}

/// Total allocatable capacity of this host, from mvirt-vmm and mvirt-zfs (falling back to what
/// the agent can read itself when a daemon is not up yet), and the pod artefacts version
/// mvirt-vmm reports (empty when it has none usable, or cannot be asked).
async fn capacity(daemons: &Daemons, cpu_overcommit: f64) -> (api::NodeCapacity, String) {
    let mut capacity = api::NodeCapacity {
        vcpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: 0,
        storage_bytes: 0,
    };
    let mut pod_artefacts_version = String::new();
    if let Ok(info) = daemons
        .vmm
        .clone()
        .get_system_info(mvirt_vmm::proto::GetSystemInfoRequest {})
        .await
    {
        let info = info.into_inner();
        capacity.vcpus = info.cpu_cores;
        capacity.memory_bytes = info.memory_total_bytes;
        pod_artefacts_version = info.pod_artefacts_version;
    }
    if let Ok(stats) = daemons
        .zfs
        .clone()
        .get_pool_stats(mvirt_zfs::proto::GetPoolStatsRequest {})
        .await
    {
        capacity.storage_bytes = stats.into_inner().size_bytes;
    }
    capacity.vcpus = overcommitted_vcpus(capacity.vcpus, cpu_overcommit);
    (capacity, pod_artefacts_version)
}

/// Registers (retrying while the API is unreachable) and persists the node id.
/// `None` when shutdown fired first.
async fn register(
    config: &AgentConfig,
    console_secret: &str,
    daemons: &Daemons,
    ledger: &Ledger,
    tls: Option<&AgentTls>,
    shutdown: &Shutdown,
) -> Result<Option<(String, Duration)>, AgentError> {
    let mut backoff = MIN_BACKOFF;
    loop {
        // A fresh key at every registration: the API signs its CSR for this node.
        let (csr_pem, key_pem) = match tls {
            Some(tls) => crate::tls::new_csr(&config.name, &tls.sans)?,
            None => (String::new(), String::new()),
        };
        let (capacity, pod_artefacts_version) = capacity(daemons, config.cpu_overcommit).await;
        let request = api::RegisterRequest {
            node_id: ledger.node_id()?.unwrap_or_default(),
            name: config.name.clone(),
            address: config.address.clone(),
            labels: config.labels.clone(),
            capacity: Some(capacity),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            console_endpoint: config.console_endpoint.clone(),
            console_secret: if config.console_endpoint.is_empty() {
                String::new()
            } else {
                console_secret.to_string()
            },
            pod_artefacts_version,
            csr_pem,
        };
        match daemons.api.clone().register(request).await {
            Ok(response) => {
                let response = response.into_inner();
                ledger.set_node_id(&response.node_id)?;
                if let Some(tls) = tls {
                    keep_registration_certificate(config, tls, &response, &key_pem)?;
                }
                let interval =
                    Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(200)));
                tracing::info!(node = %response.node_id, "registered with the control plane");
                return Ok(Some((response.node_id, interval)));
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument
                        | Code::PermissionDenied
                        | Code::Unauthenticated
                        | Code::AlreadyExists
                ) =>
            {
                return Err(AgentError::RegistrationRefused(
                    status.message().to_string(),
                ));
            }
            Err(status) => {
                tracing::warn!(error = %status, "control plane unreachable; retrying registration");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait() => return Ok(None),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps the certificate a registration returned (it must name this node and chain to the
/// trusted CA).
fn keep_registration_certificate(
    config: &AgentConfig,
    tls: &AgentTls,
    response: &api::RegisterResponse,
    key_pem: &str,
) -> Result<(), AgentError> {
    if response.certificate_pem.is_empty() {
        return Err(AgentError::RegistrationRefused(
            "the API issued no node certificate (does it run with --insecure-plaintext? then \
             so must the agent)"
                .into(),
        ));
    }
    if !response.ca_pem.is_empty() {
        let theirs = mvirt_common::tls::fingerprint_pem(&response.ca_pem).ok();
        let ours = mvirt_common::tls::fingerprint_pem(&tls.ca_pem).ok();
        if theirs != ours {
            tracing::warn!(
                trusted = ?ours,
                api_says = ?theirs,
                "the API names another cluster CA than the one this agent trusts"
            );
        }
    }
    let mut store = tls.store.lock().unwrap_or_else(|e| e.into_inner());
    crate::tls::keep_certificate(
        &config.data_dir,
        &mut store,
        &response.node_id,
        &tls.ca_pem,
        &response.certificate_pem,
        key_pem,
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn heartbeat(
    config: AgentConfig,
    console_secret: String,
    tls: Option<Arc<AgentTls>>,
    daemons: Daemons,
    ledger: Arc<Ledger>,
    node_id: String,
    interval: Duration,
    fence: Arc<crate::fencing::Fence>,
    shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    let mut beats: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => return,
        }
        // Capacity changes rarely; refresh it every 20 beats.
        let (capacity, pod_artefacts_version) = if beats.is_multiple_of(20) {
            let (capacity, version) = capacity(&daemons, config.cpu_overcommit).await;
            (Some(capacity), Some(version))
        } else {
            (None, None)
        };
        beats += 1;
        let request = api::HeartbeatRequest {
            node_id: node_id.clone(),
            capacity,
            applied_revision: ledger.applied_revision().unwrap_or(0),
            pod_artefacts_version,
        };
        match daemons.api.clone().heartbeat(request).await {
            Ok(_) => fence.contact(),
            Err(status) if status.code() == Code::NotFound => {
                // The API forgot this node (removed while the agent was away): register again.
                tracing::warn!("the control plane does not know this node; registering again");
                if let Err(err) = register(
                    &config,
                    &console_secret,
                    &daemons,
                    &ledger,
                    tls.as_deref(),
                    &shutdown,
                )
                .await
                {
                    tracing::error!(error = %err, "re-registration failed");
                }
            }
            Err(status) => tracing::debug!(error = %status, "heartbeat failed"),
        }
    }
}

/// The stream's next item; `None` when the agent shuts down first.
async fn next_unless_shutdown<S: Stream + Unpin>(
    stream: &mut S,
    shutdown: &Shutdown,
) -> Option<Option<S::Item>> {
    tokio::select! {
        next = stream.next() => Some(next),
        _ = shutdown.wait() => None,
    }
}

/// Waits `backoff`, then doubles it (up to the maximum); false when the agent shuts down first.
async fn back_off(backoff: &mut Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.wait() => return false,
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

async fn watch_specs(
    daemons: Daemons,
    node_id: String,
    specs: watch::Sender<Option<api::NodeSpec>>,
    fence: Arc<crate::fencing::Fence>,
    shutdown: Shutdown,
) {
    let mut from_revision = 0;
    let mut backoff = MIN_BACKOFF;
    let mut epochs = fence.epochs();
    let mut last_epoch = 0;
    loop {
        // A new fencing epoch (contact is back after a fence): a new stream from revision 0,
        // whose first spec the API computes now (crate::fencing).
        let epoch = *epochs.borrow_and_update();
        if epoch != last_epoch {
            last_epoch = epoch;
            from_revision = 0;
        }
        let request = api::WatchSpecsRequest {
            node_id: node_id.clone(),
            from_revision,
        };
        match daemons.api.clone().watch_specs(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let next = tokio::select! {
                        next = next_unless_shutdown(&mut stream, &shutdown) => next,
                        _ = epochs.changed() => {
                            tracing::info!("contact is back after a fence: watching specs anew");
                            break;
                        }
                    };
                    let Some(next) = next else {
                        return;
                    };
                    match next {
                        Some(Ok(spec)) => {
                            backoff = MIN_BACKOFF;
                            fence.spec_received(epoch, spec.revision);
                            if spec.revision >= from_revision {
                                from_revision = spec.revision;
                                let _ = specs.send(Some(spec));
                            }
                        }
                        Some(Err(status)) => {
                            tracing::warn!(error = %status, "spec stream failed; reconnecting");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(status) => tracing::warn!(error = %status, "cannot watch specs; retrying"),
        }
        if !back_off(&mut backoff, &shutdown).await {
            return;
        }
    }
}

async fn watch_vms(daemons: Daemons, wake: Arc<Notify>, shutdown: Shutdown) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let request = mvirt_vmm::proto::WatchVmsRequest {
            include_initial: false,
        };
        if let Ok(stream) = daemons.vmm.clone().watch_vms(request).await {
            let mut stream = stream.into_inner();
            // Catch up on anything that changed while the stream was down.
            wake.notify_one();
            loop {
                let Some(next) = next_unless_shutdown(&mut stream, &shutdown).await else {
                    return;
                };
                match next {
                    Some(Ok(_event)) => {
                        backoff = MIN_BACKOFF;
                        wake.notify_one();
                    }
                    _ => break,
                }
            }
        }
        if !back_off(&mut backoff, &shutdown).await {
            return;
        }
    }
}

/// Every pod event of mvirt-vmm (a state change, a container or address update) wakes a pass.
async fn watch_pods(daemons: Daemons, wake: Arc<Notify>, shutdown: Shutdown) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let request = mvirt_vmm::proto::WatchPodsRequest {
            include_initial: false,
        };
        if let Ok(stream) = daemons.pods.clone().watch_pods(request).await {
            let mut stream = stream.into_inner();
            // Catch up on anything that changed while the stream was down.
            wake.notify_one();
            loop {
                let Some(next) = next_unless_shutdown(&mut stream, &shutdown).await else {
                    return;
                };
                match next {
                    Some(Ok(_event)) => {
                        backoff = MIN_BACKOFF;
                        wake.notify_one();
                    }
                    _ => break,
                }
            }
        }
        if !back_off(&mut backoff, &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod overcommit_tests {
    use super::overcommitted_vcpus;

    #[test]
    fn a_node_offers_its_threads_times_the_ratio() {
        assert_eq!(overcommitted_vcpus(2, 1.0), 2);
        assert_eq!(overcommitted_vcpus(2, 4.0), 8);
        assert_eq!(overcommitted_vcpus(3, 1.5), 4, "rounded down");
        assert_eq!(overcommitted_vcpus(2, 0.5), 2, "never below the threads");
        assert_eq!(overcommitted_vcpus(u32::MAX, 64.0), u32::MAX);
    }
}
