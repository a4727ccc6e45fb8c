//! The `mvirt` binary against a real single-member mvirt-api started in-process: every command's
//! success and error paths, `-o json` parsed and checked, and the documented exit codes
//! (0 ok, 1 API error, 2 usage, 3 not found, 4 conflict, 5 unreachable/auth).

mod common;

use common::*;
use mvirt_api::proto;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_commands_create_list_show_delete_and_map_errors_to_exit_codes() {
    let api = start_api().await;
    let out = api
        .mvirt(&[
            "project",
            "create",
            "web",
            "--description",
            "web tier",
            "--label",
            "team=ops",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("project web created ("),
        "{}",
        out.stdout
    );

    let list = api.json(&["project", "list"]).await;
    assert_eq!(
        names(&list),
        ["default", "web"]
            .map(String::from)
            .to_vec()
            .into_iter()
            .filter(|n| names(&list).contains(n))
            .collect::<Vec<_>>()
    );
    assert!(
        names(&list).contains(&"web".to_string()) && names(&list).contains(&"default".to_string())
    );

    let yaml = api.mvirt(&["project", "show", "web", "-o", "yaml"]).await;
    assert_eq!(yaml.code, 0, "{yaml:?}");
    let v: Value = serde_yaml::from_str(&yaml.stdout).expect("yaml output parses");
    assert_eq!(v["description"], "web tier");
    assert_eq!(v["labels"]["team"], "ops");

    let table = api.mvirt(&["project", "list"]).await;
    assert!(
        table
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("NAME"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("web tier") && l.contains("team=ops")),
        "{}",
        table.stdout
    );

    api.fails(&["project", "create", "web"], 4, "already_exists")
        .await;
    api.fails(&["project", "show", "nope"], 3, "not_found")
        .await;
    api.fails(&["project", "create", "Not_A_Label"], 1, "invalid_argument")
        .await;

    // A project holding resources cannot be deleted.
    assert_eq!(
        api.mvirt(&[
            "-p",
            "web",
            "network",
            "create",
            "n1",
            "--ipv4",
            "10.9.0.0/24"
        ])
        .await
        .code,
        0
    );
    api.fails(&["project", "delete", "web"], 4, "conflict")
        .await;
    assert_eq!(
        api.mvirt(&["-p", "web", "network", "delete", "n1"])
            .await
            .code,
        0
    );
    let out = api.mvirt(&["project", "delete", "web"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    api.fails(&["project", "show", "web"], 3, "not found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_nics_and_security_groups_round_trip_with_conflicts() {
    let api = start_api().await;
    let net = api
        .json(&[
            "network",
            "create",
            "lan",
            "--ipv4",
            "10.0.0.0/24",
            "--ipv6",
            "fd00:1::/64",
            "--dns",
            "1.1.1.1",
        ])
        .await;
    assert_eq!(net["spec"]["ipv4_prefix"], "10.0.0.0/24");
    assert_eq!(net["spec"]["dns_servers"][0], "1.1.1.1");
    api.fails(
        &["network", "create", "bad", "--ipv4", "10.0.0.0/99"],
        1,
        "invalid_argument",
    )
    .await;

    let sg = api.json(&["sg", "create", "web"]).await;
    let rule = api
        .json(&[
            "sg",
            "rule",
            "add",
            "web",
            "--protocol",
            "tcp",
            "--port",
            "8000-8100",
            "--cidr",
            "0.0.0.0/0",
        ])
        .await;
    assert!(rule.is_object(), "{rule}");
    let rules = api.json(&["sg", "rule", "list", "web"]).await;
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
    assert_eq!(rules[0]["port_min"], 8000);
    assert_eq!(rules[0]["port_max"], 8100);
    assert_eq!(rules[0]["protocol"], "tcp");
    let rule_id = rules[0]["id"].as_str().expect("rule id").to_string();
    api.fails(
        &["sg", "rule", "add", "web", "--port", "90-10"],
        2,
        "invalid port",
    )
    .await;
    api.fails(
        &["sg", "rule", "add", "web", "--direction", "sideways"],
        1,
        "invalid_argument",
    )
    .await;

    let nic = api
        .json(&["nic", "create", "eth0", "--network", "lan", "--sg", "web"])
        .await;
    assert_eq!(nic["spec"]["network_id"], net["id"]);
    assert_eq!(nic["spec"]["security_group_ids"][0], sg["id"]);
    assert!(
        nic["spec"]["ipv4_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.0.0.")),
        "allocated address: {nic}"
    );
    assert!(
        nic["spec"]["mac_address"]
            .as_str()
            .is_some_and(|m| m.len() == 17),
        "allocated MAC: {nic}"
    );
    let nics = api.json(&["nic", "list"]).await;
    assert_eq!(names(&nics), ["eth0"]);
    api.fails(
        &["nic", "create", "eth1", "--network", "nowhere"],
        3,
        "not found",
    )
    .await;

    for (kind, name) in [("network", "lan"), ("nic", "eth0"), ("sg", "web")] {
        let shown = api.json(&[kind, "show", name]).await;
        assert_eq!(shown["name"], name);
        let table = api.mvirt(&[kind, "show", name]).await;
        assert!(
            table
                .stdout
                .lines()
                .any(|l| l.starts_with("name ") && l.ends_with(name)),
            "{}",
            table.stdout
        );
    }
    api.fails(&["sg", "delete", "web"], 4, "conflict").await;
    api.fails(&["network", "delete", "lan"], 4, "conflict")
        .await;
    let out = api.mvirt(&["network", "delete", "lan", "--force"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(api.json(&["nic", "list"]).await, serde_json::json!([]));
    assert_eq!(
        api.mvirt(&["sg", "rule", "delete", "web", &rule_id])
            .await
            .code,
        0
    );
    assert_eq!(
        api.json(&["sg", "show", "web"]).await["spec"]["rules"],
        serde_json::json!([])
    );
    assert_eq!(api.mvirt(&["sg", "delete", "web"]).await.code, 0);
    api.fails(&["sg", "show", "web"], 3, "not found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_resize_snapshot_and_refuse_shrinking() {
    let api = start_api().await;
    let vol = api
        .json(&["volume", "create", "data", "--size", "1G"])
        .await;
    assert_eq!(vol["spec"]["size_bytes"], GIB);
    api.fails(
        &["volume", "create", "x", "--size", "12Q"],
        2,
        "invalid size",
    )
    .await;

    let out = api
        .mvirt(&["volume", "resize", "data", "--size", "2G"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        api.json(&["volume", "show", "data"]).await["spec"]["size_bytes"],
        2 * GIB
    );
    api.fails(
        &["volume", "resize", "data", "--size", "1G"],
        1,
        "invalid_argument",
    )
    .await;

    assert_eq!(
        api.mvirt(&["volume", "snapshot", "create", "data", "before-upgrade"])
            .await
            .code,
        0
    );
    let snaps = api.json(&["volume", "snapshot", "list", "data"]).await;
    assert_eq!(names(&snaps), ["before-upgrade"]);
    let table = api.mvirt(&["volume", "list"]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("data") && l.contains("2GiB")),
        "{}",
        table.stdout
    );
    assert_eq!(
        api.mvirt(&["volume", "snapshot", "delete", "data", "before-upgrade"])
            .await
            .code,
        0
    );
    assert_eq!(
        api.json(&["volume", "snapshot", "list", "data"]).await,
        serde_json::json!([])
    );

    // If-Match: a stale revision is refused (412 → exit 4), the current one succeeds.
    let current = api.json(&["volume", "show", "data"]).await["revision"]
        .as_u64()
        .expect("revision");
    let stale = (current - 1).to_string();
    api.fails(
        &["--if-match", &stale, "volume", "delete", "data"],
        4,
        "precondition_failed",
    )
    .await;
    let out = api
        .mvirt(&[
            "--if-match",
            &current.to_string(),
            "volume",
            "delete",
            "data",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    api.fails(&["volume", "delete", "data"], 3, "not found")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_import_follows_progress_to_ready_and_reports_failure() {
    let api = start_api().await;
    let node = api.register_node("hv1", "", "").await;

    let no_wait = api
        .json(&[
            "template",
            "import",
            "quick",
            "--source",
            "http://127.0.0.1:1/a.raw",
            "--no-wait",
        ])
        .await;
    assert_eq!(no_wait["spec"]["source_url"], "http://127.0.0.1:1/a.raw");
    assert_eq!(no_wait["spec"]["format"], "raw");
    // The boot files' checksums go into the spec (`create` is the same command); a checksum
    // without its file is refused by the API.
    let sum = "ab".repeat(32);
    let with_sums = api
        .json(&[
            "template",
            "create",
            "sums",
            "--source",
            "http://127.0.0.1:1/b.raw",
            "--kernel",
            "http://127.0.0.1:1/vmlinuz",
            "--kernel-sha256",
            &sum,
            "--initramfs",
            "http://127.0.0.1:1/initrd",
            "--initramfs-sha256",
            &sum,
            "--no-wait",
        ])
        .await;
    assert_eq!(with_sums["spec"]["kernel_sha256"], sum.as_str());
    assert_eq!(with_sums["spec"]["initramfs_sha256"], sum.as_str());
    api.fails(
        &[
            "template",
            "import",
            "nosum",
            "--source",
            "http://127.0.0.1:1/c.raw",
            "--kernel-sha256",
            &sum,
            "--no-wait",
        ],
        1,
        "kernel_sha256 needs kernel_url",
    )
    .await;

    // Follow an import while "the node" reports progress and then success.
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mvirt"))
        .args([
            "template",
            "import",
            "deb",
            "--source",
            "http://127.0.0.1:1/deb.qcow2",
            "--format",
            "qcow2",
            "-o",
            "json",
        ])
        .env("MVIRT_URL", &api.url)
        .env("MVIRT_TOKEN", &api.token)
        .env("MVIRT_CONFIG", &api.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mvirt");
    let http = reqwest::Client::new();
    let tpl: Value = mvirt_testsupport::process::wait_until_async(
        "template deb exists",
        std::time::Duration::from_secs(20),
        || async {
            let r = http
                .get(format!("{}/v1/templates/deb", api.url))
                .bearer_auth(&api.token)
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json().await.ok()
        },
    )
    .await;
    let id = id_of(&tpl);
    let status = |phase: proto::Phase, done: u64| proto::ResourceStatus {
        kind: proto::ResourceKind::Template as i32,
        id: id.clone(),
        phase: phase as i32,
        import_bytes_done: done,
        import_bytes_total: 100,
        ..Default::default()
    };
    api.report(&node, status(proto::Phase::Importing, 40)).await;
    api.report(&node, status(proto::Phase::Ready, 100)).await;
    let out = child.wait_with_output().await.expect("mvirt finished");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(done["status"]["phase"], "ready");
    assert_eq!(done["status"]["import_bytes_done"], 100);

    // A failed import ends the command with the node's error.
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mvirt"))
        .args([
            "template",
            "import",
            "broken",
            "--source",
            "http://127.0.0.1:1/x.raw",
        ])
        .env("MVIRT_URL", &api.url)
        .env("MVIRT_TOKEN", &api.token)
        .env("MVIRT_CONFIG", &api.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mvirt");
    let tpl: Value = mvirt_testsupport::process::wait_until_async(
        "template broken exists",
        std::time::Duration::from_secs(20),
        || async {
            let r = http
                .get(format!("{}/v1/templates/broken", api.url))
                .bearer_auth(&api.token)
                .send()
                .await
                .ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json().await.ok()
        },
    )
    .await;
    api.report(
        &node,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Template as i32,
            id: id_of(&tpl),
            phase: proto::Phase::Failed as i32,
            message: "checksum mismatch".into(),
            ..Default::default()
        },
    )
    .await;
    let out = child.wait_with_output().await.expect("mvirt finished");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("template import failed: checksum mismatch")
    );

    let shown = api.json(&["template", "show", "deb"]).await;
    assert_eq!(shown["spec"]["format"], "qcow2");
    let list = api.json(&["template", "list"]).await;
    let mut n = names(&list);
    n.sort();
    assert_eq!(n, ["broken", "deb", "quick", "sums"]);
    let table = api.mvirt(&["template", "list"]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("deb") && l.contains("ready") && l.contains("100%")),
        "{}",
        table.stdout
    );
    assert_eq!(api.mvirt(&["template", "delete", "quick"]).await.code, 0);
    api.fails(&["template", "show", "quick"], 3, "not found")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_lifecycle_create_actions_routes_and_cascading_delete() {
    let api = start_api().await;
    let node = api.register_node("hv1", "", "").await;
    api.json(&[
        "template",
        "import",
        "deb",
        "--source",
        "http://127.0.0.1:1/deb.raw",
        "--no-wait",
    ])
    .await;
    api.json(&["network", "create", "lan", "--ipv4", "10.1.0.0/24"])
        .await;
    let key = api.dir.path().join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3Nza test@host\n").expect("write key");
    let ud = api.dir.path().join("user-data.yaml");
    std::fs::write(&ud, "#cloud-config\nhostname: web\n").expect("write user-data");

    let vm = api
        .json(&[
            "vm",
            "create",
            "web",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--template",
            "deb",
            "--disk-size",
            "5G",
            "--network",
            "lan",
            "--ssh-key",
            key.to_str().unwrap_or_default(),
            "--user-data",
            ud.to_str().unwrap_or_default(),
            "--node-selector",
            "zone=a",
        ])
        .await;
    let vm_id = id_of(&vm);
    assert_eq!(vm["spec"]["vcpus"], 2);
    assert_eq!(vm["spec"]["memory_bytes"], GIB);
    assert_eq!(
        vm["spec"]["ssh_authorized_keys"][0],
        "ssh-ed25519 AAAAC3Nza test@host"
    );
    assert_eq!(vm["spec"]["user_data"], "#cloud-config\nhostname: web\n");
    assert_eq!(vm["spec"]["node_selector"], "zone=a");
    assert_eq!(
        vm["spec"]["volume_ids"].as_array().map(Vec::len),
        Some(1),
        "owned root volume: {vm}"
    );
    assert_eq!(
        vm["spec"]["nic_ids"].as_array().map(Vec::len),
        Some(1),
        "owned NIC: {vm}"
    );

    api.fails(&["vm", "create", "web"], 4, "already_exists")
        .await;
    api.fails(&["vm", "create", "x", "--template", "nope"], 3, "not found")
        .await;
    api.fails(
        &["vm", "create", "x", "--memory", "lots"],
        2,
        "invalid size",
    )
    .await;
    api.fails(&["vm", "create", "x", "--cpus", "two"], 2, "invalid value")
        .await;

    // The scheduler places the VM on the only node.
    let http = reqwest::Client::new();
    mvirt_testsupport::process::wait_until_async(
        "vm placed",
        std::time::Duration::from_secs(20),
        || async {
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
        },
    )
    .await;
    let shown = api.json(&["vm", "show", "web"]).await;
    assert_eq!(shown["node_id"], node.as_str());
    assert_eq!(
        names(&api.json(&["vm", "list", "--node", "hv1"]).await),
        ["web"]
    );
    assert_eq!(
        api.json(&["vm", "list", "--phase", "running"]).await,
        serde_json::json!([]),
        "no node reported running"
    );
    assert_eq!(
        api.json(&["vm", "list", "-l", "tier=none"]).await,
        serde_json::json!([])
    );
    let list = api.json(&["vm", "list"]).await;
    assert_eq!(names(&list), ["web"]);
    let table = api.mvirt(&["vm", "list"]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with(&vm_id[..8]) && l.contains("web") && l.contains("1GiB")),
        "{}",
        table.stdout
    );

    let routes = api.json(&["route", "list"]).await;
    assert_eq!(routes[0]["vm"], "web");
    assert_eq!(routes[0]["node"], node.as_str());
    assert_eq!(routes[0]["network"], "lan");
    assert!(
        routes[0]["destination"]
            .as_str()
            .is_some_and(|d| d.starts_with("10.1.0.") && d.ends_with("/32")),
        "{routes}"
    );

    for (action, desired) in [
        ("stop", "stopped"),
        ("start", "running"),
        ("kill", "stopped"),
        ("restart", "running"),
    ] {
        let v = api.json(&["vm", action, "web"]).await;
        assert_eq!(v["spec"]["desired_state"], desired, "after {action}: {v}");
    }
    let out = api.mvirt(&["vm", "stop", "web"]).await;
    assert_eq!(out.stdout.trim(), "vm web: stop requested");
    api.fails(&["vm", "start", "ghost"], 3, "not found").await;
    // The console needs a node with a console relay; this one has none.
    api.fails(&["vm", "console", "web"], 4, "console").await;

    let out = api.mvirt(&["vm", "delete", "web"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        api.json(&["volume", "list"]).await,
        serde_json::json!([]),
        "owned root volume deleted with the VM"
    );
    assert_eq!(
        api.json(&["nic", "list"]).await,
        serde_json::json!([]),
        "owned NIC deleted with the VM"
    );
    api.fails(&["vm", "show", "web"], 3, "not found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_cordon_label_and_delete() {
    let api = start_api().await;
    let node = api.register_node("hv7", "", "").await;
    let list = api.json(&["node", "list"]).await;
    assert_eq!(names(&list), ["hv7"]);
    assert_eq!(list[0]["status"]["capacity"]["vcpus"], 16);
    let table = api.mvirt(&["node", "list"]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("hv7") && l.contains("64GiB")),
        "{}",
        table.stdout
    );

    assert_eq!(
        api.json(&["node", "cordon", "hv7"]).await["spec"]["schedulable"],
        false
    );
    assert_eq!(
        api.json(&["node", "uncordon", &node]).await["spec"]["schedulable"],
        true
    );
    let labelled = api
        .json(&["node", "label", "hv7", "--label", "ssd=true"])
        .await;
    assert_eq!(labelled["labels"]["ssd"], "true");
    api.fails(&["node", "label", "hv7", "--label", "oops"], 2, "not k=v")
        .await;
    api.fails(&["node", "show", "hv8"], 3, "not found").await;
    assert_eq!(api.mvirt(&["node", "delete", "hv7"]).await.code, 0);
    assert_eq!(api.json(&["node", "list"]).await, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_history_and_follow_live_changes() {
    let api = start_api().await;
    api.json(&["network", "create", "ev-net", "--ipv4", "10.2.0.0/24"])
        .await;
    let events = api.mvirt(&["events", "-o", "json"]).await;
    assert_eq!(events.code, 0, "{events:?}");
    let lines: Vec<Value> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|e| e["type"] == "network.created" && e["object"]["name"] == "ev-net"),
        "{}",
        events.stdout
    );
    let table = api.mvirt(&["events", "--type", "network"]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("network.created") && l.contains("ev-net")),
        "{}",
        table.stdout
    );

    // --follow prints changes made after it started.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mvirt"))
        .args(["events", "--follow", "-o", "json"])
        .env("MVIRT_URL", &api.url)
        .env("MVIRT_TOKEN", &api.token)
        .env("MVIRT_CONFIG", &api.config)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mvirt");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    // Create until the follower sees it (the follower may connect after the first create).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seen = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "events --follow never showed a new network"
        );
        let name = format!("live-{}", mvirt_testsupport::unique_suffix());
        api.json(&["network", "create", &name, "--ipv6", "fd00:42::/64"])
            .await;
        let Ok(Ok(Some(line))) =
            tokio::time::timeout(std::time::Duration::from_secs(2), reader.next_line()).await
        else {
            continue;
        };
        let v: Value = serde_json::from_str(&line).expect("a JSON event line");
        if v["type"] == "network.created" {
            break v;
        }
    };
    assert!(
        seen["object"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("live-")),
        "{seen}"
    );
    child.kill().await.expect("stop follower");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_members_join_tokens_and_api_tokens() {
    let api = start_api().await;
    let cp = api.json(&["cluster", "members"]).await;
    assert_eq!(cp["members"].as_array().map(Vec::len), Some(1), "{cp}");
    assert_eq!(cp["members"][0]["role"], "leader");
    let table = api.mvirt(&["cluster", "members"]).await;
    assert!(
        table.stdout.contains("leader") && table.stdout.contains(&api.url),
        "{}",
        table.stdout
    );
    let jt = api.json(&["cluster", "join-token", "--ttl", "60"]).await;
    assert!(jt["token"].as_str().is_some_and(|t| !t.is_empty()), "{jt}");
    api.fails(&["cluster", "join-token", "--ttl", "0"], 1, "ttl_seconds")
        .await;
    api.fails(&["cluster", "remove", "424242"], 3, "").await;

    let tok = api
        .json(&["token", "create", "ci", "--role", "admin"])
        .await;
    let secret = tok["token"]
        .as_str()
        .expect("secret shown once")
        .to_string();
    let tokens = api.json(&["token", "list"]).await;
    assert!(
        tokens.as_array().is_some_and(|a| a
            .iter()
            .any(|t| t["name"] == "ci" && t.get("token").is_none())),
        "{tokens}"
    );
    // The new token works.
    let out = api
        .mvirt_env(
            &["project", "list"],
            &[("MVIRT_URL", &api.url), ("MVIRT_TOKEN", &secret)],
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        api.mvirt(&["token", "delete", tok["id"].as_str().unwrap_or_default()])
            .await
            .code,
        0
    );
    let out = api
        .mvirt_env(
            &["project", "list"],
            &[("MVIRT_URL", &api.url), ("MVIRT_TOKEN", &secret)],
        )
        .await;
    assert_eq!(out.code, 5, "revoked token: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_unreachable_and_usage_errors_have_their_exit_codes() {
    let api = start_api().await;
    let out = api
        .mvirt_env(
            &["vm", "list"],
            &[("MVIRT_URL", &api.url), ("MVIRT_TOKEN", "wrong")],
        )
        .await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr.contains("unknown or revoked token") && out.stderr.contains("mvirt login"),
        "{}",
        out.stderr
    );
    let out = api
        .mvirt_env(&["vm", "list"], &[("MVIRT_URL", &api.url)])
        .await;
    assert_eq!(out.code, 5, "no token: {out:?}");

    let port = mvirt_testsupport::net::free_port();
    let dead = format!("http://127.0.0.1:{port}");
    let out = api
        .mvirt_env(
            &["vm", "list"],
            &[("MVIRT_URL", &dead), ("MVIRT_TOKEN", "x")],
        )
        .await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr.contains("cannot reach the mvirt API"),
        "{}",
        out.stderr
    );

    assert_eq!(api.mvirt(&["vm", "frobnicate"]).await.code, 2);
    assert_eq!(api.mvirt(&["vm", "list", "-o", "xml"]).await.code, 2);
    let out = api.mvirt(&["--remote", "nope", "vm", "list"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("no remote named \"nope\""),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_remote_that_later_commands_use_and_flags_override() {
    let api = start_api().await;
    let token_file = api.dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", api.token)).expect("write token file");
    let tf = token_file.to_str().unwrap_or_default();

    let out = api
        .mvirt_env(
            &["login", "--name", "lab", "--token-file", tf],
            &[("MVIRT_URL", "http://127.0.0.1:1")],
        )
        .await;
    assert_eq!(out.code, 5, "login verifies against the API: {out:?}");
    assert!(!api.config.exists(), "nothing saved after a failed login");
    api.mvirt_env(
        &["login", "--name", "bad", "--token", "wrong"],
        &[("MVIRT_URL", &api.url)],
    )
    .await;
    assert!(!api.config.exists());

    let out = api
        .mvirt_env(
            &[
                "login",
                "--name",
                "lab",
                "--token-file",
                tf,
                "-p",
                "default",
            ],
            &[("MVIRT_URL", &api.url)],
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&api.config)
            .expect("config saved")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Now no URL/token in the environment: the config supplies them.
    let out = api.mvirt_env(&["project", "list", "-o", "json"], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    // A flag overrides the stored URL.
    let out = api
        .mvirt_env(&["--url", "http://127.0.0.1:1", "project", "list"], &[])
        .await;
    assert_eq!(out.code, 5);
    // MVIRT_PROJECT overrides the stored project.
    let out = api
        .mvirt_env(
            &["network", "create", "p-net", "--ipv4", "10.3.0.0/24"],
            &[("MVIRT_PROJECT", "nope")],
        )
        .await;
    assert_eq!(out.code, 3, "unknown project: {out:?}");

    let remotes = api
        .mvirt_env(&["remote", "list", "-o", "json"], &[])
        .await
        .json();
    assert_eq!(remotes[0]["name"], "lab");
    assert_eq!(remotes[0]["current"], "*");
    assert_eq!(remotes[0]["token"], "set");
    assert!(
        !api.mvirt_env(&["remote", "list"], &[])
            .await
            .stdout
            .contains(&api.token),
        "tokens are never printed"
    );
    assert_eq!(
        api.mvirt_env(&["remote", "use", "other"], &[]).await.code,
        2
    );
    assert_eq!(
        api.mvirt_env(&["remote", "remove", "lab"], &[]).await.code,
        0
    );
    assert_eq!(
        api.mvirt_env(&["remote", "list", "-o", "json"], &[])
            .await
            .json(),
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_completion_help_and_logs() {
    let api = start_api().await;
    let out = api.mvirt(&["version"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")) && out.stdout.contains("health: ok"),
        "{}",
        out.stdout
    );
    let v = api.json(&["version"]).await;
    assert_eq!(v["api"]["health"]["status"], "ok");

    for (shell, marker) in [
        ("bash", "_mvirt()"),
        ("zsh", "#compdef mvirt"),
        ("fish", "complete -c mvirt"),
    ] {
        let out = api.mvirt(&["completion", shell]).await;
        assert_eq!(out.code, 0);
        assert!(
            out.stdout.contains(marker),
            "{shell} completion lacks {marker}"
        );
    }
    let help = api.mvirt(&["--help"]).await;
    assert!(
        help.stdout.contains("Examples:") && help.stdout.contains("Exit codes:"),
        "{}",
        help.stdout
    );
    let help = api.mvirt(&["vm", "create", "--help"]).await;
    assert!(
        help.stdout.contains("--node-selector") && help.stdout.contains("Examples:"),
        "{}",
        help.stdout
    );

    // This member runs without mvirt-log: the API says so, and the CLI shows it plainly.
    let out = api.mvirt(&["logs", "--limit", "5"]).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.starts_with("Error: "), "{}", out.stderr);
    api.fails(&["logs", "--since", "yesterday"], 2, "invalid time")
        .await;
}

/// Every endpoint the CLI and TUI call exists in the API's generated OpenAPI document with that
/// method, so an API change that would break the client fails here by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_the_client_uses_is_in_the_openapi_document() {
    let api = start_api().await;
    let doc: Value = reqwest::Client::new()
        .get(format!("{}/v1/openapi.json", api.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("GET openapi.json")
        .json()
        .await
        .expect("openapi JSON");
    let used = [
        ("get", "/v1/health"),
        ("get", "/v1/projects"),
        ("post", "/v1/projects"),
        ("get", "/v1/projects/{id}"),
        ("delete", "/v1/projects/{id}"),
        ("get", "/v1/nodes"),
        ("get", "/v1/nodes/{id}"),
        ("put", "/v1/nodes/{id}"),
        ("delete", "/v1/nodes/{id}"),
        ("post", "/v1/vms/{id}/{action}"),
        ("put", "/v1/vms/{id}"),
        ("get", "/v1/vms/{id}/console"),
        ("post", "/v1/volumes/{id}/resize"),
        ("post", "/v1/volumes/{id}/snapshots"),
        ("delete", "/v1/volumes/{id}/snapshots/{snapshot_id}"),
        ("post", "/v1/security-groups/{id}/rules"),
        ("delete", "/v1/security-groups/{id}/rules/{rule_id}"),
        ("get", "/v1/tokens"),
        ("post", "/v1/tokens"),
        ("delete", "/v1/tokens/{id}"),
        ("get", "/v1/controlplane"),
        ("post", "/v1/controlplane/join-tokens"),
        ("delete", "/v1/controlplane/members/{id}"),
        ("get", "/v1/events"),
        ("get", "/v1/logs"),
    ];
    let mut missing = Vec::new();
    for (method, path) in used {
        if doc["paths"][path][method].is_null() {
            missing.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    for coll in [
        "networks",
        "nics",
        "security-groups",
        "templates",
        "volumes",
        "vms",
    ] {
        for (method, path) in [
            ("get", format!("/v1/{coll}")),
            ("post", format!("/v1/{coll}")),
            ("get", format!("/v1/{coll}/{{id}}")),
            ("delete", format!("/v1/{coll}/{{id}}")),
        ] {
            if doc["paths"][path.as_str()][method].is_null() {
                missing.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "endpoints the client uses but the API does not document: {missing:?}"
    );
}
