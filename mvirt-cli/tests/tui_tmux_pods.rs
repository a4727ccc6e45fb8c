//! The TUI's pods view in a real terminal: the real `mvirt tui` in tmux against a real
//! mvirt-api, a pod with two containers reported running by a node (NodeService, as an agent
//! does), its container states, following a container's logs and a shell in a container through
//! the API's relays to the node-agent double (`common::pods`), stop and delete with
//! confirmations.

mod common;
#[path = "common/tmux.rs"]
mod tmux;

use std::time::Duration;

use common::*;
use mvirt_api::proto;
use serde_json::Value;

async fn pod(api: &Api, name: &str) -> (u16, Value) {
    let r = api
        .http()
        .get(format!("{}/v1/pods/{name}", api.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("GET pod");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tui_pods_view_shows_containers_follows_logs_opens_a_shell_stops_and_deletes() {
    let api = start_api().await;
    let secret = "tmux-pod-secret";
    let (endpoint, server) = start_echo_console(&api, secret).await;
    let node = api.register_node("hv1", &endpoint, secret).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.yaml");
    std::fs::write(
        &file,
        "name: app\nspec:\n  vcpus: 1\n  memory_bytes: 268435456\n  containers:\n    - {name: web, image: 'reg:5000/httpd:1'}\n    - {name: writer, image: 'reg:5000/busybox:1'}\n",
    )
    .expect("pod file");
    let app = id_of(
        &api.json(&["pod", "create", "-f", &file.display().to_string()])
            .await,
    );
    mvirt_testsupport::process::wait_until_async("pod placed", Duration::from_secs(20), || async {
        (pod(&api, "app").await.1["node_id"] == node.as_str()).then_some(())
    })
    .await;

    let t = tmux::Tmux::tui(&api);
    t.wait_for("● live").await;
    t.keys(&["6"]);
    t.wait_for("Pods (1)").await;
    // The node reports: the view updates live from /v1/events.
    api.report(
        &node,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Pod as i32,
            id: app.clone(),
            phase: proto::Phase::Running as i32,
            containers: vec![
                proto::PodContainerStatus {
                    name: "web".into(),
                    image: "reg:5000/httpd:1".into(),
                    state: proto::PodContainerState::Running as i32,
                    ..Default::default()
                },
                proto::PodContainerStatus {
                    name: "writer".into(),
                    image: "reg:5000/busybox:1".into(),
                    state: proto::PodContainerState::Exited as i32,
                    exit_code: 2,
                    restart_count: 3,
                    message: "back-off".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    )
    .await;
    let s = t.wait_for("web:running writer:exited(2),restarts=3").await;
    assert!(s.contains("Containers of app (2)"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.contains("writer") && l.contains("back-off")),
        "{s}"
    );

    // c picks writer, l follows its logs; Esc closes.
    t.keys(&["c", "l"]);
    t.wait_for("logs app/writer (following)").await;
    t.wait_for("[writer] writer line 3").await;
    t.wait_for("[writer] writer followed 2").await;
    t.keys(&["Escape"]);
    t.wait_for("stopped following app/writer").await;

    // Enter: a shell in writer (the double prints its start request, then echoes upper-cased).
    t.keys(&["Enter"]);
    t.wait_for("exec app/writer (connected)").await;
    let s = t.wait_for("stderr of writer").await;
    assert!(
        s.contains(r#""command":["/bin/sh"]"#) && s.contains(r#""tty":true"#),
        "{s}"
    );
    t.text("hello");
    t.wait_for("HELLO").await;
    t.keys(&["C-a", "t"]);
    t.wait_for("detached from app/writer").await;

    // Stop and delete, each confirmed.
    t.keys(&["o"]);
    t.wait_for("stop pod app?").await;
    t.keys(&["y"]);
    t.wait_for("stop of pod app requested").await;
    assert_eq!(pod(&api, "app").await.1["spec"]["desired_state"], "stopped");
    t.keys(&["d"]);
    t.wait_for("delete pod app?").await;
    t.keys(&["y"]);
    t.wait_for("Pods (0)").await;
    assert_eq!(pod(&api, "app").await.0, 404);

    t.quit().await;
    server.abort();
}
