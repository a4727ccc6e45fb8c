//! TLS for the control plane: the cluster CA, member and node certificates, TLS listeners for
//! axum (REST, Raft) and tonic (NodeService, NodeAgent), and client configurations.
//!
//! Trust model (see `mvirt-api/README.md`): the first member creates a cluster CA
//! ([`ClusterCa::generate`], ECDSA P-256, 10 years) in `<data-dir>/tls/`; every member holds
//! it and issues leaf certificates. A leaf names its holder as a SAN URI
//! (`mvirt://member/<id>` or `mvirt://node/<id>`, read back with [`peer_identity`]) plus
//! DNS/IP SANs for the addresses it serves on. Servers send the chain `[leaf, ca]`, so a client
//! can learn the CA from the chain and pin it by its [`fingerprint`] ([`fetch_server_ca`],
//! trust on first use).
//!
//! A request flows: [`CertStore`] holds the current leaf (swapped by a renewal without
//! restarting listeners) → [`server_config`] / [`client_config`] build rustls configs that
//! resolve the certificate from the store at every handshake → [`TlsIncoming`] (tonic) or
//! [`serve_http`] (axum/hyper) accept TCP, run the handshake, and hand the peer's
//! certificate to handlers as [`PeerInfo`] (a request extension).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// `<data-dir>/tls`.
pub const TLS_DIR: &str = "tls";
/// The cluster CA certificate (PEM).
pub const CA_FILE: &str = "ca.pem";
/// The cluster CA private key (PEM, mode 0600; members only).
pub const CA_KEY_FILE: &str = "ca.key";
/// The holder's certificate chain `[leaf, ca]` (PEM).
pub const CERT_FILE: &str = "cert.pem";
/// The holder's private key (PEM, mode 0600).
pub const KEY_FILE: &str = "key.pem";

/// The CA's lifetime.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// A leaf certificate's default lifetime.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const MEMBER_PREFIX: &str = "mvirt://member/";
const NODE_PREFIX: &str = "mvirt://node/";

/// `<data_dir>/tls`.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("connecting to {addr}: {message}")]
    Connect { addr: String, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    Member(u64),
    Node(String),
}

impl PeerIdentity {
    /// The SAN URI: `mvirt://member/<id>` or `mvirt://node/<id>`.
    pub fn uri(&self) -> String {
        match self {
            PeerIdentity::Member(id) => format!("{MEMBER_PREFIX}{id}"),
            PeerIdentity::Node(id) => format!("{NODE_PREFIX}{id}"),
        }
    }

    /// Parses a SAN URI written by [`PeerIdentity::uri`].
    pub fn from_uri(uri: &str) -> Option<Self> {
        if let Some(id) = uri.strip_prefix(MEMBER_PREFIX) {
            return id.parse().ok().map(PeerIdentity::Member);
        }
        let id = uri.strip_prefix(NODE_PREFIX)?;
        let valid = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        valid.then(|| PeerIdentity::Node(id.to_string()))
    }

    pub fn member_id(&self) -> Option<u64> {
        match self {
            PeerIdentity::Member(id) => Some(*id),
            PeerIdentity::Node(_) => None,
        }
    }

    pub fn node_id(&self) -> Option<&str> {
        match self {
            PeerIdentity::Node(id) => Some(id),
            PeerIdentity::Member(_) => None,
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The identity a certificate carries as an `mvirt://` SAN URI (none for other certificates).
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => PeerIdentity::from_uri(uri),
        _ => None,
    })
}

/// `sha256:` + lowercase hex of SHA-256 over a certificate's DER.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The fingerprint of the first certificate in a PEM.
pub fn fingerprint_pem(pem: &str) -> Result<String, TlsError> {
    let certs = parse_certs(pem)?;
    Ok(fingerprint(&certs[0]))
}

/// Normalises a fingerprint as users type it (`sha256:AB:CD...`, with or without colons or
/// the prefix, any case) to the [`fingerprint`] form.
pub fn normalize_fingerprint(input: &str) -> Result<String, TlsError> {
    let s = input.trim();
    let s = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TlsError::Invalid(format!(
            "{input:?} is not a CA fingerprint (expected sha256: followed by 64 hex digits)"
        )));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Every certificate in a PEM text.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid("no certificate in the PEM".into()));
    }
    Ok(certs)
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("bad private key PEM: {e}")))
}

/// PEM text of one DER certificate.
pub fn cert_pem_from_der(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Validity and serial of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Lowercase hex of the serial number.
    pub serial: String,
    pub identity: Option<PeerIdentity>,
}

/// Reads validity, serial and identity from a certificate.
pub fn cert_info(cert: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::Invalid(format!("bad certificate: {e}")))?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok(CertInfo {
        not_before: at(parsed.validity().not_before.timestamp()),
        not_after: at(parsed.validity().not_after.timestamp()),
        serial: parsed
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        identity: peer_identity(cert),
    })
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator works");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// How far back a leaf's `not_before` is set (clock skew between hosts): a tenth of the
/// lifetime, at most five minutes.
fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

fn leaf_params(
    identity: &PeerIdentity,
    sans: &[String],
    lifetime: Duration,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.uri());
    params.distinguished_name = dn;
    let mut names = vec![SanType::URI(identity.uri().try_into()?)];
    for san in sans {
        let san = san.trim_start_matches('[').trim_end_matches(']');
        names.push(match san.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                san.to_string()
                    .try_into()
                    .map_err(|_| TlsError::Invalid(format!("{san:?} is not a DNS name")))?,
            ),
        });
    }
    names.dedup();
    params.subject_alt_names = names;
    let now = SystemTime::now();
    params.not_before = (now - backdate(lifetime)).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A freshly issued certificate and its private key (both PEM). `cert_pem` is the chain
/// `[leaf, ca]`.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA: its certificate and signing key.
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA: ECDSA P-256, valid for [`CA_LIFETIME`].
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mvirt cluster CA");
        dn.push(DnType::OrganizationName, "mvirt");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its certificate and key PEM (checks that they belong together).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let cert_der = parse_certs(cert_pem)?.remove(0);
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| TlsError::Invalid(format!("bad CA key: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| TlsError::Invalid(format!("bad CA certificate: {e}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(TlsError::Invalid(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        if !parsed.is_ca() {
            return Err(TlsError::Invalid("the certificate is not a CA".into()));
        }
        Ok(Self {
            cert_pem: cert_pem_from_der(&cert_der),
            key_pem: key_pem.to_string(),
            cert_der,
        })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert = dir.join(CA_FILE);
        let key = dir.join(CA_KEY_FILE);
        let cert_pem = std::fs::read_to_string(&cert).map_err(io_error(&cert))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io_error(&key))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Whether `dir` holds a CA (`ca.pem` and `ca.key`).
    pub fn exists(dir: &Path) -> bool {
        dir.join(CA_FILE).exists() && dir.join(CA_KEY_FILE).exists()
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600) into `dir` (created 0700), atomically.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        create_private_dir(dir)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(CA_FILE), &self.cert_pem, 0o644)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM): handed to joining members only.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_der(&self.cert_der, key)?)
    }

    /// Issues a leaf for `identity` with DNS/IP `sans` and a fresh key.
    pub fn issue(
        &self,
        identity: PeerIdentity,
        sans: &[String],
        lifetime: Duration,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = leaf_params(&identity, sans, lifetime)?.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a CSR for `identity`. The identity, validity, key usages and CA flag are set
    /// here; the CSR contributes only its public key and its DNS/IP SANs (the addresses its
    /// holder serves on). Returns the chain `[leaf, ca]`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: PeerIdentity,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let sans = csr_sans(csr_pem)?;
        self.sign_csr_with_sans(csr_pem, identity, &sans, lifetime)
    }

    /// Signs a CSR for `identity` with the given DNS/IP `sans` (the CSR's own SANs ignored).
    pub fn sign_csr_with_sans(
        &self,
        csr_pem: &str,
        identity: PeerIdentity,
        sans: &[String],
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let mut csr = parse_csr(csr_pem)?;
        csr.params = leaf_params(&identity, sans, lifetime)?;
        let cert = csr.signed_by(&self.issuer()?)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem))
    }

    /// Whether `cert` was signed by this CA (and is valid now).
    pub fn verifies(&self, cert: &CertificateDer<'_>) -> bool {
        let mut roots = RootCertStore::empty();
        if roots.add(self.cert_der.clone()).is_err() {
            return false;
        }
        let Ok(verifier) =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()
        else {
            return false;
        };
        verifier
            .verify_client_cert(&cert.clone().into_owned(), &[], UnixTime::now())
            .is_ok()
    }
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, TlsError> {
    if csr_pem.len() > 64 * 1024 {
        return Err(TlsError::Invalid("the CSR is larger than 64 KiB".into()));
    }
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| TlsError::Invalid(format!("bad certificate signing request: {e}")))
}

/// The DNS names and IP addresses a CSR asks for (URIs and other names are dropped).
pub fn csr_sans(csr_pem: &str) -> Result<Vec<String>, TlsError> {
    let csr = parse_csr(csr_pem)?;
    Ok(csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::DnsName(name) => Some(name.as_str().to_string()),
            SanType::IpAddress(ip) => Some(ip.to_string()),
            _ => None,
        })
        .collect())
}

/// A CSR (with a fresh ECDSA P-256 key) for `identity_hint` (only the subject; the CA sets the
/// identity) and DNS/IP `sans`. Returns `(csr_pem, key_pem)`.
pub fn generate_csr(identity_hint: &str, sans: &[String]) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity_hint);
    params.distinguished_name = dn;
    for san in sans {
        let san = san.trim_start_matches('[').trim_end_matches(']');
        params.subject_alt_names.push(match san.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                san.to_string()
                    .try_into()
                    .map_err(|_| TlsError::Invalid(format!("{san:?} is not a DNS name")))?,
            ),
        });
    }
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    // Durably: the directory's name must survive a power cut as the files in it do.
    crate::durable::create_dir_all(dir, 0o700).map_err(io_error(dir))
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename) with `mode`.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(io_error(&tmp))?;
        f.sync_all().map_err(io_error(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    // The new name is durable only once the directory is synced.
    crate::durable::sync_parent(path).map_err(io_error(path))
}

struct Current {
    key: Arc<rustls::sign::CertifiedKey>,
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
}

/// The holder's current certificate chain and key, swappable while listeners and clients
/// use it (a rustls server and client certificate resolver).
#[derive(Clone)]
pub struct CertStore {
    current: Arc<RwLock<Arc<Current>>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.snapshot();
        f.debug_struct("CertStore")
            .field("identity", &c.info.identity)
            .field("serial", &c.info.serial)
            .finish_non_exhaustive()
    }
}

fn current_from_pem(cert_pem: &str, key_pem: &str) -> Result<Current, TlsError> {
    let chain = parse_certs(cert_pem)?;
    let key = parse_key(key_pem)?;
    let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider())
        .map_err(|e| TlsError::Invalid(format!("certificate and key do not match: {e}")))?;
    Ok(Current {
        key: Arc::new(certified),
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
        info: cert_info(&chain[0])?,
    })
}

impl CertStore {
    /// A store holding `cert_pem` (the chain, leaf first) and `key_pem`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(current_from_pem(cert_pem, key_pem)?))),
        })
    }

    pub fn from_issued(issued: &Issued) -> Result<Self, TlsError> {
        Self::from_pem(&issued.cert_pem, &issued.key_pem)
    }

    /// Loads `cert.pem` and `key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert = dir.join(CERT_FILE);
        let key = dir.join(KEY_FILE);
        let cert_pem = std::fs::read_to_string(&cert).map_err(io_error(&cert))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io_error(&key))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Writes `cert.pem` (0644) and `key.pem` (0600) into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        let c = self.snapshot();
        create_private_dir(dir)?;
        write_file(&dir.join(KEY_FILE), &c.key_pem, 0o600)?;
        write_file(&dir.join(CERT_FILE), &c.cert_pem, 0o644)
    }

    /// Swaps in a new certificate and key: the next handshake (server or client) uses them.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = Arc::new(current_from_pem(cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn snapshot(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn cert_pem(&self) -> String {
        self.snapshot().cert_pem.clone()
    }

    pub fn key_pem(&self) -> String {
        self.snapshot().key_pem.clone()
    }

    /// Validity, serial and identity of the current leaf.
    pub fn info(&self) -> CertInfo {
        self.snapshot().info.clone()
    }

    pub fn not_after(&self) -> SystemTime {
        self.snapshot().info.not_after
    }

    pub fn identity(&self) -> Option<PeerIdentity> {
        self.snapshot().info.identity.clone()
    }

    /// When the current leaf should be renewed: at 2/3 of its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let info = self.info();
        let total = info
            .not_after
            .duration_since(info.not_before)
            .unwrap_or_default();
        info.not_before + total * 2 / 3
    }

    /// Renews the certificate at 2/3 of its lifetime, forever (until the task is dropped
    /// or aborted): `renew` returns a new `(cert_pem, key_pem)`; it is swapped in and, with
    /// `dir`, saved. A failed renewal is logged and retried (after a tenth of the remaining
    /// time, between 1 s and 60 s).
    pub async fn renew_forever<F, Fut>(self, dir: Option<PathBuf>, mut renew: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(String, String), String>>,
    {
        loop {
            let wait = self
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            let outcome = match renew().await {
                Ok((cert, key)) => self.replace(&cert, &key).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let outcome = outcome.and_then(|()| match &dir {
                Some(dir) => self.save(dir).map_err(|e| e.to_string()),
                None => Ok(()),
            });
            match outcome {
                Ok(()) => {
                    let info = self.info();
                    tracing::info!(
                        serial = %info.serial,
                        not_after = ?info.not_after,
                        "TLS certificate renewed"
                    );
                }
                Err(e) => {
                    let left = self
                        .not_after()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    let retry = (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    tracing::warn!(error = %e, retry_in = ?retry, "TLS certificate renewal failed");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.snapshot().key.clone())
    }
}

impl rustls::client::ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let key = self.snapshot().key.clone();
        key.key.choose_scheme(sigschemes).is_some().then_some(key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client certificates a server asks for.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificates.
    None,
    /// A client may present a certificate signed by this CA (PEM); one that presents another
    /// certificate is refused, one that presents none is let through.
    Optional(String),
    /// Every client must present a certificate signed by this CA (PEM).
    Required(String),
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("bad CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A server config presenting the store's current certificate at every handshake. ALPN
/// offers h2 and http/1.1 (hyper's auto server speaks both).
pub fn server_config(store: &CertStore, auth: ClientAuth) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) if ca.is_empty() => {
            return Err(TlsError::Config("client auth needs a CA".into()))
        }
        ClientAuth::Optional(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(&ca)?, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
        ),
        ClientAuth::Required(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(&ca)?, provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
        ),
    };
    let mut config = builder.with_cert_resolver(Arc::new(store.clone()));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config trusting only `ca_pem` (server name checked against the certificate's
/// SANs), presenting the store's current certificate when the server asks for one. No ALPN
/// (reqwest and tungstenite speak HTTP/1.1; gRPC channels use HTTP/2 with prior knowledge:
/// see [`grpc_channel`]).
pub fn client_config(
    ca_pem: &str,
    store: Option<CertStore>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?);
    let config = match store {
        Some(store) => builder.with_client_cert_resolver(Arc::new(store)),
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A verifier that accepts any chain but still checks the handshake signature (the server
/// holds the leaf's key), recording the chain it saw.
#[derive(Debug)]
struct CaptureVerifier {
    provider: Arc<CryptoProvider>,
    seen: std::sync::Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for CaptureVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push(end_entity.clone().into_owned());
        seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `host` and `port` of an `https://host[:port][/...]` URL (`[v6]` brackets kept off).
pub fn url_host_port(url: &str) -> Result<(String, u16), TlsError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| TlsError::Invalid(format!("{url:?} is not an https:// URL")))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| TlsError::Invalid(format!("{url:?}: unclosed [")))?;
        (host.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(TlsError::Invalid(format!("{url:?} has no host")));
    }
    let port = match port {
        None => 443,
        Some(p) => p
            .parse()
            .map_err(|_| TlsError::Invalid(format!("{url:?} has a bad port")))?,
    };
    Ok((host, port))
}

fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::Invalid(format!("{host:?} is not a valid server name")))
}

/// Trust on first use: connects to `url` (`https://host:port`), accepts whatever chain the
/// server presents, takes its last certificate as the CA and checks that the leaf is signed
/// by it and names `host`. Returns `(ca_pem, fingerprint)`; the caller compares the
/// fingerprint with one it was given (or shows it to a human) before trusting the CA.
pub async fn fetch_server_ca(url: &str) -> Result<(String, String), TlsError> {
    let (host, port) = url_host_port(url)?;
    let capture = Arc::new(CaptureVerifier {
        provider: provider(),
        seen: Default::default(),
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let addr = format!("{}:{port}", bracket(&host));
    let connect_err = |message: String| TlsError::Connect {
        addr: addr.clone(),
        message,
    };
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
    let mut tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(Arc::new(config)).connect(server_name(&host)?, tcp),
    )
    .await
    .map_err(|_| connect_err("TLS handshake timed out".into()))?
    .map_err(|e| connect_err(format!("TLS handshake: {e}")))?;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
    let chain = std::mem::take(&mut *capture.seen.lock().unwrap_or_else(|e| e.into_inner()));
    if chain.len() < 2 {
        return Err(connect_err(
            "the server presented no CA certificate in its chain".into(),
        ));
    }
    let ca = chain.last().expect("len checked").clone();
    let ca_pem = cert_pem_from_der(&ca);
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&ca_pem)?, provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..chain.len() - 1],
            &server_name(&host)?,
            &[],
            UnixTime::now(),
        )
        .map_err(|e| connect_err(format!("the presented chain does not verify: {e}")))?;
    Ok((ca_pem, fingerprint(&ca)))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The peer of a connection, as handlers see it (a request extension in axum and tonic).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    /// The client's certificate chain (leaf first), when it presented one.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The identity of the verified client certificate.
    pub identity: Option<PeerIdentity>,
}

impl PeerInfo {
    fn plain(remote_addr: SocketAddr) -> Self {
        Self {
            remote_addr,
            certificates: None,
            identity: None,
        }
    }

    fn from_tls(remote_addr: SocketAddr, conn: &rustls::ServerConnection) -> Self {
        let certificates = conn
            .peer_certificates()
            .filter(|c| !c.is_empty())
            .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>()));
        let identity = certificates.as_ref().and_then(|c| peer_identity(&c[0]));
        Self {
            remote_addr,
            certificates,
            identity,
        }
    }
}

/// A server-side connection: TLS (handshake done) or plain TCP (`--insecure-plaintext`).
pub enum ServerStream {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
    Plain(TcpStream, PeerInfo),
}

impl ServerStream {
    pub fn peer(&self) -> &PeerInfo {
        match self {
            ServerStream::Tls(_, p) | ServerStream::Plain(_, p) => p,
        }
    }

    /// Runs the handshake (bounded by [`HANDSHAKE_TIMEOUT`]), or wraps the TCP stream when
    /// `acceptor` is `None`.
    pub async fn accept(
        tcp: TcpStream,
        remote_addr: SocketAddr,
        acceptor: Option<&TlsAcceptor>,
    ) -> io::Result<Self> {
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = acceptor else {
            return Ok(ServerStream::Plain(tcp, PeerInfo::plain(remote_addr)));
        };
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let peer = PeerInfo::from_tls(remote_addr, tls.get_ref().1);
        Ok(ServerStream::Tls(Box::new(tls), peer))
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ServerStream::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ServerStream::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            ServerStream::Plain(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ServerStream::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ServerStream::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Tls(s, _) => s.is_write_vectored(),
            ServerStream::Plain(s, _) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for ServerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer().clone()
    }
}

/// Accepts TCP connections and runs their TLS handshakes concurrently (a slow or failing
/// handshake does not hold up others); yields finished connections. For tonic's
/// `serve_with_incoming`: handlers read `request.extensions().get::<PeerInfo>()`.
pub struct TlsIncoming {
    rx: tokio::sync::mpsc::Receiver<io::Result<ServerStream>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsIncoming {
    /// `config: None` serves plain TCP.
    pub fn new(listener: TcpListener, config: Option<Arc<ServerConfig>>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = config.map(TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let tx = tx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match ServerStream::accept(tcp, addr, acceptor.as_ref()).await {
                        Ok(stream) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Err(e) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                    }
                });
            }
        });
        Self { rx, task }
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures_core_stream::Stream for TlsIncoming {
    type Item = io::Result<ServerStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

mod futures_core_stream {
    pub use tokio_stream::Stream;
}

/// A request body as [`serve_http`] hands it to the service: hyper's body, noting whether it
/// was read to its end.
pub struct RequestBody {
    inner: hyper::body::Incoming,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/1 response to a request whose body was not read to its end (refused before it was
/// read: authentication, a wrong content type, an unknown route, a body over the limit) says
/// `Connection: close`. hyper closes such a connection after the response anyway, since the
/// unread rest cannot be told apart from the next request; without the header a client that
/// sends its next request on the pooled connection at that moment meets a closed connection
/// ("EOF occurred in violation of protocol") instead of opening a new one.
fn close_if_unread<B>(version: http::Version, read_to_end: bool, response: &mut http::Response<B>) {
    if read_to_end
        || version >= http::Version::HTTP_2
        || response.status() == http::StatusCode::SWITCHING_PROTOCOLS
    {
        return;
    }
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
}

/// Serves HTTP/1.1 (with upgrades: WebSocket, Raft streams) and HTTP/2 on `listener`, over
/// TLS when `config` is given. Every request carries the connection's [`PeerInfo`] as an
/// extension, and its body is a [`RequestBody`] (a response to a request whose body was left
/// unread closes the connection and says so). Returns when `shutdown` resolves; open
/// connections are then asked to finish (graceful shutdown) and dropped after `drain`.
pub async fn serve_http<S, B>(
    listener: TcpListener,
    config: Option<Arc<ServerConfig>>,
    service: S,
    shutdown: crate::Shutdown,
    drain: Duration,
) where
    S: tower::Service<
            http::Request<RequestBody>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body::Body as _;
    use tokio_stream::StreamExt;
    let mut incoming = TlsIncoming::new(listener, config);
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => return,
            next = incoming.next() => match next {
                Some(Ok(stream)) => stream,
                Some(Err(_)) => continue,
                None => return,
            },
        };
        let peer = stream.peer().clone();
        let service = service.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let hyper_service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    let version = req.version();
                    let done = Arc::new(std::sync::atomic::AtomicBool::new(
                        req.body().is_end_stream(),
                    ));
                    let req = req.map(|inner| RequestBody {
                        inner,
                        done: done.clone(),
                    });
                    let response = tower::ServiceExt::oneshot(service.clone(), req);
                    async move {
                        let mut response = response.await?;
                        let read_to_end = done.load(std::sync::atomic::Ordering::Relaxed);
                        close_if_unread(version, read_to_end, &mut response);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(
                hyper_util::rt::TokioIo::new(stream),
                hyper_service,
            );
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(drain, conn).await;
                }
            }
        });
    }
}

/// A client-side TLS connection.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `addr` (`host:port`) over TLS with `config`, verifying the server as `host`.
pub async fn connect(
    addr: &str,
    host: &str,
    config: Arc<ClientConfig>,
) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = server_name(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// Like [`grpc_channel`], but connects now (an unreachable or untrusted server is an error
/// here, not on the first call).
pub async fn grpc_connect(
    url: &str,
    config: Option<Arc<ClientConfig>>,
) -> Result<tonic::transport::Channel, TlsError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| TlsError::Invalid(format!("{url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let connect_err = |e: tonic::transport::Error| TlsError::Connect {
        addr: url.to_string(),
        message: std::error::Error::source(&e)
            .map(|s| format!("{e}: {s}"))
            .unwrap_or_else(|| e.to_string()),
    };
    if url.starts_with("http://") {
        return endpoint.connect().await.map_err(connect_err);
    }
    let config = config.ok_or_else(|| TlsError::Config(format!("{url}: no TLS config")))?;
    endpoint
        .connect_with_connector(tls_connector(url, config)?)
        .await
        .map_err(connect_err)
}

type TlsConnectFuture = Pin<
    Box<
        dyn Future<
                Output = io::Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                >,
            > + Send,
    >,
>;

/// The tower connector of [`grpc_channel`] / [`grpc_connect`]: TCP to the URL's host and port,
/// then TLS verifying that host.
fn tls_connector(
    url: &str,
    config: Arc<ClientConfig>,
) -> Result<
    impl tower::Service<
            http::Uri,
            Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
            Error = io::Error,
            Future = TlsConnectFuture,
        > + Clone
        + Send
        + 'static,
    TlsError,
> {
    let (host, port) = url_host_port(url)?;
    let name = server_name(&host)?;
    let connector = TlsConnector::from(config);
    let addr = format!("{}:{port}", bracket(&host));
    Ok(tower::service_fn(
        move |_uri: http::Uri| -> TlsConnectFuture {
            let connector = connector.clone();
            let name = name.clone();
            let addr = addr.clone();
            Box::pin(async move {
                let tcp = TcpStream::connect(&addr).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name, tcp).await?;
                Ok(hyper_util::rt::TokioIo::new(tls))
            })
        },
    ))
}

/// A lazily connecting tonic channel to `url` (`https://host:port`) over TLS with `config`
/// (HTTP/2 with prior knowledge), or plain when the URL is `http://`.
pub fn grpc_channel(
    url: &str,
    config: Option<Arc<ClientConfig>>,
) -> Result<tonic::transport::Channel, TlsError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| TlsError::Invalid(format!("{url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("http://") {
        return Ok(endpoint.connect_lazy());
    }
    let config = config.ok_or_else(|| TlsError::Config(format!("{url}: no TLS config")))?;
    Ok(endpoint.connect_with_connector_lazy(tls_connector(url, config)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HOUR: Duration = Duration::from_secs(3600);

    fn loopback_sans() -> Vec<String> {
        vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]
    }

    fn member(ca: &ClusterCa, id: u64) -> CertStore {
        CertStore::from_issued(
            &ca.issue(PeerIdentity::Member(id), &loopback_sans(), HOUR)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn ca_saved_and_loaded_keeps_its_fingerprint_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate().unwrap();
        let fp = ca.fingerprint();
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
        assert_eq!(fp, fingerprint_pem(ca.cert_pem()).unwrap());
        ca.save(dir.path()).unwrap();
        assert!(ClusterCa::exists(dir.path()));
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        let loaded = ClusterCa::load(dir.path()).unwrap();
        assert_eq!(loaded.fingerprint(), fp);
        // A leaf issued by the loaded CA verifies against the original.
        let leaf = loaded
            .issue(PeerIdentity::Member(2), &loopback_sans(), HOUR)
            .unwrap();
        assert!(ca.verifies(&parse_certs(&leaf.cert_pem).unwrap()[0]));
        // Another CA's key does not fit this certificate.
        let other = ClusterCa::generate().unwrap();
        let err = ClusterCa::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(!other.verifies(&parse_certs(&leaf.cert_pem).unwrap()[0]));
        assert_ne!(other.fingerprint(), fp);
    }

    #[test]
    fn issued_leaf_carries_identity_sans_and_chain() {
        let ca = ClusterCa::generate().unwrap();
        let issued = ca
            .issue(
                PeerIdentity::Member(7),
                &["10.0.0.5".into(), "api.example".into()],
                HOUR,
            )
            .unwrap();
        let chain = parse_certs(&issued.cert_pem).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(fingerprint(&chain[1]), ca.fingerprint());
        assert_eq!(peer_identity(&chain[0]), Some(PeerIdentity::Member(7)));
        let info = cert_info(&chain[0]).unwrap();
        let life = info.not_after.duration_since(info.not_before).unwrap();
        assert!(
            life > HOUR && life <= HOUR + Duration::from_secs(400),
            "{life:?}"
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        assert!(!parsed.is_ca());
        let names = format!("{:?}", parsed.subject_alternative_name().unwrap().unwrap());
        assert!(
            names.contains("api.example") && names.contains("10.0.0.5")
                || names.contains("[10, 0, 0, 5]"),
            "{names}"
        );
        // Two issues for the same identity get different serials and keys.
        let again = ca
            .issue(PeerIdentity::Member(7), &loopback_sans(), HOUR)
            .unwrap();
        let again_info = cert_info(&parse_certs(&again.cert_pem).unwrap()[0]).unwrap();
        assert_ne!(again_info.serial, info.serial);
        assert_ne!(again.key_pem, issued.key_pem);
        assert_eq!(peer_identity(ca.cert_der()), None);
    }

    #[test]
    fn sign_csr_takes_identity_from_the_ca_not_the_csr() {
        let ca = ClusterCa::generate().unwrap();
        // A CSR that asks to be member 1 and a CA.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["node-a.example".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI("mvirt://member/1".try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress("10.1.2.3".parse().unwrap()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        assert_eq!(
            csr_sans(&csr).unwrap(),
            vec!["node-a.example".to_string(), "10.1.2.3".to_string()]
        );
        let chain_pem = ca
            .sign_csr(&csr, PeerIdentity::Node("node-a".into()), HOUR)
            .unwrap();
        let chain = parse_certs(&chain_pem).unwrap();
        assert_eq!(
            peer_identity(&chain[0]),
            Some(PeerIdentity::Node("node-a".into()))
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        assert!(!parsed.is_ca(), "the CSR's CA request must be ignored");
        let names = format!("{:?}", parsed.subject_alternative_name().unwrap().unwrap());
        assert!(!names.contains("mvirt://member/1"), "{names}");
        assert!(names.contains("node-a.example"), "{names}");
        // The certificate is for the CSR's key.
        assert!(CertStore::from_pem(&chain_pem, &key.serialize_pem()).is_ok());
        assert!(ca.verifies(&chain[0]));
        // Given SANs replace the CSR's.
        let only = ca
            .sign_csr_with_sans(
                &csr,
                PeerIdentity::Node("node-a".into()),
                &["192.0.2.1".into()],
                HOUR,
            )
            .unwrap();
        let only = parse_certs(&only).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&only[0]).unwrap();
        let names = format!("{:?}", parsed.subject_alternative_name().unwrap().unwrap());
        assert!(!names.contains("node-a.example"), "{names}");
        // generate_csr round trip, and garbage refused with a clear error.
        let (csr2, key2) = generate_csr("node-b", &["127.0.0.1".into()]).unwrap();
        let signed = ca
            .sign_csr(&csr2, PeerIdentity::Node("node-b".into()), HOUR)
            .unwrap();
        assert!(CertStore::from_pem(&signed, &key2).is_ok());
        let err = ca
            .sign_csr("not a csr", PeerIdentity::Node("x".into()), HOUR)
            .unwrap_err();
        assert!(
            err.to_string().contains("certificate signing request"),
            "{err}"
        );
    }

    #[test]
    fn identities_and_fingerprints_parse() {
        assert_eq!(
            PeerIdentity::from_uri("mvirt://member/12"),
            Some(PeerIdentity::Member(12))
        );
        assert_eq!(
            PeerIdentity::from_uri(&PeerIdentity::Node("n-1".into()).uri()),
            Some(PeerIdentity::Node("n-1".into()))
        );
        assert_eq!(PeerIdentity::from_uri("mvirt://member/x"), None);
        assert_eq!(PeerIdentity::from_uri("mvirt://node/a/b"), None);
        assert_eq!(PeerIdentity::from_uri("https://node/a"), None);
        let fp = format!("sha256:{}", "ab".repeat(32));
        let upper = format!("SHA256:{}", vec!["AB"; 32].join(":"));
        assert_eq!(normalize_fingerprint(&upper).unwrap(), fp);
        assert!(normalize_fingerprint("sha256:abc").is_err());
        assert_eq!(
            url_host_port("https://[::1]:8443/v1").unwrap(),
            ("::1".to_string(), 8443)
        );
        assert_eq!(
            url_host_port("https://h.example").unwrap(),
            ("h.example".to_string(), 443)
        );
        assert!(url_host_port("http://h:1").is_err());
    }

    /// A server that answers every request with the client's identity (or "anonymous").
    async fn whoami_server(store: &CertStore, auth: ClientAuth) -> (SocketAddr, crate::Shutdown) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = server_config(store, auth).unwrap();
        let shutdown = crate::Shutdown::new();
        let service = tower::service_fn(|req: http::Request<RequestBody>| async move {
            let peer = req.extensions().get::<PeerInfo>().cloned();
            let who = peer
                .and_then(|p| p.identity)
                .map(|i| i.uri())
                .unwrap_or_else(|| "anonymous".into());
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util_full(who)))
        });
        tokio::spawn(serve_http(
            listener,
            Some(config),
            service,
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        (addr, shutdown)
    }

    fn http_body_util_full(s: String) -> String {
        s
    }

    /// One HTTP/1.1 GET over TLS; returns (body, the server's leaf serial).
    async fn get(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> io::Result<(String, String)> {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(config)
            .connect(server_name(host).unwrap(), tcp)
            .await?;
        let serial = cert_info(&tls.get_ref().1.peer_certificates().unwrap()[0])
            .unwrap()
            .serial;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        tls.read_to_string(&mut out).await?;
        let body = out
            .split("\r\n\r\n")
            .nth(1)
            .ok_or_else(|| io::Error::other(format!("no HTTP response: {out:?}")))?;
        Ok((body.to_string(), serial))
    }

    /// A request whose body the service leaves unread gets `Connection: close` (hyper closes
    /// that connection after the response); one read to its end, or without a body, keeps the
    /// connection open for the next request.
    #[tokio::test]
    async fn a_response_to_an_unread_body_says_connection_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = crate::Shutdown::new();
        let service = tower::service_fn(|req: http::Request<RequestBody>| async move {
            let read = req.uri().path() == "/read";
            let n = if read {
                use http_body_util::BodyExt;
                req.into_body().collect().await.unwrap().to_bytes().len()
            } else {
                0
            };
            Ok::<_, std::convert::Infallible>(http::Response::new(format!("{n}")))
        });
        tokio::spawn(serve_http(
            listener,
            None,
            service,
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        // Two requests on one connection; the head of each response.
        async fn exchange(addr: SocketAddr, first: &str) -> (String, String) {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let body = "x".repeat(200_000);
            let req = format!(
                "POST {first} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&head).contains("\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before a response");
                head.extend_from_slice(&buf[..n]);
            }
            let first_head = String::from_utf8_lossy(&head).to_string();
            // The second request, on the same connection if it is still open.
            let second = tcp
                .write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut rest = String::new();
            if second.is_ok() {
                let _ = tcp.read_to_string(&mut rest).await;
            }
            (first_head.to_lowercase(), rest)
        }
        let (head, rest) = exchange(addr, "/ignore").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(!rest.contains("HTTP/1.1 200"), "no second answer: {rest}");

        let (head, rest) = exchange(addr, "/read").await;
        assert!(
            head.contains("\r\n\r\n200000") || head.contains("content-length: 6"),
            "{head}"
        );
        assert!(!head.contains("connection: close"), "{head}");
        assert!(
            rest.contains("HTTP/1.1 200"),
            "the connection answers again: {rest}"
        );
        shutdown.trigger();
    }

    #[tokio::test]
    async fn mutual_tls_identifies_the_client_and_refuses_a_foreign_ca() {
        let ca = ClusterCa::generate().unwrap();
        let server = member(&ca, 1);
        let (addr, shutdown) =
            whoami_server(&server, ClientAuth::Required(ca.cert_pem().into())).await;
        let client = client_config(ca.cert_pem(), Some(member(&ca, 2))).unwrap();
        let (body, _) = get(addr, client.clone(), "127.0.0.1").await.unwrap();
        assert_eq!(body, "mvirt://member/2");
        let (body, _) = get(addr, client, "localhost").await.unwrap();
        assert_eq!(body, "mvirt://member/2");

        // A client without a certificate, and one with another CA's certificate: refused.
        let anonymous = client_config(ca.cert_pem(), None).unwrap();
        assert!(get(addr, anonymous, "127.0.0.1").await.is_err());
        let other = ClusterCa::generate().unwrap();
        let foreign = client_config(ca.cert_pem(), Some(member(&other, 2))).unwrap();
        assert!(get(addr, foreign, "127.0.0.1").await.is_err());
        // A client trusting another CA refuses the server.
        let distrusting = client_config(other.cert_pem(), Some(member(&other, 2))).unwrap();
        let err = get(addr, distrusting, "127.0.0.1").await.unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        // A name the server's certificate does not carry is refused.
        let client = client_config(ca.cert_pem(), Some(member(&ca, 2))).unwrap();
        assert!(get(addr, client, "elsewhere.example").await.is_err());
        shutdown.trigger();
    }

    #[tokio::test]
    async fn optional_client_auth_lets_anonymous_in_but_not_a_foreign_ca() {
        let ca = ClusterCa::generate().unwrap();
        let (addr, shutdown) =
            whoami_server(&member(&ca, 1), ClientAuth::Optional(ca.cert_pem().into())).await;
        let anonymous = client_config(ca.cert_pem(), None).unwrap();
        assert_eq!(get(addr, anonymous, "::1").await.unwrap().0, "anonymous");
        let (csr, key) = generate_csr("node-a", &[]).unwrap();
        let node_cert = ca
            .sign_csr(&csr, PeerIdentity::Node("node-a".into()), HOUR)
            .unwrap();
        let node = client_config(
            ca.cert_pem(),
            Some(CertStore::from_pem(&node_cert, &key).unwrap()),
        )
        .unwrap();
        assert_eq!(
            get(addr, node, "::1").await.unwrap().0,
            "mvirt://node/node-a"
        );
        let other = ClusterCa::generate().unwrap();
        let foreign = client_config(ca.cert_pem(), Some(member(&other, 3))).unwrap();
        assert!(get(addr, foreign, "::1").await.is_err());
        shutdown.trigger();
    }

    #[tokio::test]
    async fn a_swapped_certificate_is_presented_by_the_next_handshake() {
        let ca = ClusterCa::generate().unwrap();
        let store = member(&ca, 1);
        let dir = tempfile::tempdir().unwrap();
        store.save(dir.path()).unwrap();
        let (addr, shutdown) = whoami_server(&store, ClientAuth::None).await;
        let client = client_config(ca.cert_pem(), None).unwrap();
        let (_, first) = get(addr, client.clone(), "127.0.0.1").await.unwrap();
        assert_eq!(first, store.info().serial);
        let next = ca
            .issue(PeerIdentity::Member(1), &loopback_sans(), HOUR)
            .unwrap();
        store.replace(&next.cert_pem, &next.key_pem).unwrap();
        // A fresh client (a reused one would resume its TLS session, without certificates).
        let client = client_config(ca.cert_pem(), None).unwrap();
        let (_, second) = get(addr, client, "127.0.0.1").await.unwrap();
        assert_ne!(first, second);
        assert_eq!(second, store.info().serial);
        // A mismatched pair is refused and the current one stays.
        let other = ca
            .issue(PeerIdentity::Member(1), &loopback_sans(), HOUR)
            .unwrap();
        assert!(store.replace(&next.cert_pem, &other.key_pem).is_err());
        assert_eq!(store.info().serial, second);
        // The saved files load back (the first certificate).
        assert_eq!(CertStore::load(dir.path()).unwrap().info().serial, first);
        shutdown.trigger();
    }

    #[tokio::test]
    async fn renewal_swaps_the_certificate_at_two_thirds_of_its_lifetime() {
        let ca = ClusterCa::generate().unwrap();
        let life = Duration::from_secs(3);
        let store = CertStore::from_issued(
            &ca.issue(PeerIdentity::Member(1), &loopback_sans(), life)
                .unwrap(),
        )
        .unwrap();
        let first = store.info();
        let due = store.renew_at();
        assert!(due > SystemTime::now() && due < first.not_after);
        let dir = tempfile::tempdir().unwrap();
        let renewer = ca.clone();
        let task = tokio::spawn(store.clone().renew_forever(
            Some(dir.path().to_path_buf()),
            move || {
                let issued = renewer.issue(PeerIdentity::Member(1), &loopback_sans(), life);
                async move {
                    issued
                        .map(|i| (i.cert_pem, i.key_pem))
                        .map_err(|e| e.to_string())
                }
            },
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while store.info().serial == first.serial {
            assert!(std::time::Instant::now() < deadline, "never renewed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            SystemTime::now() < first.not_after,
            "renewed only after expiry"
        );
        task.abort();
        let saved = CertStore::load(dir.path()).unwrap();
        assert_ne!(saved.info().serial, first.serial);
    }

    #[tokio::test]
    async fn fetch_server_ca_returns_the_chain_root_and_its_fingerprint() {
        let ca = ClusterCa::generate().unwrap();
        let (addr, shutdown) = whoami_server(&member(&ca, 1), ClientAuth::None).await;
        let (pem, fp) = fetch_server_ca(&format!("https://{addr}")).await.unwrap();
        assert_eq!(fp, ca.fingerprint());
        assert_eq!(fingerprint_pem(&pem).unwrap(), fp);
        // The fetched CA then verifies the server normally.
        let client = client_config(&pem, None).unwrap();
        assert_eq!(get(addr, client, "127.0.0.1").await.unwrap().0, "anonymous");
        shutdown.trigger();

        // A server presenting only its leaf (no CA in the chain) gives no CA.
        let issued = ca
            .issue(PeerIdentity::Member(1), &loopback_sans(), HOUR)
            .unwrap();
        let leaf_only = cert_pem_from_der(&parse_certs(&issued.cert_pem).unwrap()[0]);
        let store = CertStore::from_pem(&leaf_only, &issued.key_pem).unwrap();
        let (addr, shutdown) = whoami_server(&store, ClientAuth::None).await;
        let err = fetch_server_ca(&format!("https://{addr}"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no CA"), "{err}");
        shutdown.trigger();
    }

    #[tokio::test]
    async fn grpc_over_tls_with_a_client_certificate() {
        let ca = ClusterCa::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config =
            server_config(&member(&ca, 1), ClientAuth::Optional(ca.cert_pem().into())).unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(TlsIncoming::new(listener, Some(config))),
        );
        let client = client_config(ca.cert_pem(), Some(member(&ca, 2))).unwrap();
        let channel =
            grpc_channel(&format!("https://127.0.0.1:{}", addr.port()), Some(client)).unwrap();
        let reply = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(reply.into_inner().status, 1, "SERVING");
        // A client distrusting the server's CA fails.
        let other = ClusterCa::generate().unwrap();
        let client = client_config(other.cert_pem(), None).unwrap();
        let channel =
            grpc_channel(&format!("https://127.0.0.1:{}", addr.port()), Some(client)).unwrap();
        assert!(tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_err());
    }
}
