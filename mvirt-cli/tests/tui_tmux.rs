//! The real `mvirt tui` in a tmux pane against a real in-process mvirt-api: navigate the views,
//! see a live update arrive from `/v1/events`, create a VM through the form, stop it and delete
//! it with confirmation, use its console view (through the API's relay to a node-agent test
//! double, see `common::EchoConsole`), quit.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A tmux server of our own (`-L <socket>`), killed on drop even when the test fails.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .tmux(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.session.as_str()];
        args.extend_from_slice(keys);
        let out = self.tmux(&args);
        assert!(
            out.status.success(),
            "send-keys {keys:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn text(&self, text: &str) {
        let out = self.tmux(&["send-keys", "-t", &self.session, "-l", text]);
        assert!(out.status.success());
    }

    async fn wait_for(&self, what: &str) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            last = self.screen();
            if last.contains(what) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the TUI never showed {what:?}; last screen:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

async fn vm(api: &Api, name: &str) -> (reqwest::StatusCode, Value) {
    let r = api
        .http()
        .get(format!("{}/v1/vms/{name}", api.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("GET vm");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tui_in_tmux_navigates_views_updates_live_and_creates_stops_deletes_a_vm() {
    let api = start_api().await;
    let (console_endpoint, console_server) = start_echo_console(&api, "tmux-console-secret").await;
    api.register_node("hv1", &console_endpoint, "tmux-console-secret")
        .await;
    api.json(&["network", "create", "lan", "--ipv4", "10.5.0.0/24"])
        .await;
    api.json(&[
        "template",
        "import",
        "deb",
        "--source",
        "http://127.0.0.1:1/deb.raw",
        "--no-wait",
    ])
    .await;

    let suffix = mvirt_testsupport::unique_suffix();
    let t = Tmux {
        socket: format!("mvirt-cli-test-{suffix}"),
        session: "tui".into(),
    };
    let out = t.tmux(&[
        "new-session",
        "-d",
        "-s",
        &t.session,
        "-x",
        "160",
        "-y",
        "48",
        "-e",
        &format!("MVIRT_URL={}", api.url),
        "-e",
        &format!("MVIRT_TOKEN={}", api.token),
        "-e",
        &format!("MVIRT_CONFIG={}", api.config.display()),
        "-e",
        &format!("MVIRT_CA_FILE={}", api.ca_file.display()),
        "-e",
        "TERM=xterm-256color",
        env!("CARGO_BIN_EXE_mvirt"),
        "tui",
    ]);
    assert!(
        out.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    t.wait_for("VMs (0)").await;
    t.wait_for("● live").await;
    let s = t.wait_for("n new").await;
    assert!(s.contains("1 VMs") && s.contains("4 Storage"), "{s}");

    t.keys(&["2"]);
    let s = t.wait_for("Nodes (1)").await;
    assert!(
        s.lines().any(|l| l.contains("hv1") && l.contains("online")),
        "{s}"
    );
    t.keys(&["3"]);
    t.wait_for("Networks (1)").await;
    t.keys(&["4"]);
    let s = t.wait_for("Templates & imports (1)").await;
    assert!(s.contains("deb"), "{s}");
    t.keys(&["Tab"]);
    t.wait_for("Audit log").await;

    // A change made elsewhere appears without a reload (live events).
    t.keys(&["3"]);
    api.json(&["network", "create", "late", "--ipv4", "10.6.0.0/24"])
        .await;
    let s = t.wait_for("Networks (2)").await;
    assert!(s.contains("late") && s.contains("10.6.0.0/24"), "{s}");

    // Create a VM through the form: first with a template that does not exist (the API's error
    // is shown), then for real.
    t.keys(&["1"]);
    t.wait_for("VMs (0)").await;
    t.keys(&["n"]);
    t.wait_for("Create VM").await;
    t.text("broken");
    t.keys(&["Tab", "Tab", "Tab"]);
    t.text("nosuchtemplate");
    t.keys(&["Enter"]);
    let s = t.wait_for("(not_found, HTTP 404)").await;
    assert!(
        s.contains("nosuchtemplate") && s.contains("not_found"),
        "{s}"
    );
    assert!(s.contains("VMs (0)"), "{s}");
    t.keys(&["n"]);
    t.wait_for("Create VM").await;
    t.text("tmuxvm");
    t.keys(&["Tab", "Tab"]);
    t.keys(&["BSpace", "BSpace", "BSpace", "BSpace"]);
    t.text("1G");
    t.keys(&["Tab"]);
    t.text("deb");
    t.keys(&["Tab", "Tab"]);
    t.text("lan");
    t.wait_for("lan_").await;
    t.keys(&["Enter"]);
    t.wait_for("vm tmuxvm created").await;
    let s = t.wait_for("VMs (1)").await;
    assert!(
        s.lines()
            .any(|l| l.contains("tmuxvm") && l.contains("1GiB")),
        "{s}"
    );
    let (status, v) = vm(&api, "tmuxvm").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["spec"]["memory_bytes"], GIB);
    assert_eq!(
        v["spec"]["volume_ids"].as_array().map(Vec::len),
        Some(1),
        "root volume from the template: {v}"
    );
    assert_eq!(
        v["spec"]["nic_ids"].as_array().map(Vec::len),
        Some(1),
        "NIC on lan: {v}"
    );

    // The console view: a terminal on the VM's serial console, detached with Ctrl+a t.
    let http = api.http();
    mvirt_testsupport::process::wait_until_async("vm placed", Duration::from_secs(20), || async {
        let r = http
            .get(format!("{}/v1/vms/tmuxvm", api.url))
            .bearer_auth(&api.token)
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        v["node_id"].is_string().then_some(())
    })
    .await;
    t.keys(&["Enter"]);
    t.wait_for("console tmuxvm (connected)").await;
    t.wait_for("guest login:").await;
    t.text("root");
    t.keys(&["Enter"]);
    t.wait_for("guest login: ROOT").await;
    t.keys(&["C-a", "t"]);
    t.wait_for("detached from tmuxvm").await;
    t.wait_for("VMs (1)").await;

    // Stop, with confirmation.
    t.keys(&["o"]);
    t.wait_for("stop vm tmuxvm?").await;
    t.keys(&["y"]);
    t.wait_for("stop of vm tmuxvm requested").await;
    let (_, v) = vm(&api, "tmuxvm").await;
    assert_eq!(v["spec"]["desired_state"], "stopped");

    // Delete: "n" declines, "y" deletes.
    t.keys(&["d"]);
    t.wait_for("delete vm tmuxvm?").await;
    t.keys(&["n"]);
    assert_eq!(vm(&api, "tmuxvm").await.0, 200);
    t.keys(&["d"]);
    t.wait_for("delete vm tmuxvm?").await;
    t.keys(&["y"]);
    t.wait_for("VMs (0)").await;
    assert_eq!(vm(&api, "tmuxvm").await.0, 404);

    t.keys(&["q"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.tmux(&["has-session", "-t", &t.session]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TUI did not exit on q:\n{}",
            t.screen()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    console_server.abort();
}
