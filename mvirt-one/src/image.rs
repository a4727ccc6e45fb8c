//! Container images: pulled from an OCI registry with `oci-client`, verified, cached, unpacked.
//!
//! A pull resolves the reference to a linux/amd64 image manifest (an image index is resolved by
//! the client's platform resolver), fetches the config blob and every layer blob — each checked
//! against its digest by the client while streaming — and keeps layer blobs under
//! `blobs/sha256/<hex>` so a layer shared by several images is downloaded once. The layers are
//! then unpacked in order into `images/<manifest hex>/rootfs` (see [`crate::unpack`]), which
//! containers use read-only as the lower layer of their overlay. Work happens in temporary
//! directories renamed into place at the end, so a failed pull leaves nothing half-written.
//! The config blob is held in memory, so it is capped ([`MAX_CONFIG_BYTES`]): both its
//! descriptor's size and the bytes the registry actually sends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mvirt_common::{ErrorKind, HasErrorKind};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::unpack::{self, LayerCompression, UnpackError};

/// The largest image config blob a pull accepts. Real configs are a few KiB (their history
/// can reach some hundred KiB); the blob is kept in memory.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Credentials for one pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
}

impl Credentials {
    fn to_oci(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// The parts of an image's config that decide how a container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// An image ready to run: its unpacked root filesystem and config.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: String,
    pub manifest_digest: String,
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("image {reference} not found in its registry")]
    NotFound {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    /// Names the registry's answer (`HTTP 401 Unauthorized`, its error codes and messages, or
    /// the token server's refusal), which the status of a failed pod shows.
    #[error("registry refused access to {reference}: {}", refusal(.source))]
    Unauthorized {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry of {reference} is unreachable")]
    Unreachable {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("digest mismatch while pulling {reference}")]
    DigestMismatch {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("cannot set up TLS to the registry of {reference} (is a CA bundle installed?)")]
    Tls {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("pulling {reference} failed")]
    Registry {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("image {reference} has an unsupported layer media type {media_type}")]
    UnsupportedLayer {
        reference: String,
        media_type: String,
    },
    #[error("image {reference} is for {os}/{architecture}, not linux/amd64")]
    WrongPlatform {
        reference: String,
        os: String,
        architecture: String,
    },
    #[error("image config of {reference} has {size} bytes (at most {MAX_CONFIG_BYTES})")]
    ConfigTooLarge { reference: String, size: i64 },
    #[error("image config of {reference} is not valid JSON")]
    BadConfig {
        reference: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot unpack layer {digest} of {reference}")]
    Unpack {
        reference: String,
        digest: String,
        #[source]
        source: UnpackError,
    },
    #[error("image cache I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HasErrorKind for ImageError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImageError::InvalidReference { .. } => ErrorKind::InvalidArgument,
            ImageError::NotFound { .. } => ErrorKind::NotFound,
            ImageError::Unauthorized { .. } => ErrorKind::PermissionDenied,
            ImageError::Unreachable { .. } => ErrorKind::Unavailable,
            ImageError::Tls { .. } => ErrorKind::FailedPrecondition,
            ImageError::UnsupportedLayer { .. } | ImageError::WrongPlatform { .. } => {
                ErrorKind::FailedPrecondition
            }
            // DATA_LOSS has no ErrorKind; the gRPC edge maps DigestMismatch itself.
            ImageError::DigestMismatch { .. } => ErrorKind::Internal,
            ImageError::ConfigTooLarge { .. } => ErrorKind::FailedPrecondition,
            ImageError::Registry { .. }
            | ImageError::BadConfig { .. }
            | ImageError::Unpack { .. }
            | ImageError::Io { .. } => ErrorKind::Internal,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Classifies an oci-client error into what the caller can act on.
fn classify(reference: &str, err: OciDistributionError) -> ImageError {
    let reference = reference.to_string();
    let not_found = |e: &OciDistributionError| match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    };
    let unauthorized = |e: &OciDistributionError| match e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        _ => false,
    };
    if not_found(&err) {
        ImageError::NotFound {
            reference,
            source: err,
        }
    } else if unauthorized(&err) {
        ImageError::Unauthorized {
            reference,
            source: err,
        }
    } else if matches!(err, OciDistributionError::DigestError(_)) {
        ImageError::DigestMismatch {
            reference,
            source: err,
        }
    } else if matches!(&err, OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout())
    {
        ImageError::Unreachable {
            reference,
            source: err,
        }
    } else {
        ImageError::Registry {
            reference,
            source: err,
        }
    }
}

/// What a registry answered when it refused access. oci-client keeps no body of a 401, so that
/// one is named by its status; other refusals carry the registry's error codes and messages.
fn refusal(err: &OciDistributionError) -> String {
    match err {
        OciDistributionError::UnauthorizedError { .. } => "HTTP 401 Unauthorized".to_string(),
        OciDistributionError::AuthenticationFailure(message) => message.clone(),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|e| format!("{:?}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        OciDistributionError::ServerError { code, message, .. } => {
            format!("HTTP {code}: {}", message.trim())
        }
        other => other.to_string(),
    }
}

#[derive(Deserialize, Default)]
struct RawConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

/// Parses an image config blob (OCI or Docker) into the parts that matter for running it.
pub fn parse_config(reference: &str, bytes: &[u8]) -> Result<ImageConfig, ImageError> {
    let raw: RawConfigFile =
        serde_json::from_slice(bytes).map_err(|source| ImageError::BadConfig {
            reference: reference.to_string(),
            source,
        })?;
    let os_ok = raw.os.is_empty() || raw.os == "linux";
    let arch_ok = raw.architecture.is_empty() || raw.architecture == "amd64";
    if !os_ok || !arch_ok {
        return Err(ImageError::WrongPlatform {
            reference: reference.to_string(),
            os: raw.os,
            architecture: raw.architecture,
        });
    }
    let c = raw.config.unwrap_or_default();
    Ok(ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
    })
}

/// The on-disk image cache and the pull logic.
pub struct ImageStore {
    root: PathBuf,
    insecure_registries: Vec<String>,
    /// One lock per manifest digest, so two pods pulling the same image unpack it once.
    unpack_locks: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn is_loopback_registry(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl ImageStore {
    /// `insecure_registries` (`host:port`) are spoken to over plain HTTP; so is any registry on
    /// loopback. Everything else uses HTTPS.
    pub fn new(root: PathBuf, insecure_registries: Vec<String>) -> Result<Self, ImageError> {
        // reqwest is built without a default TLS crypto provider; ring is ours. Installing
        // twice (several stores in one process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        for dir in [
            root.join("blobs/sha256"),
            root.join("images"),
            root.join("tmp"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        // Leftovers of pulls interrupted by a crash.
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path())
                    .or_else(|_| std::fs::remove_file(entry.path()));
            }
        }
        Ok(Self {
            root,
            insecure_registries,
            unpack_locks: Default::default(),
        })
    }

    fn client_for(&self, reference: &str, registry: &str) -> Result<Client, ImageError> {
        let plain_http = is_loopback_registry(registry)
            || self.insecure_registries.iter().any(|r| r == registry);
        let config = |accept_invalid_certificates| ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            accept_invalid_certificates,
            ..Default::default()
        };
        // oci-client builds a default reqwest client internally, and reqwest panics when no CA
        // bundle exists on the system (a minimal initramfs): turn that into an error.
        let build = |accept_invalid| {
            std::panic::catch_unwind(|| Client::try_from(config(accept_invalid))).unwrap_or_else(
                |_| {
                    Err(OciDistributionError::GenericError(Some(
                        "no CA certificates found on the system".into(),
                    )))
                },
            )
        };
        match build(false) {
            Ok(client) => Ok(client),
            // A plain-HTTP registry never uses TLS, so the verifier does not matter there.
            Err(e) if plain_http => {
                tracing::debug!(error = %e, registry, "no TLS roots; plain-HTTP client without them");
                build(true).map_err(|source| ImageError::Tls {
                    reference: reference.to_string(),
                    source,
                })
            }
            Err(source) => Err(ImageError::Tls {
                reference: reference.to_string(),
                source,
            }),
        }
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(digest)?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// Pulls `reference` (or finds it in the cache) and returns its unpacked root filesystem.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: &Credentials,
    ) -> Result<PulledImage, ImageError> {
        // Parsing (oci-spec compiles one large Unicode regex on first use: ~1 s under TCG in a
        // pod) and building the client (it loads the CA bundle) are timed: both are a visible
        // part of a pod's start (mvirt-node's pod benchmark).
        let parsing = std::time::Instant::now();
        let parsed: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
            ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: e.to_string(),
            }
        })?;
        let parse_ms = parsing.elapsed().as_millis() as u64;
        let building = std::time::Instant::now();
        let client = self.client_for(reference, parsed.resolve_registry())?;
        let client_ms = building.elapsed().as_millis() as u64;
        let auth = credentials.to_oci();
        if *credentials != Credentials::Anonymous {
            // Authenticate explicitly first: oci-client's implicit token fetch drops the token
            // server's refusal and carries on anonymously, so wrong credentials would only show
            // as the registry's generic 401. This surfaces the token server's reason instead.
            // Costs one `GET /v2/` (plus the token request on a token-auth registry).
            client
                .auth(&parsed, &auth, RegistryOperation::Pull)
                .await
                .map_err(|e| classify(reference, e))?;
        }
        tracing::info!(
            image = reference,
            parse_ms,
            client_ms,
            "pulling image manifest"
        );
        let (manifest, manifest_digest) = client
            .pull_image_manifest(&parsed, &auth)
            .await
            .map_err(|e| classify(reference, e))?;
        let manifest_hex = digest_hex(&manifest_digest)?.to_string();
        let image_dir = self.root.join("images").join(&manifest_hex);

        let lock = {
            let mut locks = self.unpack_locks.lock().await;
            locks.entry(manifest_hex.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;

        let config_path = image_dir.join("config.json");
        if let Ok(bytes) = tokio::fs::read(&config_path).await {
            if let Ok(config) = serde_json::from_slice::<ImageConfig>(&bytes) {
                tracing::debug!(image = reference, digest = %manifest_digest, "image cached");
                return Ok(PulledImage {
                    reference: reference.to_string(),
                    manifest_digest,
                    rootfs: image_dir.join("rootfs"),
                    config,
                });
            }
        }

        let too_large = |size| ImageError::ConfigTooLarge {
            reference: reference.to_string(),
            size,
        };
        let declared = manifest.config.size;
        if usize::try_from(declared).map_or(true, |size| size > MAX_CONFIG_BYTES) {
            return Err(too_large(declared));
        }
        // The descriptor may lie about the size; the digest is only checked at the end.
        let mut config_blob = CappedBuffer::new(MAX_CONFIG_BYTES);
        let pulled = client
            .pull_blob(&parsed, &manifest.config, &mut config_blob)
            .await;
        if config_blob.overflowed {
            return Err(too_large(i64::MAX));
        }
        pulled.map_err(|e| classify(reference, e))?;
        let config = parse_config(reference, &config_blob.bytes)?;

        let mut layers = Vec::new();
        for layer in &manifest.layers {
            let compression =
                LayerCompression::from_media_type(&layer.media_type).ok_or_else(|| {
                    ImageError::UnsupportedLayer {
                        reference: reference.to_string(),
                        media_type: layer.media_type.clone(),
                    }
                })?;
            let path = self.fetch_layer(&client, &parsed, reference, layer).await?;
            layers.push((layer.digest.clone(), path, compression));
        }

        let tmp_dir = self
            .root
            .join("tmp")
            .join(format!("{manifest_hex}.{}", std::process::id()));
        let _ = tokio::fs::remove_dir_all(&tmp_dir).await;
        let rootfs_tmp = tmp_dir.join("rootfs");
        tokio::fs::create_dir_all(&rootfs_tmp)
            .await
            .map_err(io_err(&rootfs_tmp))?;
        let unpack_target = rootfs_tmp.clone();
        let reference_owned = reference.to_string();
        let unpacked = tokio::task::spawn_blocking(move || {
            for (digest, path, compression) in layers {
                tracing::debug!(%digest, "unpacking layer");
                unpack::unpack_layer(&path, compression, &unpack_target).map_err(|source| {
                    ImageError::Unpack {
                        reference: reference_owned.clone(),
                        digest,
                        source,
                    }
                })?;
            }
            Ok::<(), ImageError>(())
        })
        .await;
        let unpacked = match unpacked {
            Ok(result) => result,
            Err(join) => Err(ImageError::Io {
                path: rootfs_tmp.clone(),
                source: std::io::Error::other(join.to_string()),
            }),
        };
        if let Err(e) = unpacked {
            let _ = tokio::fs::remove_dir_all(&tmp_dir).await;
            return Err(e);
        }
        let config_json = serde_json::to_vec(&config).map_err(|source| ImageError::BadConfig {
            reference: reference.to_string(),
            source,
        })?;
        let tmp_config = tmp_dir.join("config.json");
        tokio::fs::write(&tmp_config, &config_json)
            .await
            .map_err(io_err(&tmp_config))?;
        let _ = tokio::fs::remove_dir_all(&image_dir).await;
        tokio::fs::rename(&tmp_dir, &image_dir)
            .await
            .map_err(io_err(&image_dir))?;
        tracing::info!(image = reference, digest = %manifest_digest, "image pulled and unpacked");
        Ok(PulledImage {
            reference: reference.to_string(),
            manifest_digest,
            rootfs: image_dir.join("rootfs"),
            config,
        })
    }

    /// Downloads a layer blob into the cache unless it is already there; the client checks the
    /// digest while streaming and the blob is only renamed into place when it matched.
    async fn fetch_layer(
        &self,
        client: &Client,
        image: &Reference,
        reference: &str,
        layer: &OciDescriptor,
    ) -> Result<PathBuf, ImageError> {
        let path = self.blob_path(&layer.digest)?;
        if tokio::fs::metadata(&path).await.is_ok() {
            tracing::debug!(digest = %layer.digest, "layer cached");
            return Ok(path);
        }
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.part",
            digest_hex(&layer.digest)?,
            std::process::id()
        ));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err(&tmp))?;
        let result = client.pull_blob(image, layer, &mut file).await;
        if let Err(e) = result {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(classify(reference, e));
        }
        file.flush().await.map_err(io_err(&tmp))?;
        drop(file);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io_err(&path))?;
        Ok(path)
    }

    /// Whether a layer blob is in the cache (for tests and diagnostics).
    pub fn has_layer(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.exists()).unwrap_or(false)
    }
}

/// An in-memory blob sink that fails once more than `cap` bytes arrive.
struct CappedBuffer {
    bytes: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl CappedBuffer {
    fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            overflowed: false,
        }
    }
}

impl tokio::io::AsyncWrite for CappedBuffer {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.bytes.len().saturating_add(buf.len()) > this.cap {
            this.overflowed = true;
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "blob larger than {} bytes",
                this.cap
            ))));
        }
        this.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The hex part of a `sha256:<hex>` digest, validated (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(ImageError::InvalidReference {
            reference: digest.to_string(),
            reason: "only sha256 digests are supported".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_is_parsed_and_foreign_platforms_are_refused() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","true"],"Env":["A=1"],"WorkingDir":"/w","User":"1000"}}"#;
        let config = parse_config("x", json).unwrap();
        assert_eq!(config.entrypoint, vec!["/bin/sh"]);
        assert_eq!(config.cmd, vec!["-c", "true"]);
        assert_eq!(config.working_dir, "/w");
        assert_eq!(config.user, "1000");
        let arm = br#"{"architecture":"arm64","os":"linux"}"#;
        assert!(matches!(
            parse_config("x", arm),
            Err(ImageError::WrongPlatform { .. })
        ));
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(digest_hex("sha256:../../etc").is_err());
        assert!(digest_hex("md5:abc").is_err());
    }

    #[tokio::test]
    async fn the_config_sink_refuses_more_than_its_cap() {
        use tokio::io::AsyncWriteExt;
        let mut sink = CappedBuffer::new(8);
        sink.write_all(b"12345678").await.unwrap();
        assert!(sink.write_all(b"9").await.is_err());
        assert!(sink.overflowed);
        assert_eq!(sink.bytes, b"12345678");
    }

    #[test]
    fn loopback_registries_use_plain_http() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:5000"));
        assert!(!is_loopback_registry("registry.example:5000"));
    }
}
