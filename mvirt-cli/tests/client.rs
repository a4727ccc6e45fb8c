//! The client as a whole against a real single-member mvirt-api started in-process: the event
//! stream, the cluster and API tokens, credentials and unreachable APIs, login and remotes,
//! version/completion/help, and that every endpoint the client calls is in the API's OpenAPI
//! document.

mod common;

use common::*;
use serde_json::Value;

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
        .env("MVIRT_CA_FILE", &api.ca_file)
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
    let doc: Value = api
        .http()
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
        ("post", "/v1/pods/{id}/{action}"),
        ("get", "/v1/pods/{id}/logs"),
        ("get", "/v1/pods/{id}/exec"),
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
        "pods",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_token_limited_to_a_project_says_so_and_cannot_write() {
    let api = start_api().await;
    let tok = api
        .json(&[
            "token",
            "create",
            "dash",
            "--role",
            "viewer",
            "--project",
            "a",
            "--project",
            "b",
        ])
        .await;
    assert_eq!(tok["role"], "viewer", "{tok}");
    assert_eq!(tok["projects"], serde_json::json!(["a", "b"]), "{tok}");
    let secret = tok["token"].as_str().expect("secret shown once");
    let me = api.json(&["whoami"]).await;
    assert_eq!(me["role"], "admin", "{me}");
    let env = [("MVIRT_URL", api.url.as_str()), ("MVIRT_TOKEN", secret)];
    let out = api.mvirt_env(&["whoami"], &env).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("role:     viewer") && out.stdout.contains("projects: a,b"),
        "{}",
        out.stdout
    );
    // A viewer reads but does not write (403: exit code 5).
    assert_eq!(api.mvirt_env(&["network", "list"], &env).await.code, 0);
    let out = api
        .mvirt_env(&["network", "create", "n", "--ipv4", "10.9.0.0/24"], &env)
        .await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("admin or operator"), "{}", out.stderr);
}

/// Trust on first use, as Incus does it: `mvirt login` shows the CA fingerprint the API
/// presents and pins the CA only once confirmed; later commands verify against the pin (no
/// `--ca-file`), and a server of another cluster (another member bootstrapped on its own, so
/// another CA) is refused with both fingerprints, by commands and by a new login, `--yes` or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_pins_the_cluster_ca_and_refuses_a_different_one() {
    let a = start_api().await;
    let b = start_api().await;
    assert!(
        a.tls && b.tls,
        "members serve TLS by default: {} {}",
        a.url,
        b.url
    );
    let fp_a = mvirt_common::tls::fingerprint_pem(&a.ca_pem).expect("fingerprint of A's CA");
    let fp_b = mvirt_common::tls::fingerprint_pem(&b.ca_pem).expect("fingerprint of B's CA");
    assert_ne!(fp_a, fp_b, "two bootstrapped members have two CAs");
    let no_ca = ("MVIRT_CA_FILE", "");
    let login = |url: &str, extra: &[&str]| {
        let mut args = vec!["login", url, "--token", a.token.as_str()];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let api_a = &a;
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        api_a.mvirt_env(&refs, &[no_ca]).await
    };

    // Without a terminal to ask on and without --yes or a fingerprint: refused, nothing saved,
    // and the message shows the fingerprint to check.
    let out = run(login(&a.url, &[])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&fp_a) && out.stderr.contains("--accept-fingerprint"),
        "{}",
        out.stderr
    );
    assert!(!a.config.exists(), "nothing saved");
    // A fingerprint that is not the presented one: refused naming both.
    let out = run(login(&a.url, &["--accept-fingerprint", &fp_b])).await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr.contains(&fp_a) && out.stderr.contains(&fp_b),
        "{}",
        out.stderr
    );
    assert!(!a.config.exists(), "nothing saved");

    // The right fingerprint (any spelling): pinned.
    let upper = fp_a.to_uppercase();
    let out = run(login(&a.url, &["--accept-fingerprint", &upper])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&fp_a), "{}", out.stdout);
    let config = std::fs::read_to_string(&a.config).expect("config saved");
    let saved: toml::Value = toml::from_str(&config).expect("config is TOML");
    assert_eq!(
        saved["remotes"]["default"]["ca_pem"].as_str(),
        Some(a.ca_pem.as_str()),
        "the CA the server presented is pinned"
    );
    let remotes = a
        .mvirt_env(&["remote", "list", "-o", "json"], &[no_ca])
        .await
        .json();
    assert_eq!(remotes[0]["ca"], fp_a.as_str());

    // Later commands (REST, SSE) verify against the pin alone.
    let out = a
        .mvirt_env(&["project", "list", "-o", "json"], &[no_ca])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = a.mvirt_env(&["events", "-o", "json"], &[no_ca]).await;
    assert_eq!(out.code, 0, "{out:?}");

    // Another cluster at the remote's place: every command is refused with both fingerprints.
    let out = a
        .mvirt_env(&["--url", &b.url, "project", "list"], &[no_ca])
        .await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr.contains("different cluster CA")
            && out.stderr.contains(&fp_a)
            && out.stderr.contains(&fp_b),
        "{}",
        out.stderr
    );
    // A new login of the same remote does not replace the pin, not even with --yes ...
    let out = run(login(&b.url, &["--yes"])).await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr.contains(&fp_a) && out.stderr.contains(&fp_b),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&a.config).unwrap(),
        config,
        "the pin is unchanged"
    );
    // ... and --ca-file naming the other CA is what the user chose for this command only.
    let out = a
        .mvirt_env(
            &["--url", &b.url, "--token", &b.token, "project", "list"],
            &[("MVIRT_CA_FILE", b.ca_file.to_str().unwrap())],
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    // A second remote for the other cluster is its own trust decision (--yes, first use).
    let out = a
        .mvirt_env(
            &["login", &b.url, "--name", "b", "--token", &b.token, "--yes"],
            &[no_ca],
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains(&fp_b), "{}", out.stderr);
    let out = a
        .mvirt_env(&["--remote", "b", "project", "list"], &[no_ca])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    // An https URL with no CA at all (no remote, no --ca-file) says how to get one.
    let out = a
        .mvirt_env(
            &["--config", "/nonexistent/config.toml", "project", "list"],
            &[no_ca, ("MVIRT_URL", &a.url), ("MVIRT_TOKEN", &a.token)],
        )
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("mvirt login"), "{}", out.stderr);
}
