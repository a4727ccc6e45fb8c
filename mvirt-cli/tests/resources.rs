//! Each resource's commands against a real single-member mvirt-api started in-process: projects,
//! networks, NICs, security groups, volumes and snapshots, templates and their import, nodes;
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

    // Retention of backups: set on create, changed, refused out of range, removed.
    let kept = api
        .json(&[
            "volume",
            "create",
            "logs",
            "--size",
            "1G",
            "--keep-backups",
            "3",
        ])
        .await;
    assert_eq!(kept["spec"]["backup_keep_last"], 3);
    let out = api
        .mvirt(&["backup", "retention", "logs", "--keep-last", "7"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("volume logs keeps its newest 7 ready backup(s)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        api.json(&["volume", "show", "logs"]).await["spec"]["backup_keep_last"],
        7
    );
    api.fails(
        &["backup", "retention", "logs", "--keep-last", "0"],
        1,
        "backup_keep_last",
    )
    .await;
    api.fails(&["backup", "retention", "logs"], 2, "--keep-last")
        .await;
    api.fails(
        &["backup", "retention", "nope", "--keep-last", "2"],
        3,
        "not found",
    )
    .await;
    let out = api.mvirt(&["backup", "retention", "logs", "--off"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        api.json(&["volume", "show", "logs"]).await["spec"]
            .get("backup_keep_last")
            .is_none_or(Value::is_null),
        "retention removed"
    );
    assert_eq!(api.mvirt(&["volume", "delete", "logs"]).await.code, 0);

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
        .env("MVIRT_CA_FILE", &api.ca_file)
        .env("MVIRT_TOKEN", &api.token)
        .env("MVIRT_CONFIG", &api.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mvirt");
    let http = api.http();
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
        .env("MVIRT_CA_FILE", &api.ca_file)
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
            .any(|l| l.contains("hv7") && l.contains("64GiB") && l.contains("pods-cli-test")),
        "{}",
        table.stdout
    );
    // `node show` names the pod artefacts version the node's agent reported.
    let shown = api.mvirt(&["node", "show", "hv7"]).await;
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l.contains("status.pod_artefacts_version") && l.contains("pods-cli-test")),
        "{}",
        shown.stdout
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
