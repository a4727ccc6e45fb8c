//! A real OCI registry (distribution 2.8, apt `docker-registry`) on 127.0.0.1, and images the
//! test builds itself and pushes through the registry's HTTP API.
//!
//! [`Registry::start`] writes a config into a temporary directory (storage included), starts
//! `docker-registry serve` on a free port, waits until `/v2/` answers, and kills it and removes
//! everything on drop. [`Registry::start_with_basic_auth`] protects it with htpasswd (bcrypt,
//! generated with `htpasswd` from apache2-utils). [`LayerBuilder`] makes gzip'd tar layers,
//! [`TestImage`] puts layers and a config together, [`Registry::push_image`] uploads blobs
//! (POST + PUT monolithic upload) and the manifest; [`Registry::push_index`] adds an image index.
//! [`busybox_layer`] is a root filesystem with the host's static `/bin/busybox` and its applets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::process::{wait_until, ChildGuard};

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
    auth: Option<(String, String)>,
}

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
        Self::launch(std::net::Ipv4Addr::LOCALHOST, None)
    }

    /// An anonymous registry listening on `ip` (an address of a TAP or bridge the test owns, so
    /// that a guest can reach it) instead of loopback.
    pub fn start_on(ip: std::net::Ipv4Addr) -> Self {
        Self::launch(ip, None)
    }

    /// A registry that requires HTTP basic auth for everything.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::launch(
            std::net::Ipv4Addr::LOCALHOST,
            Some((user.to_string(), password.to_string())),
        )
    }

    fn launch(ip: std::net::Ipv4Addr, auth: Option<(String, String)>) -> Self {
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
        if let Some((user, password)) = &auth {
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

    /// One HTTP/1.1 request to the registry (with basic auth when configured).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpReply> {
        let mut stream = TcpStream::connect((self.ip, self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.host(),
            body.len()
        );
        if let Some((user, password)) = &self.auth {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
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
        Ok(HttpReply {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        })
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
