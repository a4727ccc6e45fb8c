//! Control-plane backup and restore on real processes (the binary as operators run it,
//! docs/deploy.md "Backups of the control plane"), and joins with --token-file:
//! a two-member cluster (the second joined with its token in a file, which is deleted and the
//! member restarted) takes writes; `mvirt-api backup` copies the bootstrap member's state while
//! it runs; writes after the backup; every member is lost; `mvirt-api restore` prepares a new
//! data dir on another address, which starts as a one-member cluster with exactly the backup's
//! state, the same CA and admin token, takes writes, survives a restart, and a new member joins
//! it (catching up by the snapshot the restore made). Bad input is refused with clear errors
//! and changes nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mvirt_testsupport::net::free_port;
use mvirt_testsupport::process::{wait_until_async, ChildGuard};
use serde_json::{json, Value};

mod common;

use common::processes::*;

/// Starts a member that joins `url` with its join token in a file (`--token-file`).
fn start_joining_with_file(
    ip: &str,
    root: &Path,
    name: &str,
    url: &str,
    token_file: &Path,
) -> Proc {
    let ports = (free_port(), free_port(), free_port());
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let guard = spawn_member(
        ip,
        &dir,
        ports,
        &[
            "--join".into(),
            url.into(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--ca-file".into(),
            cluster_ca_file(&dir).display().to_string(),
        ],
    );
    Proc {
        guard,
        url: format!("https://{ip}:{}", ports.0),
        ip: ip.to_string(),
        ports,
        dir,
    }
}

fn spawn_member(ip: &str, dir: &Path, ports: (u16, u16, u16), extra: &[String]) -> ChildGuard {
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
        .arg("--metrics-listen")
        .arg("off")
        .arg("--snapshot-every")
        .arg("40")
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    ChildGuard::spawn("mvirt-api", &mut cmd)
}

/// Runs `mvirt-api <args>` to its end: (success, stdout, stderr).
fn tool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mvirt-api"))
        .args(args)
        .output()
        .expect("run mvirt-api");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The applied index `mvirt-api backup` reports ("... at applied index N ...").
fn reported_index(stdout: &str) -> u64 {
    let rest = stdout
        .split("at applied index ")
        .nth(1)
        .unwrap_or_else(|| panic!("no applied index in {stdout:?}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

async fn sorted_networks(c: &Client, p: &Proc) -> Vec<String> {
    let mut names = c.network_names(p).await.expect("list networks");
    names.sort();
    names
}

async fn create_network(c: &Client, p: &Proc, name: &str, i: usize) {
    let (s, v) = c
        .req(
            reqwest::Method::POST,
            &format!("{}/v1/networks", p.url),
            Some(network_body(name, i)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "create network {name}: {v}");
}

/// Lists (sorted) of the member ids and api URLs of `/v1/controlplane`.
fn members(v: &Value) -> Vec<(u64, String)> {
    let mut m: Vec<(u64, String)> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["api_url"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    m.sort();
    m
}

fn file_list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_one_member_cluster_that_others_join() {
    let root = tempfile::tempdir().unwrap();
    let _dump = DumpLogsOnFailure(root.path().to_path_buf());
    let suffix = std::process::id() % 200 + 20;
    let ip = |i: u8| format!("127.{suffix}.7.{}", 11 + i);

    // --- a two-member cluster; b joins with --token-file.
    let mut a = start(&ip(0), root.path(), "a", None);
    let c = admin_client(&a).await;
    wait_until_async("a serves", Duration::from_secs(30), || async {
        c.get(&format!("{}/v1/projects", a.url)).await
    })
    .await;
    let token_file = root.path().join("join.token");
    std::fs::write(&token_file, format!("{}\n", join_token(&c, &a).await)).unwrap();
    let mut b = start_joining_with_file(&ip(1), root.path(), "b", &a.url, &token_file);
    wait_until_async("b joins as a voter", Duration::from_secs(60), || async {
        (voters(&c, &a).await == 2).then_some(())
    })
    .await;
    // The token file is read only when joining: b restarts without it.
    std::fs::remove_file(&token_file).unwrap();
    b.guard.kill();
    b.guard = spawn_member(
        &b.ip,
        &b.dir,
        b.ports,
        &[
            "--join".into(),
            a.url.clone(),
            "--token-file".into(),
            token_file.display().to_string(),
        ],
    );
    wait_until_async("b serves again", Duration::from_secs(30), || async {
        c.get(&format!("{}/v1/projects", b.url)).await
    })
    .await;

    let mut written = Vec::new();
    for i in 0..60 {
        let name = format!("net-{i:03}");
        create_network(&c, &a, &name, i).await;
        written.push(name);
    }
    let node_token = c
        .req(
            reqwest::Method::POST,
            &format!("{}/v1/tokens", a.url),
            Some(json!({"name": "host-a", "role": "node"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(node_token.0, 201, "{}", node_token.1);
    let applied = c.controlplane(&a).await.unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    let fingerprint = c.controlplane(&a).await.unwrap()["ca_fingerprint"].clone();

    // --- backup while a runs (its state writer trails acknowledged writes by milliseconds:
    // taken again until it holds everything acknowledged above).
    let backup = root.path().join("api.backup");
    let a_dir = a.dir.display().to_string();
    let out = wait_until_async(
        "a backup holding every write",
        Duration::from_secs(30),
        || {
            let _ = std::fs::remove_file(&backup);
            let (ok, stdout, stderr) = tool(&[
                "backup",
                "--data-dir",
                &a_dir,
                "--out",
                backup.to_str().unwrap(),
            ]);
            assert!(ok, "mvirt-api backup failed: {stderr}");
            async move { (reported_index(&stdout) >= applied).then_some(stdout) }
        },
    )
    .await;
    assert!(
        out.contains("cluster CA: included") && out.contains("admin token: included"),
        "{out}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&backup).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o600,
        "the backup holds the CA key and the admin token"
    );
    // Never overwrites.
    let (ok, _, stderr) = tool(&[
        "backup",
        "--data-dir",
        &a_dir,
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("exists already"), "{stderr}");

    // Written after the backup: not in the restored cluster.
    create_network(&c, &a, "after-backup", 999).await;
    let old_applied = c.controlplane(&a).await.unwrap()["applied_index"]
        .as_u64()
        .unwrap();

    // --- the whole control plane is lost.
    a.guard.kill();
    b.guard.kill();

    // --- bad input: refused, nothing created.
    let c_dir = root.path().join("c");
    let junk = root.path().join("junk");
    std::fs::write(&junk, "not a backup").unwrap();
    let (ok, _, stderr) = tool(&[
        "restore",
        "--from",
        junk.to_str().unwrap(),
        "--data-dir",
        c_dir.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("not a mvirt-api backup"), "{stderr}");
    assert!(
        file_list(&c_dir).is_empty(),
        "a refused restore left {:?}",
        file_list(&c_dir)
    );
    let (ok, _, stderr) = tool(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        &a_dir,
    ]);
    assert!(
        !ok && stderr.contains("restore only into a new data directory"),
        "{stderr}"
    );

    // --- restore into a new data dir, started on another address.
    let (ok, stdout, stderr) = tool(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        c_dir.to_str().unwrap(),
    ]);
    assert!(ok, "restore failed: {stderr}");
    assert!(stdout.contains("one-member cluster"), "{stdout}");
    let (ok, _, stderr) = tool(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        c_dir.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("exists"),
        "a second restore into the same dir: {stderr}"
    );

    let c_ports = (free_port(), free_port(), free_port());
    let mut restored = Proc {
        guard: spawn_member(&ip(2), &c_dir, c_ports, &[]),
        url: format!("https://{}:{}", ip(2), c_ports.0),
        ip: ip(2),
        ports: c_ports,
        dir: c_dir.clone(),
    };
    // Same CA, same admin token (the client of the old cluster works unchanged).
    assert_eq!(
        std::fs::read_to_string(c_dir.join("admin.token"))
            .unwrap()
            .trim(),
        c.token
    );
    let cp = wait_until_async(
        "the restored member leads",
        Duration::from_secs(30),
        || async {
            c.controlplane(&restored)
                .await
                .filter(|v| v["state"] == "leader")
        },
    )
    .await;
    assert_eq!(cp["ca_fingerprint"], fingerprint);
    // Revisions are log indexes, and agents keep the last one they applied: the restored
    // cluster continues past any index the old one can have reached.
    assert!(
        cp["applied_index"].as_u64().unwrap() > old_applied,
        "restored at {}, the old cluster had reached {old_applied}",
        cp["applied_index"]
    );
    let a_id = 1;
    assert_eq!(members(&cp), vec![(a_id, restored.url.clone())], "{cp}");
    assert!(
        !c_dir.join("restore.json").exists(),
        "the restore marker outlived the first start"
    );
    assert_eq!(
        sorted_networks(&c, &restored).await,
        written,
        "the restored state is the backup's"
    );
    let tokens = c.get(&format!("{}/v1/tokens", restored.url)).await.unwrap();
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "host-a"),
        "the node token survives: {tokens}"
    );
    create_network(&c, &restored, "after-restore", 1000).await;

    // A restart is an ordinary restart.
    restored.guard.kill();
    restored.guard = spawn_member(&restored.ip, &c_dir, c_ports, &[]);
    wait_until_async(
        "the restored member leads after a restart",
        Duration::from_secs(30),
        || async {
            c.controlplane(&restored)
                .await
                .filter(|v| v["state"] == "leader")
        },
    )
    .await;

    // --- a new member joins the restored cluster (the log before the restore is purged: it
    // catches up from the snapshot the restore stored).
    std::fs::write(
        cluster_ca_file(&c_dir),
        std::fs::read_to_string(c_dir.join("tls/ca.pem")).unwrap(),
    )
    .unwrap();
    std::fs::write(&token_file, join_token(&c, &restored).await).unwrap();
    let d = start_joining_with_file(&ip(3), root.path(), "d", &restored.url, &token_file);
    wait_until_async(
        "d joins the restored cluster",
        Duration::from_secs(60),
        || async { (voters(&c, &restored).await == 2).then_some(()) },
    )
    .await;
    let mut expected = written.clone();
    expected.push("after-restore".into());
    expected.sort();
    wait_until_async(
        "d has the restored state",
        Duration::from_secs(30),
        || async {
            c.network_names(&d).await.filter(|n| {
                let mut n = n.clone();
                n.sort();
                n == expected
            })
        },
    )
    .await;
    let cp = c.controlplane(&restored).await.unwrap();
    assert_eq!(members(&cp).len(), 2, "{cp}");
    assert!(
        members(&cp).iter().all(|(id, _)| *id != 2),
        "b's id is not reused: {cp}"
    );
}

/// `--join` with a token file that is missing or empty: the member refuses to start and says
/// which file; `--token` and `--token-file` together are refused by the flag parser.
#[test]
fn a_join_token_file_must_hold_a_token() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    let run = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_mvirt-api"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--raft-listen",
                "127.0.0.1:0",
            ])
            .args(["--metrics-listen", "off", "--log-endpoint", ""])
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--join",
                "https://127.0.0.1:1",
                "--ca-fingerprint",
                &format!("sha256:{}", "ab".repeat(32)),
            ])
            .arg("--token-file")
            .arg(file)
            .output()
            .unwrap()
    };
    let missing = root.path().join("missing.token");
    let out = run(&missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("missing.token"),
        "{stderr}"
    );
    assert!(!dir.join("member.json").exists());

    let empty = root.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let out = run(&empty);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("the file is empty"),
        "{stderr}"
    );
    assert!(!dir.join("member.json").exists());

    let out = Command::new(env!("CARGO_BIN_EXE_mvirt-api"))
        .args([
            "--join",
            "https://127.0.0.1:1",
            "--token",
            "x",
            "--token-file",
        ])
        .arg(&empty)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot be used with"),
        "{stderr}"
    );
}
