//! A real multi-process control plane on 127.0.0.x for the cluster tests: members as child
//! processes (optionally as another user), an admin client, join tokens, their logs on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mvirt_testsupport::net::free_port;
use mvirt_testsupport::process::ChildGuard;
use serde_json::{json, Value};

/// Prints the members' logs when the test fails (the temp dir goes away with it).
pub struct DumpLogsOnFailure(pub PathBuf);

impl Drop for DumpLogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for name in ["a", "b", "c", "d"] {
            let path = self.0.join(name).join("member.log");
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("===== {} (last 40 lines)", path.display());
                for l in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

pub struct Proc {
    pub guard: ChildGuard,
    pub url: String,
    pub ip: String,
    pub ports: (u16, u16, u16),
    pub dir: PathBuf,
}

pub fn spawn(
    ip: &str,
    dir: &Path,
    ports: (u16, u16, u16),
    join: Option<(&str, &str)>,
) -> ChildGuard {
    spawn_as(ip, dir, ports, join, None)
}

/// Like `spawn`, optionally as another user (the partition test tells members' traffic apart by
/// socket owner: on loopback every connection's source address is 127.0.0.1).
pub fn spawn_as(
    ip: &str,
    dir: &Path,
    ports: (u16, u16, u16),
    join: Option<(&str, &str)>,
    uid: Option<u32>,
) -> ChildGuard {
    std::fs::create_dir_all(dir).unwrap();
    if let Some(uid) = uid {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("member.log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvirt-api"));
    cmd.arg("--listen")
        .arg(format!("{ip}:{}", ports.0))
        .arg("--grpc-listen")
        .arg(format!("{ip}:{}", ports.1))
        .arg("--raft-listen")
        .arg(format!("{ip}:{}", ports.2))
        .arg("--data-dir")
        .arg(dir)
        .arg("--log-endpoint")
        .arg("")
        .arg("--snapshot-every")
        .arg("40")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    if let Some((url, token)) = join {
        // The joiner pins the cluster CA (copied next to the members' dirs by `admin_client`).
        cmd.arg("--join")
            .arg(url)
            .arg("--token")
            .arg(token)
            .arg("--ca-file")
            .arg(cluster_ca_file(dir));
    }
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    ChildGuard::spawn("mvirt-api", &mut cmd)
}

pub fn start(ip: &str, root: &Path, name: &str, join: Option<(&str, &str)>) -> Proc {
    let ports = (free_port(), free_port(), free_port());
    let dir = root.join(name);
    let guard = spawn(ip, &dir, ports, join);
    Proc {
        guard,
        url: format!("https://{ip}:{}", ports.0),
        ip: ip.to_string(),
        ports,
        dir,
    }
}

/// Every write attempt: the object name and the HTTP status (or the transport error).
pub type History = Vec<(String, Result<u16, String>)>;

pub struct Client {
    pub http: reqwest::Client,
    pub token: String,
}

impl Client {
    pub async fn req(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
        idem: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let mut r = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(20));
        if let Some(b) = body {
            r = r.json(&b);
        }
        if let Some(k) = idem {
            r = r.header("idempotency-key", k);
        }
        let resp = r.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub async fn get(&self, url: &str) -> Option<Value> {
        match self.req(reqwest::Method::GET, url, None, None).await {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    pub async fn controlplane(&self, p: &Proc) -> Option<Value> {
        self.get(&format!("{}/v1/controlplane", p.url)).await
    }

    pub async fn network_names(&self, p: &Proc) -> Option<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let url = match &token {
                None => format!("{}/v1/networks?limit=1000", p.url),
                Some(t) => format!("{}/v1/networks?limit=1000&page_token={t}", p.url),
            };
            let page = self.get(&url).await?;
            names.extend(
                page["items"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n["name"].as_str().map(String::from)),
            );
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return Some(names),
            }
        }
    }
}

/// A client with the bootstrap member's admin token (the file appears once it is usable).
pub async fn admin_client(bootstrap: &Proc) -> Client {
    let token_path = bootstrap.dir.join("admin.token");
    let read = || {
        std::fs::read_to_string(&token_path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(token) = read() {
                break token;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // A member that never got going says why in its log (a port taken, a start-up error).
    let token = waited.unwrap_or_else(|_| {
        let log = std::fs::read_to_string(bootstrap.dir.join("member.log")).unwrap_or_default();
        panic!("no admin token file after 30 s; the member's log:\n{log}")
    });
    // The CA file exists before the token file (created first at bootstrap).
    let ca = std::fs::read_to_string(bootstrap.dir.join("tls/ca.pem")).expect("the cluster CA");
    std::fs::write(cluster_ca_file(&bootstrap.dir), &ca).unwrap();
    Client {
        http: super::https_client(&ca),
        token,
    }
}

/// `<root>/cluster-ca.pem` for members in `<root>/<name>`: the CA joiners pin (`--ca-file`).
pub fn cluster_ca_file(member_dir: &Path) -> PathBuf {
    member_dir
        .parent()
        .expect("member dirs live under a root")
        .join("cluster-ca.pem")
}

pub async fn join_token(c: &Client, leader: &Proc) -> String {
    let (s, v) = c
        .req(
            reqwest::Method::POST,
            &format!("{}/v1/controlplane/join-tokens", leader.url),
            Some(json!({"ttl_seconds": 600})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

pub async fn voters(c: &Client, p: &Proc) -> usize {
    c.controlplane(p)
        .await
        .and_then(|v| {
            v["members"]
                .as_array()
                .map(|m| m.iter().filter(|x| x["role"] != "learner").count())
        })
        .unwrap_or(0)
}

/// Writes before the late joiners arrive: enough that the bootstrap member snapshots (every 40
/// entries here) and purges its log (openraft purges in batches of 64 and keeps 10 entries), so
/// a joiner can only catch up by installing the snapshot.
pub const PRE_WRITES: usize = 120;

pub fn network_body(name: &str, i: usize) -> Value {
    json!({"name": name, "spec": {"ipv4_prefix": format!("10.{}.{}.0/24", (i / 256) % 256, i % 256)}})
}
