//! A real OCI registry (distribution 2.8, apt `docker-registry`) on 127.0.0.1, and images the
//! test builds itself and pushes through the registry's HTTP API.
//!
//! [`Registry::start`] writes a config into a temporary directory (storage included), starts
//! `docker-registry serve` on a free port, waits until `/v2/` answers, and kills it and removes
//! everything on drop. [`Registry::start_with_basic_auth`] protects it with htpasswd (bcrypt,
//! generated with `htpasswd` from apache2-utils). [`Registry::start_with_token_auth`] configures
//! distribution's bearer-token auth (`auth: token:`) against a [`TokenServer`] the fixture
//! starts and owns; the fixture's own requests (pushes) then follow the real protocol: a `401`
//! challenge names realm, service and scope, a token for that scope is fetched from the realm
//! with the fixture's `pull,push` user, and the request is repeated with it. [`LayerBuilder`] makes gzip'd tar layers,
//! [`TestImage`] puts layers and a config together, [`Registry::push_image`] uploads blobs
//! (POST + PUT monolithic upload) and the manifest; [`Registry::push_index`] adds an image index.
//! [`busybox_layer`] is a root filesystem with the host's static `/bin/busybox` and its applets.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::process::{wait_until, ChildGuard};
use crate::token_server::{TokenServer, TokenUser};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A running registry, removed on drop.
pub struct Registry {
    child: ChildGuard,
    dir: tempfile::TempDir,
    ip: std::net::Ipv4Addr,
    port: u16,
    auth: Auth,
}

/// How the registry authenticates requests, and how the fixture authenticates its own.
enum Auth {
    None,
    Basic(String, String),
    Token {
        server: TokenServer,
        user: String,
        password: String,
        /// Tokens of the fixture's user by repository.
        tokens: std::sync::Mutex<HashMap<String, String>>,
    },
}

/// The user the fixture pushes as on a token-auth registry.
pub const TOKEN_PUSH_USER: &str = "fixture-pusher";

/// A reply of the registry's HTTP API.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Self {
        Self::launch(std::net::Ipv4Addr::LOCALHOST, Auth::None)
    }

    /// An anonymous registry listening on `ip` (an address of a TAP or bridge the test owns, so
    /// that a guest can reach it) instead of loopback.
    pub fn start_on(ip: std::net::Ipv4Addr) -> Self {
        Self::launch(ip, Auth::None)
    }

    /// A registry that requires HTTP basic auth for everything.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::launch(
            std::net::Ipv4Addr::LOCALHOST,
            Auth::Basic(user.to_string(), password.to_string()),
        )
    }

    /// A registry on `ip` that requires HTTP basic auth for everything (a private registry a
    /// guest reaches on an address of the test's own interface).
    pub fn start_on_with_basic_auth(ip: std::net::Ipv4Addr, user: &str, password: &str) -> Self {
        Self::launch(ip, Auth::Basic(user.to_string(), password.to_string()))
    }

    /// A registry that requires bearer tokens from a [`TokenServer`] (started here, stopped
    /// with the registry) for everything. `users` are the token server's users; the fixture
    /// adds its own `pull,push` user ([`TOKEN_PUSH_USER`]) for pushing.
    pub fn start_with_token_auth(users: Vec<TokenUser>) -> Self {
        let password = format!("push-{}", crate::unique_suffix());
        let mut all = users;
        all.push(TokenUser::new(
            TOKEN_PUSH_USER,
            &password,
            &["pull", "push"],
        ));
        Self::launch(
            std::net::Ipv4Addr::LOCALHOST,
            Auth::Token {
                server: TokenServer::start(all),
                user: TOKEN_PUSH_USER.to_string(),
                password,
                tokens: Default::default(),
            },
        )
    }

    /// The token server of a registry started with [`Registry::start_with_token_auth`].
    pub fn token_server(&self) -> &TokenServer {
        match &self.auth {
            Auth::Token { server, .. } => server,
            _ => panic!("this registry was not started with token auth"),
        }
    }

    fn launch(ip: std::net::Ipv4Addr, auth: Auth) -> Self {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "docker-registry is missing: run scripts/setup.sh (apt docker-registry)"
        );
        let dir = tempfile::Builder::new()
            .prefix("mvirt-registry-")
            .tempdir()
            .expect("create registry temp dir");
        let port = crate::net::free_port();
        // A port free on loopback is as good a guess as any on another local address.
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("create registry storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n",
            storage.display()
        );
        if let Auth::Basic(user, password) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd (apt apache2-utils; run scripts/setup.sh)");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: mvirt-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        if let Auth::Token { server, .. } = &auth {
            let bundle = dir.path().join("token-root.pem");
            server.write_cert_bundle(&bundle);
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                server.realm(),
                crate::token_server::SERVICE,
                crate::token_server::ISSUER,
                bundle.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let log_err = log.try_clone().expect("registry log");
        let child = ChildGuard::spawn(
            "docker-registry",
            Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err),
        );
        let registry = Self {
            child,
            dir,
            ip,
            port,
            auth,
        };
        wait_until(
            "the registry to answer /v2/",
            Duration::from_secs(30),
            || {
                registry
                    .request("GET", "/v2/", &[], &[])
                    .ok()
                    .filter(|r| r.status == 200 || r.status == 401)
            },
        );
        registry
    }

    /// `<ip>:<port>` (`127.0.0.1:<port>` by default), the registry part of image references.
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry's log (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry stores the content of a blob (tests corrupt it to prove digest
    /// checks).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// One HTTP/1.1 request to the registry, authenticated as the fixture: basic auth when
    /// configured; with token auth, a `401` bearer challenge is answered with a token fetched
    /// from the challenge's realm for its scope, and the request repeated.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpReply> {
        match &self.auth {
            Auth::None => self.request_as(None, method, path, headers, body),
            Auth::Basic(user, password) => {
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                self.request_as(Some(&format!("Basic {token}")), method, path, headers, body)
            }
            Auth::Token {
                user,
                password,
                tokens,
                ..
            } => {
                let Some(repo) = repository_of(path) else {
                    // Not a repository request (`/v2/`): answer the challenge as it comes.
                    let first = self.request_as(None, method, path, headers, body)?;
                    if first.status != 401 {
                        return Ok(first);
                    }
                    let challenge = first.header("WWW-Authenticate").ok_or_else(|| {
                        std::io::Error::other(format!("401 without a challenge: {first:?}"))
                    })?;
                    let token = fetch_token(challenge, None, user, password)?;
                    return self.request_as(
                        Some(&format!("Bearer {token}")),
                        method,
                        path,
                        headers,
                        body,
                    );
                };
                // A request with a body must carry its token up front (the registry answers 401
                // without reading the body), so tokens are fetched per repository, for
                // `pull,push`, with realm and service from the `/v2/` challenge, and reused.
                let mut retried = false;
                loop {
                    let cached = tokens.lock().expect("token cache").get(&repo).cloned();
                    let token = match cached {
                        Some(token) => token,
                        None => {
                            let probe = self.request_as(None, "GET", "/v2/", &[], &[])?;
                            let challenge = probe.header("WWW-Authenticate").ok_or_else(|| {
                                std::io::Error::other(format!(
                                    "/v2/ without a challenge: {probe:?}"
                                ))
                            })?;
                            let scope = format!("repository:{repo}:pull,push");
                            let token = fetch_token(challenge, Some(&scope), user, password)?;
                            tokens
                                .lock()
                                .expect("token cache")
                                .insert(repo.clone(), token.clone());
                            token
                        }
                    };
                    let reply = self.request_as(
                        Some(&format!("Bearer {token}")),
                        method,
                        path,
                        headers,
                        body,
                    )?;
                    if reply.status != 401 || retried {
                        return Ok(reply);
                    }
                    // Expired: fetch a new one once.
                    tokens.lock().expect("token cache").remove(&repo);
                    retried = true;
                }
            }
        }
    }

    /// One HTTP/1.1 request to the registry with the given `Authorization` header (or none).
    pub fn request_as(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpReply> {
        let (ip, port) = (self.ip, self.port);
        http_request(
            (ip, port).into(),
            &self.host(),
            authorization,
            method,
            path,
            headers,
            body,
        )
    }

    /// Uploads a blob (monolithic: POST to start, PUT with the digest) unless it exists.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let head = self
            .request("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[], &[])
            .expect("HEAD blob");
        if head.status == 200 {
            return digest;
        }
        let start = self
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])
            .expect("start blob upload");
        assert_eq!(start.status, 202, "start upload: {start:?}");
        let location = start
            .header("Location")
            .expect("upload location")
            .to_string();
        let path = location
            .strip_prefix(&format!("http://{}", self.host()))
            .unwrap_or(&location)
            .to_string();
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = self
            .request(
                "PUT",
                &format!("{path}{sep}digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                bytes,
            )
            .expect("finish blob upload");
        assert_eq!(put.status, 201, "finish upload: {put:?}");
        digest
    }

    /// Uploads a manifest (or index) under `reference` (a tag or digest); returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let put = self
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Content-Type", media_type)],
                body,
            )
            .expect("PUT manifest");
        assert_eq!(put.status, 201, "PUT manifest: {put:?} {}", self.log());
        sha256_digest(body)
    }

    /// Pushes every blob of `image` and its manifest as `repo:tag`; returns the manifest digest.
    pub fn push_image(&self, repo: &str, tag: &str, image: &TestImage) -> String {
        for layer in &image.layers {
            self.push_blob(repo, layer);
        }
        self.push_blob(repo, &image.config);
        self.push_manifest(repo, tag, OCI_MANIFEST, &image.manifest())
    }

    /// Pushes `images` (each with its platform `os/arch`) and an image index over them as
    /// `repo:tag`; returns the index digest.
    pub fn push_index(&self, repo: &str, tag: &str, images: &[(&TestImage, &str, &str)]) -> String {
        let mut manifests = Vec::new();
        for (image, os, arch) in images {
            let manifest = image.manifest();
            let digest = sha256_digest(&manifest);
            for layer in &image.layers {
                self.push_blob(repo, layer);
            }
            self.push_blob(repo, &image.config);
            self.push_manifest(repo, &digest, OCI_MANIFEST, &manifest);
            manifests.push(serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": manifest.len(),
                "platform": {"os": os, "architecture": arch},
            }));
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))
        .expect("serialise index");
        self.push_manifest(repo, tag, OCI_INDEX, &index)
    }
}

/// Parses a `Bearer realm="…",service="…",scope="…"` challenge.
pub fn parse_bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let params = header.strip_prefix("Bearer ")?;
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let end = after.find('"')?;
        out.insert(key.trim().to_string(), after[..end].to_string());
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Some(out)
}

/// The repository name of a registry API path (`/v2/<name>/{blobs,manifests,tags}/…`).
fn repository_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    ["/blobs/", "/manifests/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
        .map(|end| rest[..end].to_string())
}

/// Answers a bearer challenge: fetches a token from its realm (HTTP basic `user:password`) for
/// its service and its scope (or `scope` instead).
fn fetch_token(
    challenge: &str,
    scope: Option<&str>,
    user: &str,
    password: &str,
) -> std::io::Result<String> {
    let params = parse_bearer_challenge(challenge)
        .ok_or_else(|| std::io::Error::other(format!("not a bearer challenge: {challenge}")))?;
    let realm = params
        .get("realm")
        .ok_or_else(|| std::io::Error::other("challenge without realm"))?;
    let rest = realm
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other(format!("realm is not plain http: {realm}")))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: std::net::SocketAddr = authority
        .parse()
        .map_err(|e| std::io::Error::other(format!("realm address {authority}: {e}")))?;
    let mut query = Vec::new();
    if let Some(service) = params.get("service") {
        query.push(format!("service={}", query_escape(service)));
    }
    if let Some(scope) = scope.or(params.get("scope").map(String::as_str)) {
        query.push(format!("scope={}", query_escape(scope)));
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let reply = http_request(
        addr,
        authority,
        Some(&format!("Basic {basic}")),
        "GET",
        &format!("{path}?{}", query.join("&")),
        &[],
        &[],
    )?;
    if reply.status != 200 {
        return Err(std::io::Error::other(format!(
            "token server answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&reply.body)
        .map_err(|e| std::io::Error::other(format!("token reply is not JSON: {e}")))?;
    json.get("token")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| std::io::Error::other("token reply without a token"))
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request (`Connection: close`) to `addr`.
fn http_request(
    addr: std::net::SocketAddr,
    host: &str,
    authorization: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(authorization) = authorization {
        head.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP reply"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = HttpReply {
        status,
        headers,
        body: Vec::new(),
    };
    if chunked
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(HttpReply { body, ..chunked })
}

/// Decodes a chunked HTTP body.
fn dechunk(mut raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| std::io::Error::other("malformed chunk"))?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| std::io::Error::other(format!("chunk size {size_text:?}: {e}")))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(std::io::Error::other("truncated chunk"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Builds one gzip'd tar layer.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut header = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.tar
            .append_data(&mut header, path, &[][..])
            .expect("append dir");
        self
    }

    pub fn file(mut self, path: &str, contents: &[u8], mode: u32) -> Self {
        let mut header = Self::header(tar::EntryType::Regular, mode, contents.len() as u64);
        self.tar
            .append_data(&mut header, path, contents)
            .expect("append file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut header, path, target)
            .expect("append symlink");
        self
    }

    /// A whiteout hiding `path` of the layers below.
    pub fn whiteout(self, path: &str) -> Self {
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (format!("{p}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{parent}.wh.{name}"), b"", 0o644)
    }

    /// Makes directory `dir` opaque: nothing of the layers below shows through.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            b"",
            0o644,
        )
    }

    /// The gzip'd tar.
    pub fn build(self) -> Vec<u8> {
        let tar = self.tar.into_inner().expect("finish tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip layer");
        gz.finish().expect("gzip layer")
    }
}

/// Busybox applets linked in the test images.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "echo", "cat", "sleep", "ls", "true", "false", "env", "id", "pwd", "hostname",
    "ps", "kill", "wc", "printf", "test", "mkdir", "rm", "stty", "tty", "seq", "head", "tail",
    "touch", "grep", "mount", "readlink", "whoami", "sync", "date", "uname",
];

/// A root filesystem layer: the host's static busybox, its applets in /bin, /etc/passwd with
/// `root` and `app` (1000:1000), /etc/group, /tmp, /root, /home/app.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("read /bin/busybox (apt busybox-static; run scripts/setup.sh)");
    let mut layer = LayerBuilder::new()
        .dir("bin/")
        .dir("etc/")
        .dir("tmp/")
        .dir("root/")
        .dir("home/")
        .dir("home/app/")
        .file("bin/busybox", &busybox, 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644);
    for applet in BUSYBOX_APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer.build()
}

/// An image: config JSON plus gzip'd layers, in order.
#[derive(Clone)]
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl TestImage {
    /// An image with the given layers and a config (Entrypoint, Cmd, Env, WorkingDir, User).
    pub fn new(layers: Vec<Vec<u8>>, config: serde_json::Value) -> Self {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(&l[..])
                    .read_to_end(&mut tar)
                    .expect("gunzip layer");
                sha256_digest(&tar)
            })
            .collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("serialise config");
        Self { config, layers }
    }

    /// A busybox image whose default command is `/bin/sh`.
    pub fn busybox() -> Self {
        Self::new(
            vec![busybox_layer()],
            serde_json::json!({
                "Cmd": ["/bin/sh"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            }),
        )
    }

    /// The OCI manifest JSON.
    pub fn manifest(&self) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": OCI_LAYER_GZIP,
                    "digest": sha256_digest(l),
                    "size": l.len(),
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256_digest(&self.config),
                "size": self.config.len(),
            },
            "layers": layers,
        }))
        .expect("serialise manifest")
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| sha256_digest(l)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_of_api_paths() {
        assert_eq!(
            repository_of("/v2/team/app/blobs/uploads/").as_deref(),
            Some("team/app")
        );
        assert_eq!(
            repository_of("/v2/app/manifests/latest").as_deref(),
            Some("app")
        );
        assert_eq!(repository_of("/v2/"), None);
    }

    #[test]
    fn bearer_challenges() {
        let params = parse_bearer_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(params["realm"], "http://127.0.0.1:1/token");
        assert_eq!(params["service"], "svc");
        assert_eq!(params["scope"], "repository:a/b:pull,push");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_err());
    }
}
