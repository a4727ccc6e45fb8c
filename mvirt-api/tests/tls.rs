//! TLS by default: joining pins the cluster CA, and certificates rotate without downtime.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use mvirt_api::server::{self, Running, ServerConfig};
use serde_json::json;

/// The serial of the certificate a listener presents to a fresh client (no session resumption),
/// as member `as_member` (the Raft listener requires a member certificate).
async fn presented_serial(addr: std::net::SocketAddr, data_dir: &std::path::Path) -> String {
    let ca = std::fs::read_to_string(data_dir.join("tls/ca.pem")).unwrap();
    let config = mvirt_common::tls::client_config(&ca, Some(member_cert(data_dir, 1))).unwrap();
    let stream = mvirt_common::tls::connect(&addr.to_string(), "127.0.0.1", config)
        .await
        .expect("TLS handshake");
    let certs = stream.get_ref().1.peer_certificates().unwrap().to_vec();
    mvirt_common::tls::cert_info(&certs[0]).unwrap().serial
}

async fn start(tweak: impl FnOnce(&mut ServerConfig), dir: &std::path::Path) -> Running {
    mvirt_common::telemetry::init_for_tests();
    let mut config = ServerConfig::for_tests(std::net::IpAddr::from([127, 0, 0, 1]), dir);
    tweak(&mut config);
    server::start(config, mvirt_common::Shutdown::new())
        .await
        .expect("start mvirt-api")
}

async fn join_token(http: &reqwest::Client, a: &Running, token: &str) -> serde_json::Value {
    let resp = http
        .post(format!("{}/v1/controlplane/join-tokens", a.api_url()))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

/// Three members with 6-second certificates (renewed every ~4 s) keep committing writes through
/// every member while each listener's certificate is replaced several times; a joiner pins the
/// CA by fingerprint, and a wrong fingerprint or no pin at all is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keeps_writing_while_every_certificate_rotates() {
    let lifetime = Duration::from_secs(6);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(|c| c.cert_lifetime = lifetime, dirs[0].path()).await;
    let token = a.admin_token().unwrap();
    let http = client_for(&a);
    let fingerprint = a.ca_fingerprint().unwrap();

    // The fingerprint is shown where the contract says.
    let t = join_token(&http, &a, &token).await;
    assert_eq!(t["ca_fingerprint"], json!(fingerprint));
    let cp: serde_json::Value = http
        .get(format!("{}/v1/controlplane", a.api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cp["ca_fingerprint"], json!(fingerprint));

    // Joining without a pin, or with another CA's fingerprint, is refused before the join.
    for pin in [None, Some(format!("sha256:{}", "0".repeat(64)))] {
        let mut config =
            ServerConfig::for_tests(std::net::IpAddr::from([127, 0, 0, 1]), dirs[3].path());
        config.join = Some(a.api_url());
        config.join_token = Some(t["token"].as_str().unwrap().to_string());
        config.join_ca_fingerprint = pin.clone();
        let err = server::start(config, mvirt_common::Shutdown::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("a join pinned to {pin:?} went through"))
            .to_string();
        assert!(
            err.contains("--ca-fingerprint") || err.contains("not the pinned"),
            "{pin:?}: {err}"
        );
    }

    // B joins by fingerprint (the token above is still unused), C by CA file.
    let b = start(
        |c| {
            c.cert_lifetime = lifetime;
            c.join = Some(a.api_url());
            c.join_token = Some(t["token"].as_str().unwrap().to_string());
            c.join_ca_fingerprint = Some(fingerprint.to_uppercase().replace("SHA256", "sha256"));
        },
        dirs[1].path(),
    )
    .await;
    let t2 = join_token(&http, &a, &token).await;
    let c = start(
        |c| {
            c.cert_lifetime = lifetime;
            c.join = Some(b.api_url());
            c.join_token = Some(t2["token"].as_str().unwrap().to_string());
            c.join_ca_file = Some(a.ca_file());
        },
        dirs[2].path(),
    )
    .await;
    assert_eq!(b.ca_fingerprint().unwrap(), fingerprint);
    assert_eq!(c.ca_fingerprint().unwrap(), fingerprint);
    let members = [&a, &b, &c];
    mvirt_testsupport::process::wait_until_async("3 voters", Duration::from_secs(60), || async {
        let cp: serde_json::Value = http
            .get(format!("{}/v1/controlplane", a.api_url()))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let voters = cp["members"]
            .as_array()?
            .iter()
            .filter(|m| m["role"] != "learner")
            .count();
        (voters == 3).then_some(())
    })
    .await;

    // Writes through every member for three lifetimes; every listener's serial is sampled.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let started = Instant::now();
    let mut written = Vec::new();
    let mut i = 0usize;
    while started.elapsed() < lifetime * 3 {
        let m = members[i % 3];
        let name = format!("net-{i}");
        let resp = http
            .post(format!("{}/v1/networks", m.api_url()))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(10))
            .json(&json!({"name": name, "spec": {"ipv4_prefix": format!("10.{}.{}.0/24", i / 256, i % 256)}}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("write {i} through {}: {e}", m.api_url()));
        assert_eq!(resp.status(), 201, "write {i}: {:?}", resp.text().await);
        written.push(name);
        for (n, m) in members.iter().enumerate() {
            for (listener, addr) in [
                ("rest", m.rest_addr),
                ("grpc", m.grpc_addr),
                ("raft", m.raft_addr),
            ] {
                seen.entry(format!("{n}/{listener}"))
                    .or_default()
                    .insert(presented_serial(addr, &m.data_dir).await);
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (listener, serials) in &seen {
        assert!(
            serials.len() >= 3,
            "{listener} presented only {} certificates in three lifetimes",
            serials.len()
        );
    }
    // Every acknowledged write is there on every member.
    for m in members {
        let list: serde_json::Value = http
            .get(format!("{}/v1/networks?limit=1000", m.api_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let names: BTreeSet<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["name"].as_str())
            .collect();
        for w in &written {
            assert!(names.contains(w.as_str()), "{w} missing on {}", m.api_url());
        }
    }
    // The renewed certificate is on disk too.
    let on_disk = mvirt_common::tls::CertStore::load(&dirs[0].path().join("tls")).unwrap();
    assert_eq!(Some(on_disk.info().serial), a.cert_serial());
    for m in [c, b, a] {
        m.stop().await;
    }
}

/// `--insecure-plaintext` serves plain HTTP on every listener (the mode the flag exists for),
/// shows no fingerprint and writes no CA.
#[tokio::test]
async fn insecure_plaintext_serves_plain_http_and_has_no_ca() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(|c| c.insecure_plaintext = true, dir.path()).await;
    assert!(a.api_url().starts_with("http://"), "{}", a.api_url());
    assert_eq!(a.ca_pem(), None);
    assert!(!a.ca_file().exists());
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/controlplane", a.api_url()))
        .bearer_auth(a.admin_token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cp: serde_json::Value = resp.json().await.unwrap();
    assert!(cp.get("ca_fingerprint").is_none(), "{cp}");
    a.stop().await;
}

/// The real binary with `--insecure-plaintext` logs a WARN that nothing is encrypted (an
/// operator sees it in the journal) and serves plain HTTP.
#[tokio::test]
async fn insecure_plaintext_binary_warns() {
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("member.log");
    let [rest, grpc, raft] = [(); 3].map(|_| mvirt_testsupport::net::free_port());
    let mut member = mvirt_testsupport::process::ChildGuard::spawn(
        "mvirt-api",
        Command::new(env!("CARGO_BIN_EXE_mvirt-api"))
            .args(["--insecure-plaintext", "--log-format", "text"])
            .args(["--metrics-listen", "off"])
            .arg("--data-dir")
            .arg(dir.path().join("api"))
            .args(["--listen", &format!("127.0.0.1:{rest}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    // It serves plain HTTP ...
    let url = format!("http://127.0.0.1:{rest}/v1/health");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match reqwest::get(&url).await {
            Ok(resp) => {
                assert_eq!(resp.status(), 200, "{url}");
                break;
            }
            Err(e) => {
                assert!(
                    member.is_running() && Instant::now() < deadline,
                    "{url} never answered over plain HTTP ({e}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // ... and said so before it did.
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        output.lines().any(|line| line.contains("WARN")
            && line.contains("--insecure-plaintext")
            && line.contains("WITHOUT TLS")),
        "mvirt-api warns that it serves without TLS:\n{output}"
    );
    member.kill();
}
