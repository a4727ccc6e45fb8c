//! A member's TLS: the cluster CA it holds, its own certificate (`mvirt://member/<id>`), the
//! listeners' server configs and the client config it dials other members and node agents
//! with. See `README.md` ("TLS") for the trust model.
//!
//! Files in `<data-dir>/tls/`: `ca.pem`, `ca.key` (0600), `cert.pem` (chain `[leaf, ca]`),
//! `key.pem` (0600). The CA is created at bootstrap and handed to joiners in the join response;
//! the member certificate is issued by the member itself from that CA at every start (so a
//! changed `--advertise-host` is covered) and renewed at 2/3 of its lifetime, hot-swapped
//! under the running listeners.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mvirt_common::tls::{self as ctls, CertStore, ClientAuth, ClusterCa, PeerIdentity, PeerInfo};
use tonic::transport::Channel;

use crate::app::App;
use crate::proto::node_agent_client::NodeAgentClient;
use crate::state::{ApiError, ErrorCode};

/// The TLS material of a running member.
pub struct MemberTls {
    pub ca: ClusterCa,
    pub store: CertStore,
    pub dir: PathBuf,
    pub member_id: u64,
    /// Lifetime of the certificates this member issues (its own and nodes').
    pub lifetime: Duration,
    /// DNS/IP SANs of this member's certificate.
    pub sans: Vec<String>,
    /// Trusts the cluster CA, presents the member certificate.
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTls")
            .field("ca", &self.ca)
            .field("member_id", &self.member_id)
            .finish_non_exhaustive()
    }
}

/// The SANs a member's certificate carries: the advertised host and loopback.
pub fn member_sans(advertise_host: &str) -> Vec<String> {
    let mut sans = vec![
        advertise_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ];
    sans.retain(|s| !s.is_empty());
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

/// The host part of `host:port` / `[v6]:port` / a URL.
pub fn host_of(addr: &str) -> String {
    let rest = addr.split("://").nth(1).unwrap_or(addr);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_string();
    }
    match authority.rsplit_once(':') {
        Some((h, _)) => h.to_string(),
        None => authority.to_string(),
    }
}

impl MemberTls {
    /// Saves `ca` into `<data_dir>/tls` (when not there yet), issues this member's certificate
    /// and builds the client config.
    pub fn start(
        data_dir: &Path,
        ca: ClusterCa,
        member_id: u64,
        sans: Vec<String>,
        lifetime: Duration,
    ) -> Result<Self, ctls::TlsError> {
        let dir = ctls::tls_dir(data_dir);
        if !ClusterCa::exists(&dir) {
            ca.save(&dir)?;
        }
        let issued = ca.issue(PeerIdentity::Member(member_id), &sans, lifetime)?;
        let store = CertStore::from_issued(&issued)?;
        store.save(&dir)?;
        let client = ctls::client_config(ca.cert_pem(), Some(store.clone()))?;
        Ok(Self {
            ca,
            store,
            dir,
            member_id,
            lifetime,
            sans,
            client,
        })
    }

    pub fn fingerprint(&self) -> String {
        self.ca.fingerprint()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(ctls::CA_FILE)
    }

    /// REST: server authentication only (clients authenticate with tokens).
    pub fn rest_config(&self) -> Result<Arc<rustls::ServerConfig>, ctls::TlsError> {
        ctls::server_config(&self.store, ClientAuth::None)
    }

    /// Raft: a client certificate from the cluster CA is required at the handshake.
    pub fn raft_config(&self) -> Result<Arc<rustls::ServerConfig>, ctls::TlsError> {
        ctls::server_config(&self.store, ClientAuth::Required(self.ca.cert_pem().into()))
    }

    /// NodeService: a client certificate is optional at the handshake (a node's first
    /// `Register` has none); the calls check it (see `grpc.rs`).
    pub fn grpc_config(&self) -> Result<Arc<rustls::ServerConfig>, ctls::TlsError> {
        ctls::server_config(&self.store, ClientAuth::Optional(self.ca.cert_pem().into()))
    }

    /// A reqwest client trusting the cluster CA and presenting the member certificate.
    pub fn reqwest(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::Client, reqwest::Error> {
        builder
            .use_preconfigured_tls((*self.client).clone())
            .build()
    }

    /// Renews this member's certificate at 2/3 of its lifetime, until `shutdown`.
    pub fn spawn_renewal(self: &Arc<Self>, shutdown: mvirt_common::Shutdown) {
        let me = self.clone();
        let renew = self
            .store
            .clone()
            .renew_forever(Some(self.dir.clone()), move || {
                let issued = me
                    .ca
                    .issue(PeerIdentity::Member(me.member_id), &me.sans, me.lifetime);
                async move {
                    issued
                        .map(|i| (i.cert_pem, i.key_pem))
                        .map_err(|e| e.to_string())
                }
            });
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = renew => {}
            }
        });
    }

    /// Signs a node's CSR for `mvirt://node/<node_id>`. Its DNS/IP SANs are kept only when
    /// they name the host of the node's address or console endpoint (a node cannot get a
    /// certificate for a member's name).
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        allowed_hosts: &[String],
    ) -> Result<String, ApiError> {
        let asked =
            ctls::csr_sans(csr_pem).map_err(|e| ApiError::invalid(format!("csr_pem: {e}")))?;
        let sans: Vec<String> = asked
            .into_iter()
            .filter(|s| allowed_hosts.iter().any(|h| !h.is_empty() && h == s))
            .collect();
        self.ca
            .sign_csr_with_sans(
                csr_pem,
                PeerIdentity::Node(node_id.to_string()),
                &sans,
                self.lifetime,
            )
            .map_err(|e| ApiError::invalid(format!("csr_pem: {e}")))
    }
}

/// A node agent's `NodeAgent` client whose calls carry the current trace id ([`App::node_agent`]).
pub type AgentClient = NodeAgentClient<
    tonic::service::interceptor::InterceptedService<Channel, mvirt_common::trace::Propagate>,
>;

/// The member identity of a Raft peer, if the connection presented a verified certificate.
pub fn peer_member(peer: Option<&PeerInfo>) -> Option<u64> {
    peer?.identity.as_ref()?.member_id()
}

impl App {
    /// Whether this member serves TLS (not `--insecure-plaintext`).
    pub fn tls_on(&self) -> bool {
        self.tls.is_some()
    }

    /// `https` or `http`, for URLs of the Raft listeners.
    pub fn scheme(&self) -> &'static str {
        if self.tls_on() {
            "https"
        } else {
            "http"
        }
    }

    /// A client of a node agent's `NodeAgent` endpoint (stats, host info, console, pod logs and
    /// exec), connected: over TLS (cluster CA as root, member certificate as client
    /// certificate) for `https://`; plain `http://` only when this member runs with
    /// `--insecure-plaintext`. Every call carries the trace id of the request it is made for
    /// (`x-mvirt-trace-id`, [`mvirt_common::trace::Propagate`]), so the agent's span, its calls
    /// to the local daemons and their audit entries carry it too.
    pub async fn node_agent(&self, endpoint: &str) -> Result<AgentClient, ApiError> {
        let channel = self.node_agent_channel(endpoint).await?;
        Ok(NodeAgentClient::with_interceptor(
            channel,
            mvirt_common::trace::Propagate,
        ))
    }

    async fn node_agent_channel(&self, endpoint: &str) -> Result<Channel, ApiError> {
        let unavailable = |m: String| ApiError::new(ErrorCode::Unavailable, m);
        let config = match &self.tls {
            Some(tls) if endpoint.starts_with("https://") => Some(tls.client.clone()),
            Some(_) => {
                return Err(unavailable(format!(
                    "node agent endpoint {endpoint} is not https:// (this member requires TLS)"
                )))
            }
            None => None,
        };
        ctls::grpc_connect(endpoint, config)
            .await
            .map_err(|e| unavailable(format!("node agent at {endpoint}: {e}")))
    }
}
