//! Starting a member: bind the three listeners, establish the member identity (bootstrap a
//! one-member cluster on an empty data dir, or join an existing cluster with a join token),
//! open the SQLite stores, start Raft, and serve REST, NodeService and the Raft API.
//!
//! Identity lives in `<data-dir>/member.json` (member id + cluster secret). Once it exists the
//! member restarts from its data dir and `--join` is ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::app::{hash_secret, new_id, now, random_secret, App};
use crate::model::{ApiToken, Member, Role};
use crate::raft::{self, HttpNetworkFactory, LogStore, Raft, Shared, StateMachine};
use crate::rest::{self, JoinResponse};
use crate::scheduler::Strategy;
use crate::state::{Command, State};

/// Everything a member needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub raft_listen: SocketAddr,
    /// Host other members and clients reach this member on (default: the listen IP, or
    /// 127.0.0.1 when listening on every address).
    pub advertise_host: Option<String>,
    pub data_dir: PathBuf,
    /// REST URL of an existing member to join (first start only).
    pub join: Option<String>,
    pub join_token: Option<String>,
    /// A file holding the join token (read only when joining: it may be gone afterwards).
    pub join_token_file: Option<PathBuf>,
    pub node_offline_after: Duration,
    /// HA: a node silent for this long (the agents' fencing time + a margin) is lost and its
    /// HA VMs restart elsewhere (`crate::ha`).
    pub ha_lost_after: Duration,
    pub strategy: Strategy,
    /// mvirt-log gRPC endpoint (empty: audit entries go to tracing only).
    pub log_endpoint: String,
    /// Build a snapshot (and purge the log before it) every this many applied entries.
    pub snapshot_every: u64,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_retention: Duration,
    /// The built web UI served at `/` (`None`: `/` says that no UI is configured).
    pub ui_dir: Option<PathBuf>,
    /// Plain HTTP/gRPC on every listener (no TLS). Logged as a warning.
    pub insecure_plaintext: bool,
    /// Lifetime of the certificates this member issues (its own, joiners', nodes'); renewed
    /// at 2/3 of it.
    pub cert_lifetime: Duration,
    /// `--join`: the CA fingerprint (`sha256:<hex>`) the member being joined must present.
    pub join_ca_fingerprint: Option<String>,
    /// `--join`: a file with the CA certificate the member being joined must be signed by.
    pub join_ca_file: Option<PathBuf>,
}

impl ServerConfig {
    /// A config for tests: every listener on `ip` with port 0, data in `data_dir`.
    pub fn for_tests(ip: std::net::IpAddr, data_dir: &Path) -> Self {
        Self {
            listen: SocketAddr::new(ip, 0),
            grpc_listen: SocketAddr::new(ip, 0),
            raft_listen: SocketAddr::new(ip, 0),
            advertise_host: None,
            data_dir: data_dir.to_path_buf(),
            join: None,
            join_token: None,
            join_token_file: None,
            node_offline_after: Duration::from_secs(15),
            ha_lost_after: crate::ha::DEFAULT_LOST_AFTER,
            strategy: Strategy::Spread,
            log_endpoint: String::new(),
            snapshot_every: 50_000,
            idempotency_retention: crate::app::DEFAULT_IDEMPOTENCY_RETENTION,
            ui_dir: None,
            insecure_plaintext: false,
            cert_lifetime: mvirt_common::tls::DEFAULT_LEAF_LIFETIME,
            join_ca_fingerprint: None,
            join_ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen")]
    Bind(#[from] mvirt_common::grpc::ServeError),
    #[error("data directory {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt member.json")]
    Identity(#[source] serde_json::Error),
    #[error("cannot open the store")]
    Store(#[from] crate::store::StoreError),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("--join needs --token or --token-file")]
    JoinWithoutToken,
    #[error("joining the cluster at {url} failed: {message}")]
    Join { url: String, message: String },
    #[error("TLS: {0}")]
    Tls(#[from] mvirt_common::tls::TlsError),
    #[error("{0}")]
    Config(String),
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The persisted identity of this member.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    member_id: u64,
    cluster_secret: String,
}

/// A started member.
pub struct Running {
    pub rest_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub app: Arc<App>,
    pub data_dir: PathBuf,
    shutdown: mvirt_common::Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    fn scheme(&self) -> &'static str {
        self.app.scheme()
    }

    /// `https://<rest addr>` (`http://` with `--insecure-plaintext`).
    pub fn api_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.rest_addr)
    }

    /// `https://<NodeService addr>` (`http://` with `--insecure-plaintext`).
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc_addr)
    }

    /// The cluster CA certificate (PEM); `None` with `--insecure-plaintext`.
    pub fn ca_pem(&self) -> Option<String> {
        self.app.tls.as_ref().map(|t| t.ca.cert_pem().to_string())
    }

    /// `<data-dir>/tls/ca.pem` (exists unless `--insecure-plaintext`).
    pub fn ca_file(&self) -> PathBuf {
        mvirt_common::tls::tls_dir(&self.data_dir).join(mvirt_common::tls::CA_FILE)
    }

    /// The cluster CA's fingerprint (`sha256:<hex>`); `None` with `--insecure-plaintext`.
    pub fn ca_fingerprint(&self) -> Option<String> {
        self.app.tls.as_ref().map(|t| t.fingerprint())
    }

    /// The serial (hex) of the certificate this member presents now.
    pub fn cert_serial(&self) -> Option<String> {
        self.app.tls.as_ref().map(|t| t.store.info().serial)
    }

    /// The admin token written at bootstrap (only on the bootstrap member).
    pub fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join(ADMIN_TOKEN_FILE))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Resolves when the shutdown signal fires and the servers have stopped.
    pub async fn wait(self) {
        self.shutdown.wait().await;
        self.stop().await;
    }

    /// Stops everything: servers drain, Raft shuts down.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.app.raft.shutdown().await;
        for t in self.tasks {
            // Long-lived streams (SSE, watches) end with the signal; do not wait forever.
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.app.audit.flush().await;
    }
}

/// How long open connections may finish after shutdown before they are dropped.
const DRAIN: Duration = Duration::from_secs(3);

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The admin token before the cluster has committed it.
const ADMIN_TOKEN_PENDING_FILE: &str = "admin.token.pending";

/// Makes sure the cluster knows an admin token with this secret: proposes it until a leader
/// accepts it (or shutdown). Idempotent: nothing is proposed when the hash is already known.
async fn register_admin_token(app: &Arc<App>, secret: &str, shutdown: &mvirt_common::Shutdown) {
    let hash = hash_secret(secret);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        if app.shared.read().tokens.values().any(|t| t.hash == hash) {
            return;
        }
        let token = ApiToken {
            id: new_id(),
            name: format!("admin-{}", &hash[..8]),
            role: Role::Admin,
            hash: hash.clone(),
            created_at: now(),
            revision: 0,
            projects: Vec::new(),
            node_id: None,
        };
        match app.submit(Command::CreateToken { token }, None).await {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e.message, "admin token not registered yet; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
const IDENTITY_FILE: &str = "member.json";
const DB_FILE: &str = "mvirt-api.db";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `contents` to `path` atomically with mode 0600.
fn write_private(path: &Path, contents: &str) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    // The name is durable only once the directory is synced (found by tests/powercut.rs).
    mvirt_common::durable::sync_parent(path).map_err(io_err(path))?;
    Ok(())
}

fn advertised(host: &Option<String>, addr: SocketAddr) -> String {
    let host = match host {
        Some(h) => h.clone(),
        None if addr.ip().is_unspecified() => "127.0.0.1".to_string(),
        None => addr.ip().to_string(),
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    }
}

/// The client a joiner reaches the member it joins with, and the CA it pinned (TLS): from
/// `--ca-file`, or fetched from the member and compared with `--ca-fingerprint`.
async fn join_client(
    config: &ServerConfig,
    url: &str,
) -> Result<(reqwest::Client, Option<String>), ServerError> {
    let err = |message: String| ServerError::Join {
        url: url.to_string(),
        message,
    };
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if url.starts_with("http://") {
        if !config.insecure_plaintext {
            return Err(ServerError::Config(format!(
                "--join {url}: this member serves TLS, join the cluster's https:// URL (plain http:// only with --insecure-plaintext on every member)"
            )));
        }
        return Ok((builder.build().map_err(|e| err(e.to_string()))?, None));
    }
    if !url.starts_with("https://") {
        return Err(ServerError::Config(format!(
            "--join {url}: not an https:// URL"
        )));
    }
    if config.insecure_plaintext {
        return Err(ServerError::Config(format!(
            "--join {url}: a member with --insecure-plaintext cannot join a TLS cluster"
        )));
    }
    let pinned = config
        .join_ca_fingerprint
        .as_deref()
        .map(mvirt_common::tls::normalize_fingerprint)
        .transpose()?;
    let ca_pem = match (&config.join_ca_file, &pinned) {
        (Some(file), _) => {
            std::fs::read_to_string(file).map_err(|e| ServerError::DataDir {
                path: file.display().to_string(),
                source: e,
            })?
        }
        (None, Some(_)) => mvirt_common::tls::fetch_server_ca(url).await?.0,
        (None, None) => {
            return Err(ServerError::Config(
                "joining over TLS needs --ca-fingerprint sha256:... (shown by the join-token response) or --ca-file <ca.pem>".into(),
            ))
        }
    };
    let fingerprint = mvirt_common::tls::fingerprint_pem(&ca_pem)?;
    if let Some(want) = &pinned {
        if &fingerprint != want {
            return Err(err(format!(
                "the member presents CA {fingerprint}, not the pinned {want}"
            )));
        }
    }
    let tls = mvirt_common::tls::client_config(&ca_pem, None)?;
    let client = builder
        .use_preconfigured_tls((*tls).clone())
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok((client, Some(ca_pem)))
}

async fn join_cluster(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    me: &Member,
) -> Result<JoinResponse, ServerError> {
    let err = |message: String| ServerError::Join {
        url: url.to_string(),
        message,
    };
    let resp = client
        .post(format!(
            "{}/v1/controlplane/join",
            url.trim_end_matches('/')
        ))
        .json(
            &serde_json::json!({"token": token, "api_url": me.api_url, "raft_addr": me.raft_addr}),
        )
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| err(e.to_string()))?;
    if !status.is_success() {
        return Err(err(format!("{status}: {body}")));
    }
    serde_json::from_str(&body).map_err(|e| err(e.to_string()))
}

/// Starts a member. Returns once all listeners are bound and Raft is running.
pub async fn start(
    config: ServerConfig,
    shutdown: mvirt_common::Shutdown,
) -> Result<Running, ServerError> {
    mvirt_common::durable::create_dir_all(&config.data_dir, 0o755)
        .map_err(io_err(&config.data_dir))?;
    let rest_listener = mvirt_common::grpc::bind(config.listen).await?;
    let grpc_listener = mvirt_common::grpc::bind(config.grpc_listen).await?;
    let raft_listener = mvirt_common::grpc::bind(config.raft_listen).await?;
    let local = |l: &tokio::net::TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let rest_addr = local(&rest_listener, config.listen);
    let grpc_addr = local(&grpc_listener, config.grpc_listen);
    let raft_addr = local(&raft_listener, config.raft_listen);
    let scheme = if config.insecure_plaintext {
        "http"
    } else {
        "https"
    };
    let me = Member {
        api_url: format!(
            "{scheme}://{}",
            advertised(&config.advertise_host, rest_addr)
        ),
        raft_addr: advertised(&config.advertise_host, raft_addr),
    };
    let tls_dir = mvirt_common::tls::tls_dir(&config.data_dir);
    let mut joined_ca = None;

    let identity_path = config.data_dir.join(IDENTITY_FILE);
    // A data dir prepared by `mvirt-api restore` becomes a one-member cluster of this member.
    let restored = crate::backup::finish_restore(&config.data_dir, &me)
        .map_err(|e| ServerError::Config(format!("finishing the restore: {}", error_chain(&e))))?;
    let (identity, bootstrap) = if identity_path.exists() {
        let raw = std::fs::read_to_string(&identity_path).map_err(io_err(&identity_path))?;
        (
            serde_json::from_str::<Identity>(&raw).map_err(ServerError::Identity)?,
            false,
        )
    } else if let Some(member_id) = restored {
        let cluster_secret = random_secret();
        (
            Identity {
                member_id,
                cluster_secret,
            },
            false,
        )
    } else if let Some(url) = &config.join {
        let token = match (&config.join_token, &config.join_token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(file)) => {
                let raw = std::fs::read_to_string(file).map_err(|e| ServerError::DataDir {
                    path: file.display().to_string(),
                    source: e,
                })?;
                let token = raw.trim();
                if token.is_empty() {
                    return Err(ServerError::Config(format!(
                        "--token-file {}: the file is empty (expected the join token)",
                        file.display()
                    )));
                }
                token.to_string()
            }
            (None, None) => return Err(ServerError::JoinWithoutToken),
        };
        let token = token.as_str();
        let (client, pinned) = join_client(&config, url).await?;
        let joined = join_cluster(&client, url, token, &me).await?;
        if let Some(pinned) = pinned {
            // The CA handed over must be the one this member pinned.
            let (Some(ca_pem), Some(ca_key)) = (&joined.ca_pem, &joined.ca_key_pem) else {
                return Err(ServerError::Join {
                    url: url.clone(),
                    message: "the join response carries no cluster CA".into(),
                });
            };
            let ca = mvirt_common::tls::ClusterCa::from_pem(ca_pem, ca_key)?;
            if ca.fingerprint() != mvirt_common::tls::fingerprint_pem(&pinned)? {
                return Err(ServerError::Join {
                    url: url.clone(),
                    message: "the join response carries another CA than the member presents".into(),
                });
            }
            ca.save(&tls_dir)?;
            if let (Some(cert), Some(key)) = (&joined.cert_pem, &joined.key_pem) {
                mvirt_common::tls::CertStore::from_pem(cert, key)?.save(&tls_dir)?;
            }
            joined_ca = Some(ca);
        }
        tracing::info!(member_id = joined.member_id, %url, "joined the cluster");
        (
            Identity {
                member_id: joined.member_id,
                cluster_secret: joined.cluster_secret,
            },
            false,
        )
    } else {
        (
            Identity {
                member_id: 1,
                cluster_secret: random_secret(),
            },
            true,
        )
    };
    if !identity_path.exists() {
        let json = serde_json::to_string(&identity).map_err(ServerError::Identity)?;
        write_private(&identity_path, &json)?;
    }
    if restored.is_some() {
        crate::backup::restore_done(&config.data_dir)
            .map_err(|e| ServerError::Config(error_chain(&e)))?;
    }

    let db_path = config.data_dir.join(DB_FILE);
    let (applied, _) = watch::channel(0u64);
    let (events, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared {
        state: std::sync::RwLock::new(State::initial()),
        applied,
        events,
        db_path: db_path.clone(),
        waiters: Default::default(),
    });
    let log_store = LogStore::open(&db_path)?;
    let state_machine = StateMachine::open(shared.clone())?;
    // TLS: the cluster CA (created at bootstrap, handed over at a join, else from the data
    // dir) and this member's certificate, issued now for the current advertise host.
    let tls = if config.insecure_plaintext {
        tracing::warn!(
            "--insecure-plaintext: REST, NodeService and Raft listen WITHOUT TLS; tokens, the cluster secret and all state cross the network in clear text"
        );
        None
    } else {
        let ca = match joined_ca {
            Some(ca) => ca,
            None if mvirt_common::tls::ClusterCa::exists(&tls_dir) => {
                mvirt_common::tls::ClusterCa::load(&tls_dir)?
            }
            None if bootstrap => {
                let ca = mvirt_common::tls::ClusterCa::generate()?;
                ca.save(&tls_dir)?;
                tracing::info!(fingerprint = %ca.fingerprint(), "created the cluster CA");
                ca
            }
            None => {
                return Err(ServerError::Config(format!(
                    "{} holds no cluster CA: this member ran with --insecure-plaintext (a cluster cannot switch to TLS in place)",
                    tls_dir.display()
                )))
            }
        };
        let host = crate::tls::host_of(&advertised(&config.advertise_host, rest_addr));
        Some(Arc::new(crate::tls::MemberTls::start(
            &config.data_dir,
            ca,
            identity.member_id,
            crate::tls::member_sans(&host),
            config.cert_lifetime,
        )?))
    };
    let raft_client = reqwest::Client::builder().connect_timeout(Duration::from_millis(500));
    let network = HttpNetworkFactory {
        client: match &tls {
            Some(tls) => tls.reqwest(raft_client),
            None => raft_client.build(),
        }
        .map_err(|e| ServerError::Raft(e.to_string()))?,
        secret: Arc::new(identity.cluster_secret.clone()),
        scheme,
    };
    let raft_config = raft::config(config.snapshot_every)
        .validate()
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let raft = Raft::new(
        identity.member_id,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| ServerError::Raft(e.to_string()))?;

    let audit = mvirt_log::create_audit_logger(&config.log_endpoint, "mvirt-api");
    let mut app = App::new(
        raft.clone(),
        shared,
        identity.member_id,
        me.clone(),
        identity.cluster_secret.clone(),
        config.data_dir.clone(),
        config.node_offline_after,
        config.strategy,
        audit,
        config.log_endpoint.clone(),
    );
    app.idempotency_retention = config.idempotency_retention;
    app.ha_lost_after = config.ha_lost_after;
    if let Some(tls) = &tls {
        // Forwards to the leader (Raft listener, REST) go over TLS with the member certificate.
        app.http = tls
            .reqwest(reqwest::Client::builder().connect_timeout(Duration::from_secs(2)))
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        tls.spawn_renewal(shutdown.clone());
    }
    app.tls = tls.clone();
    let app = Arc::new(app);
    crate::metrics::watch(&app, &shutdown);

    let mut tasks = Vec::new();
    // Server configs: REST server-auth only; Raft requires a member certificate; NodeService
    // takes an optional client certificate (checked per call).
    let (rest_tls, raft_tls, grpc_tls) = match &tls {
        Some(t) => (
            Some(t.rest_config()?),
            Some(t.raft_config()?),
            Some(t.grpc_config()?),
        ),
        None => (None, None, None),
    };
    let raft_router = crate::raftapi::router(app.clone());
    // Accepted connections get TCP_NODELAY (small request/response messages) in serve_http.
    tasks.push(tokio::spawn(mvirt_common::tls::serve_http(
        raft_listener,
        raft_tls,
        raft_router,
        shutdown.clone(),
        DRAIN,
    )));

    if bootstrap {
        let is_init = raft
            .is_initialized()
            .await
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        if !is_init {
            let mut members = BTreeMap::new();
            members.insert(identity.member_id, me.clone());
            raft.initialize(members)
                .await
                .map_err(|e| ServerError::Raft(e.to_string()))?;
            tracing::info!(
                member_id = identity.member_id,
                "bootstrapped a one-member cluster"
            );
        }
    }
    if bootstrap {
        // The token file appears only once the cluster knows the token, so whoever reads it
        // can use it at once: it is first written under a temporary name (kept across a crash,
        // so the same secret is registered), and renamed after the commit.
        let token_path = config.data_dir.join(ADMIN_TOKEN_FILE);
        if !token_path.exists() {
            let pending = config.data_dir.join(ADMIN_TOKEN_PENDING_FILE);
            if !pending.exists() {
                write_private(&pending, &format!("{}\n", random_secret()))?;
            }
            let secret = std::fs::read_to_string(&pending).map_err(io_err(&pending))?;
            register_admin_token(&app, secret.trim(), &shutdown).await;
            if shutdown.is_triggered() {
                return Err(ServerError::Raft(
                    "shut down before the admin token was registered".into(),
                ));
            }
            std::fs::rename(&pending, &token_path).map_err(io_err(&token_path))?;
            mvirt_common::durable::sync_parent(&token_path).map_err(io_err(&token_path))?;
        }
        tracing::info!(path = %token_path.display(), "admin API token written (mode 0600)");
        println!("mvirt-api: admin API token in {}", token_path.display());
    }

    // A bootstrap member's token file must be known to the cluster (also after a restore from a
    // backup of the data dir); retried until a leader accepts it.
    let ensure = app.clone();
    let sd = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let path = ensure.data_dir.join(ADMIN_TOKEN_FILE);
        if let Ok(secret) = std::fs::read_to_string(&path) {
            register_admin_token(&ensure, secret.trim(), &sd).await;
        }
    }));

    let rest_router = rest::ui::with_ui(rest::router(app.clone()), config.ui_dir.as_deref());
    // The peer address reaches handlers as `ConnectInfo` (the join rate limit is per source
    // address).
    let rest_service = tower::ServiceBuilder::new()
        .map_request(
            |mut req: axum::http::Request<mvirt_common::tls::RequestBody>| {
                if let Some(peer) = req.extensions().get::<mvirt_common::tls::PeerInfo>() {
                    let addr = peer.remote_addr;
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo::<SocketAddr>(addr));
                }
                req
            },
        )
        .service(rest_router);
    tasks.push(tokio::spawn(mvirt_common::tls::serve_http(
        rest_listener,
        rest_tls,
        rest_service,
        shutdown.clone(),
        DRAIN,
    )));

    let grpc = mvirt_common::grpc::GrpcServer::for_daemon("mvirt-api")
        .add_service(crate::proto::node_service_server::NodeServiceServer::new(
            crate::grpc::NodeServiceImpl::new(app.clone(), shutdown.clone()),
        ))
        .await;
    let sd = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = grpc.serve_tls(grpc_listener, grpc_tls, sd).await {
            tracing::error!(error = %e, "NodeService listener failed");
        }
    }));

    tasks.push(tokio::spawn(app.clone().run_leader_loop(shutdown.clone())));

    let ca_fingerprint = tls.as_ref().map(|t| t.fingerprint());
    tracing::info!(
        member_id = identity.member_id,
        %rest_addr,
        %grpc_addr,
        %raft_addr,
        tls = tls.is_some(),
        ca_fingerprint = ca_fingerprint.as_deref().unwrap_or("none (plaintext)"),
        "mvirt-api member started"
    );
    Ok(Running {
        rest_addr,
        grpc_addr,
        raft_addr,
        app,
        data_dir: config.data_dir,
        shutdown,
        tasks,
    })
}
