//! The web dashboard end to end: a whole host (mvirt-log, -zfs, -ebpf, -vmm with QEMU TCG
//! guests, mvirt-api serving the built UI from `mvirt-ui/dist`, the node agent) is started here,
//! then `node mvirt-ui/e2e/run.mjs` drives the UI in a real headless Chromium against it (log
//! in, create a network and a VM, watch it run, chart its usage from the node, use its console,
//! see a VM created with the real `mvirt` CLI (this checkout's, logged in with `mvirt login
//! --accept-fingerprint`) appear live, the node's page with the host's usage, a viewer without
//! the buttons the API would refuse, delete; axe-core on every page; a screenshot of every
//! page). The UI must be built
//! first: `bash scripts/test-ui.sh` does `npm ci && npm run build` and then runs this test.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use mvirt_log::server::{BoundServer, Config as LogConfig};
use mvirt_testsupport::process::wait_until_async;

/// The whole browser run (guest boot under TCG included) must finish within this.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

fn ui_dir() -> PathBuf {
    mvirt_testsupport::workspace_root().join("mvirt-ui")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_logs_in_creates_a_vm_that_runs_opens_its_console_and_follows_changes_live() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let ui = ui_dir();
    let dist = ui.join("dist");
    assert!(
        dist.join("index.html").is_file(),
        "the UI is not built ({} is missing): run `bash scripts/test-ui.sh` (npm ci && npm run build in mvirt-ui/)",
        dist.join("index.html").display()
    );
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "mvirt-ui/node_modules is missing: run `npm ci` in mvirt-ui/ (scripts/test-ui.sh does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/setup.sh (apt-get install chromium)"
    );

    // The CLI step runs this checkout's `mvirt` binary (built first if there is no fresh one).
    let cli = mvirt_testsupport::cli::mvirt_cli_binary();
    assert!(
        cli.is_file(),
        "the mvirt CLI is missing at {}",
        cli.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let log = BoundServer::bind(LogConfig {
        listen: common::socket(root, "log"),
        data_dir: root.join("log"),
        retention: Default::default(),
    })
    .await
    .unwrap();
    let log_endpoint = log.endpoint();
    let log_shutdown = mvirt_common::Shutdown::new();
    tokio::spawn(log.serve(log_shutdown.clone()));

    let host = HostDaemons::start(root, &root.join("images"), &log_endpoint).await;
    let mut config =
        mvirt_api::server::ServerConfig::for_tests("127.0.0.1".parse().unwrap(), &root.join("api"));
    config.log_endpoint = log_endpoint.clone();
    config.ui_dir = Some(dist.clone());
    let api = mvirt_api::server::start(config, mvirt_common::Shutdown::new())
        .await
        .expect("mvirt-api starts");
    let token = api.admin_token().expect("admin token");
    let rest = Rest::for_member(&api, &token);
    rest.wait_ready().await;

    let agent = Agent::start(agent_config(
        "node-ui",
        &root.join("agent"),
        &host.endpoints,
        &api,
        &token,
    ));
    let template_id = rest.create_template("tiny", &host.images).await;
    wait_until_async(
        "the template to be imported",
        Duration::from_secs(120),
        || {
            let rest = rest.clone();
            let path = format!("/v1/templates/{template_id}");
            async move { (rest.get(&path).await["status"]["phase"] == "ready").then_some(()) }
        },
    )
    .await;

    let shots = std::env::var_os("MVIRT_UI_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| mvirt_testsupport::workspace_root().join("target/mvirt-ui-screenshots"));
    let mut run = tokio::process::Command::new("node");
    // The API serves TLS with its own cluster CA: the browser trusts that CA for real, through
    // the NSS database of a HOME of its own (as a user who imported the CA would), and Node's
    // fetch (the spec check, REST calls of the script) through NODE_EXTRA_CA_CERTS. No
    // "ignore certificate errors" anywhere.
    if api.api_url().starts_with("https://") {
        let ca_file = member_ca_file(&api);
        let ca_pem = std::fs::read_to_string(&ca_file).expect("the cluster CA");
        let browser_home = mvirt_testsupport::tls::browser_home_trusting(root, &ca_pem);
        // The fingerprint an operator reads off the cluster's CA and hands to `mvirt login
        // --accept-fingerprint` (the CLI pins the CA the server presents only if it matches).
        let fingerprint =
            mvirt_common::tls::fingerprint_pem(&ca_pem).expect("the CA's fingerprint");
        run.env("HOME", &browser_home)
            .env("NODE_EXTRA_CA_CERTS", &ca_file)
            .env("MVIRT_CA_FINGERPRINT", fingerprint);
    }
    run.arg("e2e/run.mjs")
        .current_dir(&ui)
        .env("MVIRT_UI_URL", api.api_url())
        .env("MVIRT_TOKEN", &token)
        .env("MVIRT_TEMPLATE", "tiny")
        .env("MVIRT_SHOTS", &shots)
        .env("MVIRT_CLI", &cli)
        .kill_on_drop(true);
    let status = tokio::time::timeout(RUN_TIMEOUT, run.status())
        .await
        .expect("the browser run finishes within its timeout")
        .expect("node runs (is Node.js installed? scripts/setup.sh installs it)");
    assert!(
        status.success(),
        "the browser run failed ({status}); its output is above, screenshots in {}",
        shots.display()
    );

    agent.stop().await;
    api.stop().await;
    log_shutdown.trigger();
    drop(host);
}
