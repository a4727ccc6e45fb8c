//! The agent's TLS: which cluster CA it trusts, its node certificate, and renewal.
//!
//! The control plane serves NodeService over TLS with certificates from the cluster CA. The
//! agent:
//!
//! 1. trusts exactly one CA ([`resolve_ca`]): `--ca-file`, else the CA pinned earlier in
//!    `<data-dir>/tls/ca.pem`, else — with `--ca-fingerprint sha256:...` — the CA the API
//!    presents, fetched and pinned on first start only when its fingerprint matches;
//! 2. registers with a CSR for a fresh key ([`new_csr`]); the API signs it for
//!    `mvirt://node/<id>` and the agent keeps key and chain in `<data-dir>/tls/` and in a
//!    [`CertStore`] every later call presents as its client certificate ([`api_channel`]);
//! 3. renews at 2/3 of the lifetime with `RenewCertificate` ([`spawn_renewal`]); the store is
//!    swapped in place, so open streams (the spec watch) keep their connection and new
//!    connections use the new certificate;
//! 4. serves NodeAgent (console, host facts, pod relays) over TLS with the same certificate,
//!    accepting only clients with a member certificate of the cluster ([`require_member`]).
//!
//! `--insecure-plaintext` turns all of it off (plain gRPC both ways) and is logged as a
//! warning at start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mvirt_api::proto as api;
use mvirt_common::tls::{self as ctls, CertStore, PeerIdentity, PeerInfo, TlsError};
use mvirt_common::Shutdown;
use tonic::transport::Channel;

/// How the agent secures its connections (flags `--insecure-plaintext`, `--ca-file`,
/// `--ca-fingerprint`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Plain HTTP/2 to the API and on the NodeAgent listener (logged as a warning).
    pub insecure_plaintext: bool,
    /// Trust this CA (PEM file).
    pub ca_file: Option<PathBuf>,
    /// Fetch the API's CA on first start and pin it if it has this fingerprint.
    pub ca_fingerprint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeTlsError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// `<data-dir>/tls`.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    ctls::tls_dir(data_dir)
}

/// Checks the API URL against the mode: `https://` with TLS, `http://` only with
/// `--insecure-plaintext`.
pub fn check_api_url(api_url: &str, options: &TlsOptions) -> Result<(), NodeTlsError> {
    match (api_url.starts_with("https://"), options.insecure_plaintext) {
        (true, false) => Ok(()),
        (false, true) if api_url.starts_with("http://") => Ok(()),
        (true, true) => Err(NodeTlsError::Config(format!(
            "--api {api_url} is https:// but --insecure-plaintext is set: use http:// with \
             --insecure-plaintext, or drop the flag"
        ))),
        (false, false) if api_url.starts_with("http://") => Err(NodeTlsError::Config(format!(
            "--api {api_url} is plain HTTP: the control plane serves TLS (use https://), or \
             pass --insecure-plaintext if the API runs with --insecure-plaintext too"
        ))),
        _ => Err(NodeTlsError::Config(format!(
            "--api {api_url:?} must be an https:// URL"
        ))),
    }
}

/// The CA the agent trusts for the API (PEM). With `--ca-fingerprint` and nothing pinned yet
/// it fetches the CA the API presents (retrying while the API is unreachable, until
/// `shutdown`); `None` when shutdown fired first.
pub async fn resolve_ca(
    data_dir: &Path,
    api_url: &str,
    options: &TlsOptions,
    shutdown: &Shutdown,
) -> Result<Option<String>, NodeTlsError> {
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            NodeTlsError::Config(format!("cannot read --ca-file {}: {e}", path.display()))
        })?;
        let fingerprint = ctls::fingerprint_pem(&pem)
            .map_err(|e| NodeTlsError::Config(format!("--ca-file {}: {e}", path.display())))?;
        tracing::info!(ca = %path.display(), %fingerprint, "trusting the cluster CA from --ca-file");
        return Ok(Some(pem));
    }
    let wanted = options
        .ca_fingerprint
        .as_deref()
        .map(ctls::normalize_fingerprint)
        .transpose()
        .map_err(|e| NodeTlsError::Config(format!("--ca-fingerprint: {e}")))?;
    let pinned_path = tls_dir(data_dir).join(ctls::CA_FILE);
    if pinned_path.exists() {
        let pem = std::fs::read_to_string(&pinned_path).map_err(|e| {
            NodeTlsError::Config(format!("cannot read {}: {e}", pinned_path.display()))
        })?;
        let pinned = ctls::fingerprint_pem(&pem)?;
        if let Some(wanted) = &wanted {
            if *wanted != pinned {
                return Err(NodeTlsError::Config(format!(
                    "the cluster CA pinned in {} has the fingerprint {pinned}, but \
                     --ca-fingerprint is {wanted}; if the cluster was created anew, remove \
                     that file to pin the new CA",
                    pinned_path.display()
                )));
            }
        }
        tracing::info!(ca = %pinned_path.display(), fingerprint = %pinned, "trusting the pinned cluster CA");
        return Ok(Some(pem));
    }
    let Some(wanted) = wanted else {
        return Err(NodeTlsError::Config(format!(
            "no cluster CA to verify the API at {api_url} with: pass --ca-file <the cluster's \
             ca.pem> or --ca-fingerprint sha256:... (mvirt-api logs it at start-up; token \
             create shows it), or --insecure-plaintext for an API without TLS"
        )));
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        match ctls::fetch_server_ca(api_url).await {
            Ok((pem, presented)) if presented == wanted => {
                let dir = tls_dir(data_dir);
                create_private_dir(&dir)?;
                ctls::write_file(&pinned_path, &pem, 0o644)?;
                tracing::info!(
                    fingerprint = %presented,
                    ca = %pinned_path.display(),
                    "the API's CA matches --ca-fingerprint: pinned"
                );
                return Ok(Some(pem));
            }
            Ok((_, presented)) => {
                return Err(NodeTlsError::Config(format!(
                    "the API at {api_url} presents a CA with the fingerprint {presented}, not \
                     the {wanted} given with --ca-fingerprint: refusing to trust it"
                )))
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot fetch the API's CA yet; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait() => return Ok(None),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn create_private_dir(dir: &Path) -> Result<(), NodeTlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| NodeTlsError::Config(format!("cannot create {}: {e}", dir.display())))
}

/// The DNS names and addresses the node certificate asks for: the registered address, the
/// console endpoint's host, and loopback.
pub fn node_sans(address: &str, console_endpoint: &str) -> Vec<String> {
    let mut sans = vec![address.trim_matches(['[', ']']).to_string()];
    if let Ok((host, _)) = ctls::url_host_port(console_endpoint) {
        sans.push(host);
    }
    for s in ["127.0.0.1", "::1", "localhost"] {
        sans.push(s.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| !s.is_empty() && seen.insert(s.clone()));
    sans
}

/// A CSR for a fresh key: `(csr_pem, key_pem)`.
pub fn new_csr(name: &str, sans: &[String]) -> Result<(String, String), NodeTlsError> {
    Ok(ctls::generate_csr(name, sans)?)
}

/// Keeps a certificate the API issued for the key: swaps it into `store` (or creates the
/// store) and writes `cert.pem`/`key.pem` into `<data-dir>/tls/`. Checks that it names this
/// node and chains to the trusted CA.
pub fn keep_certificate(
    data_dir: &Path,
    store: &mut Option<CertStore>,
    node_id: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), NodeTlsError> {
    let fresh = CertStore::from_pem(cert_pem, key_pem)?;
    if fresh.identity() != Some(PeerIdentity::Node(node_id.to_string())) {
        return Err(NodeTlsError::Config(format!(
            "the API issued a certificate for {:?}, not for node {node_id}",
            fresh.identity()
        )));
    }
    let ca = ctls::parse_certs(ca_pem)?;
    let chain = ctls::parse_certs(cert_pem)?;
    let ca_fp = ctls::fingerprint(&ca[0]);
    if !chain.iter().skip(1).any(|c| ctls::fingerprint(c) == ca_fp) {
        return Err(NodeTlsError::Config(
            "the API issued a certificate that does not chain to the trusted cluster CA".into(),
        ));
    }
    match store {
        Some(store) => store.replace(cert_pem, key_pem)?,
        None => *store = Some(fresh),
    }
    let store = store.as_ref().expect("set above");
    store.save(&tls_dir(data_dir))?;
    let info = store.info();
    tracing::info!(
        node = %node_id,
        serial = %info.serial,
        not_after = ?info.not_after,
        "node certificate stored"
    );
    Ok(())
}

/// A lazily connecting channel to the API: TLS against `ca_pem`, presenting `store`'s current
/// certificate when given; plain when `ca_pem` is `None` (`--insecure-plaintext`).
pub fn api_channel(
    api_url: &str,
    ca_pem: Option<&str>,
    store: Option<CertStore>,
) -> Result<Channel, NodeTlsError> {
    let config = match ca_pem {
        Some(ca) => Some(ctls::client_config(ca, store)?),
        None => None,
    };
    Ok(ctls::grpc_channel(api_url, config)?)
}

/// Renews the node certificate at 2/3 of its lifetime through `RenewCertificate` (with the
/// current certificate as the client certificate), forever: the store is swapped in place and
/// saved; a failure is retried (see [`CertStore::renew_forever`]).
pub fn spawn_renewal(
    store: CertStore,
    data_dir: PathBuf,
    node_id: String,
    name: String,
    sans: Vec<String>,
    client: crate::daemons::ApiClient,
    shutdown: Shutdown,
) {
    let renew = store
        .clone()
        .renew_forever(Some(tls_dir(&data_dir)), move || {
            let mut client = client.clone();
            let node_id = node_id.clone();
            let name = name.clone();
            let sans = sans.clone();
            async move {
                let (csr_pem, key_pem) = new_csr(&name, &sans).map_err(|e| e.to_string())?;
                let response = client
                    .renew_certificate(api::RenewCertificateRequest {
                        node_id: node_id.clone(),
                        csr_pem,
                    })
                    .await
                    .map_err(|status| format!("RenewCertificate: {status}"))?
                    .into_inner();
                let fresh = CertStore::from_pem(&response.certificate_pem, &key_pem)
                    .map_err(|e| e.to_string())?;
                if fresh.identity() != Some(PeerIdentity::Node(node_id.clone())) {
                    return Err(format!(
                        "the renewed certificate names {:?}, not node {node_id}",
                        fresh.identity()
                    ));
                }
                Ok((response.certificate_pem, key_pem))
            }
        });
    tokio::spawn(async move {
        tokio::select! {
            _ = renew => {}
            _ = shutdown.wait() => {}
        }
    });
}

/// The NodeAgent listener's TLS: the node certificate, and a client certificate of the
/// cluster CA required at the handshake (the member check is [`require_member`]).
pub fn agent_server_config(
    store: &CertStore,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, NodeTlsError> {
    Ok(ctls::server_config(
        store,
        ctls::ClientAuth::Required(ca_pem.to_string()),
    )?)
}

/// Lets only control-plane members call NodeAgent over TLS: the connection's verified client
/// certificate must name `mvirt://member/<id>` (a node's certificate, or none, is refused).
/// With `tls` false (`--insecure-plaintext`) there is no certificate to check; the console
/// secret is checked in addition either way.
pub fn require_member<T>(request: &tonic::Request<T>, tls: bool) -> Result<(), tonic::Status> {
    if !tls {
        return Ok(());
    }
    match request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.identity.as_ref())
    {
        Some(PeerIdentity::Member(_)) => Ok(()),
        Some(other) => Err(tonic::Status::permission_denied(format!(
            "NodeAgent answers only control-plane members; the client certificate names {other}"
        ))),
        None => Err(tonic::Status::unauthenticated(
            "NodeAgent needs a member client certificate of the cluster",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_must_match_the_mode() {
        let tls = TlsOptions::default();
        let plain = TlsOptions {
            insecure_plaintext: true,
            ..Default::default()
        };
        assert!(check_api_url("https://10.0.0.1:50056", &tls).is_ok());
        assert!(check_api_url("http://10.0.0.1:50056", &plain).is_ok());
        let err = check_api_url("http://10.0.0.1:50056", &tls).unwrap_err();
        assert!(err.to_string().contains("--insecure-plaintext"), "{err}");
        assert!(check_api_url("https://10.0.0.1:50056", &plain).is_err());
        assert!(check_api_url("10.0.0.1:50056", &tls).is_err());
    }

    #[test]
    fn sans_cover_the_address_the_console_host_and_loopback_once() {
        assert_eq!(
            node_sans("10.0.0.5", "https://node-a.example:50057"),
            vec![
                "10.0.0.5",
                "node-a.example",
                "127.0.0.1",
                "::1",
                "localhost"
            ]
        );
        assert_eq!(
            node_sans("127.0.0.1", ""),
            vec!["127.0.0.1", "::1", "localhost"]
        );
    }

    #[tokio::test]
    async fn the_ca_comes_from_the_file_or_the_pin_and_a_wrong_fingerprint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ctls::ClusterCa::generate().unwrap();
        let other = ctls::ClusterCa::generate().unwrap();
        let shutdown = Shutdown::new();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca.cert_pem()).unwrap();
        let with_file = TlsOptions {
            ca_file: Some(file),
            ..Default::default()
        };
        let data = dir.path().join("data");
        let got = resolve_ca(&data, "https://127.0.0.1:1", &with_file, &shutdown)
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(ca.cert_pem()));
        // Nothing pinned and no flag: a clear error.
        let err = resolve_ca(
            &data,
            "https://127.0.0.1:1",
            &TlsOptions::default(),
            &shutdown,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("--ca-fingerprint"), "{err}");
        // A pinned CA is used; a fingerprint that disagrees with it is refused naming both.
        std::fs::create_dir_all(tls_dir(&data)).unwrap();
        std::fs::write(tls_dir(&data).join(ctls::CA_FILE), ca.cert_pem()).unwrap();
        let pinned = TlsOptions {
            ca_fingerprint: Some(ca.fingerprint()),
            ..Default::default()
        };
        let got = resolve_ca(&data, "https://127.0.0.1:1", &pinned, &shutdown)
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(ca.cert_pem()));
        let wrong = TlsOptions {
            ca_fingerprint: Some(other.fingerprint()),
            ..Default::default()
        };
        let err = resolve_ca(&data, "https://127.0.0.1:1", &wrong, &shutdown)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&ca.fingerprint()) && err.contains(&other.fingerprint()),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_for_another_node_or_ca_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ctls::ClusterCa::generate().unwrap();
        let other = ctls::ClusterCa::generate().unwrap();
        let sans = node_sans("127.0.0.1", "");
        let (csr, key) = new_csr("node-a", &sans).unwrap();
        let hour = Duration::from_secs(3600);
        let mut store = None;
        let for_b = ca
            .sign_csr(&csr, PeerIdentity::Node("b".into()), hour)
            .unwrap();
        assert!(
            keep_certificate(dir.path(), &mut store, "a", ca.cert_pem(), &for_b, &key).is_err()
        );
        let foreign = other
            .sign_csr(&csr, PeerIdentity::Node("a".into()), hour)
            .unwrap();
        assert!(
            keep_certificate(dir.path(), &mut store, "a", ca.cert_pem(), &foreign, &key).is_err()
        );
        assert!(store.is_none());
        let good = ca
            .sign_csr(&csr, PeerIdentity::Node("a".into()), hour)
            .unwrap();
        keep_certificate(dir.path(), &mut store, "a", ca.cert_pem(), &good, &key).unwrap();
        let kept = CertStore::load(&tls_dir(dir.path())).unwrap();
        assert_eq!(kept.identity(), Some(PeerIdentity::Node("a".into())));
        // A renewal swaps the same store in place.
        let (csr2, key2) = new_csr("node-a", &sans).unwrap();
        let next = ca
            .sign_csr(&csr2, PeerIdentity::Node("a".into()), hour)
            .unwrap();
        let before = store.as_ref().unwrap().info().serial;
        let handle = store.clone().unwrap();
        keep_certificate(dir.path(), &mut store, "a", ca.cert_pem(), &next, &key2).unwrap();
        assert_ne!(handle.info().serial, before, "the shared store was swapped");
    }
}
