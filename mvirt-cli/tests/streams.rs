//! Commands that stream through the API: `mvirt logs` (with a real mvirt-log behind the API;
//! `--trace` lists one request's entries, the id taken from `--show-trace`) and `mvirt vm console` (through the API's WebSocket relay).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_query_filters_and_follow_show_audit_entries_from_mvirt_log() {
    let logdir = tempfile::tempdir().expect("tempdir");
    let shutdown = mvirt_common::Shutdown::new();
    let endpoint = start_log(logdir.path(), shutdown.clone()).await;
    let api = start_api_with(|c| c.log_endpoint = endpoint.clone()).await;
    let net = api
        .json(&["network", "create", "audited", "--ipv4", "10.7.0.0/24"])
        .await;
    let net_id = id_of(&net);

    // The audit entry reaches mvirt-log asynchronously: wait for it.
    let entries = mvirt_testsupport::process::wait_until_async(
        "audit entry for the network",
        Duration::from_secs(20),
        || async {
            let v = api
                .json(&["logs", "--object", &net_id, "--since", "1h"])
                .await;
            v.as_array().filter(|a| !a.is_empty()).cloned()
        },
    )
    .await;
    assert!(
        entries.iter().all(|e| e["object_ids"]
            .as_array()
            .is_some_and(|o| o.iter().any(|i| i == net_id.as_str()))),
        "{entries:?}"
    );
    assert!(entries.iter().any(|e| e["level"] == "audit"), "{entries:?}");
    let table = api.mvirt(&["logs", "--object", &net_id]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("AUDIT") && l.contains(&net_id[..8])),
        "{}",
        table.stdout
    );
    let none = api
        .json(&["logs", "--object", &net_id, "--level", "error"])
        .await;
    assert_eq!(none, serde_json::json!([]));
    api.fails(&["logs", "--level", "loud"], 1, "unknown level")
        .await;

    // --follow prints entries written after it started.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mvirt"))
        .args(["logs", "--follow", "-o", "json"])
        .env("MVIRT_URL", &api.url)
        .env("MVIRT_CA_FILE", &api.ca_file)
        .env("MVIRT_TOKEN", &api.token)
        .env("MVIRT_CONFIG", &api.config)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mvirt");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    'outer: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "logs --follow never showed the new network"
        );
        n += 1;
        let name = format!("followed{n}");
        let created = api
            .json(&[
                "network",
                "create",
                &name,
                "--ipv6",
                &format!("fd00:{n}::/64"),
            ])
            .await;
        let id = id_of(&created);
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await
            else {
                continue;
            };
            let v: Value = serde_json::from_str(&line).expect("one JSON entry per line");
            if v["object_ids"]
                .as_array()
                .is_some_and(|o| o.iter().any(|i| i == id.as_str()))
            {
                break 'outer;
            }
        }
    }
    child.kill().await.expect("stop follower");
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_trace_lists_only_the_entries_of_one_request() {
    let logdir = tempfile::tempdir().expect("tempdir");
    let shutdown = mvirt_common::Shutdown::new();
    let endpoint = start_log(logdir.path(), shutdown.clone()).await;
    let api = start_api_with(|c| c.log_endpoint = endpoint.clone()).await;

    // `--show-trace` prints the id of each call; the created object names the one that made it.
    let out = api
        .mvirt(&[
            "--show-trace",
            "network",
            "create",
            "traced",
            "--ipv4",
            "10.9.0.0/24",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let net = out.json();
    let net_id = id_of(&net);
    let trace = net["trace_id"].as_str().expect("trace_id").to_string();
    let printed: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("request-id: "))
        .collect();
    assert!(printed.contains(&trace.as_str()), "{}", out.stderr);
    // Another request, with entries of its own.
    let other = api
        .json(&["network", "create", "untraced", "--ipv4", "10.10.0.0/24"])
        .await;
    let other_id = id_of(&other);
    assert_ne!(other["trace_id"], trace.as_str());

    // `mvirt logs --trace <id>` lists that request's audit entry and nothing of the other one.
    let entries = mvirt_testsupport::process::wait_until_async(
        "the create's audit entry under its trace id",
        Duration::from_secs(20),
        || async {
            let v = api.json(&["logs", "--trace", &trace]).await;
            v.as_array()
                .filter(|a| {
                    a.iter().any(|e| {
                        e["object_ids"]
                            .as_array()
                            .is_some_and(|o| o.iter().any(|i| i == net_id.as_str()))
                    })
                })
                .cloned()
        },
    )
    .await;
    for entry in &entries {
        assert_eq!(entry["trace_id"], trace.as_str(), "{entry}");
        assert!(
            !entry["object_ids"]
                .as_array()
                .is_some_and(|o| o.iter().any(|i| i == other_id.as_str())),
            "{entry}"
        );
    }
    assert!(
        entries
            .iter()
            .any(|e| e["component"] == "mvirt-api" && e["level"] == "audit"),
        "{entries:?}"
    );
    // The other request's entries exist (so the filter, not an empty log, kept them out).
    let all = api
        .json(&["logs", "--object", &other_id, "--since", "1h"])
        .await;
    assert!(!all.as_array().unwrap().is_empty(), "{all}");
    // As a table: whole object ids, greppable.
    let table = api.mvirt(&["logs", "--trace", &trace]).await;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("AUDIT") && l.contains(&net_id)),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains(&other_id), "{}", table.stdout);
    // An id no request had lists nothing; a malformed one is the API's 400.
    let none = api.json(&["logs", "--trace", "no-such-request"]).await;
    assert_eq!(none, serde_json::json!([]));
    api.fails(&["logs", "--trace", "bad id"], 1, "trace_id")
        .await;
    shutdown.trigger();
}

/// Reads console output into `seen` until it contains `needle`.
async fn read_until(stdout: &mut tokio::process::ChildStdout, seen: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 256];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(20), stdout.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {:?} on the console; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(seen)
                )
            })
            .expect("read console");
        assert!(
            n > 0,
            "console closed early; got {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_relays_both_ways_through_the_api_and_ctrl_a_t_detaches() {
    let api = start_api().await;
    let secret = "console-secret-for-test".to_string();
    let (endpoint, server) = start_echo_console(&api, &secret).await;
    let node = api.register_node("hv1", &endpoint, &secret).await;
    let vm = api.json(&["vm", "create", "web", "--memory", "256M"]).await;
    let vm_id = id_of(&vm);
    let http = api.http();
    mvirt_testsupport::process::wait_until_async("vm placed", Duration::from_secs(20), || async {
        let v: Value = http
            .get(format!("{}/v1/vms/{vm_id}", api.url))
            .bearer_auth(&api.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["node_id"] == node.as_str()).then_some(())
    })
    .await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mvirt"))
        .args(["vm", "console", "web"])
        .env("MVIRT_URL", &api.url)
        .env("MVIRT_CA_FILE", &api.ca_file)
        .env("MVIRT_TOKEN", &api.token)
        .env("MVIRT_CONFIG", &api.config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mvirt");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"guest login: ").await;
    stdin.write_all(b"root\r").await.expect("type");
    read_until(&mut stdout, &mut seen, b"ROOT\r").await;
    // Ctrl+a Ctrl+a sends one literal Ctrl+a; Ctrl+a t detaches and is not sent.
    stdin.write_all(b"x\x01\x01y").await.expect("type");
    read_until(&mut stdout, &mut seen, b"X\x01Y").await;
    stdin.write_all(b"\x01t").await.expect("type");
    stdin.flush().await.expect("flush");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("mvirt exits on Ctrl+a t")
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Detached from web"));
    assert!(
        !out.stdout.contains(&b'T'),
        "the escape was not sent to the guest: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );

    api.fails(&["vm", "console", "ghost"], 3, "not found").await;
    server.abort();
}
