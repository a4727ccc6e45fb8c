//! `mvirt pod`: every verb with the real `mvirt` binary against a real mvirt-api, and logs and
//! exec through the API's real relays to a double of the node agent's `PodLogs`/`PodExec`
//! (`common::pods`; a real pod behind them is mvirt-node's e2e test).

mod common;

use std::time::Duration;

use common::*;
use mvirt_api::proto;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// A pod file with two containers; the network and security group are given by name.
const TWO_CONTAINERS: &str = r#"
name: app
labels: {tier: web}
spec:
  vcpus: 1
  memory_bytes: 268435456
  network_interfaces:
    - network_id: podnet
      security_group_ids: [podsg]
  containers:
    - name: web
      image: 127.0.0.1:5000/httpd:1
      ports: [{name: http, container_port: 80, protocol: tcp}]
    - name: writer
      image: 127.0.0.1:5000/busybox:1
      command: [/bin/sh, -c]
      args: ["while true; do echo line; sleep 1; done"]
      env: {GREETING: "hello world"}
      restart_policy: on_failure
"#;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write pod file");
    p.display().to_string()
}

async fn pod_names(api: &Api) -> Vec<String> {
    let mut n = names(&api.json(&["pod", "list"]).await);
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_created_listed_shown_acted_on_and_deleted() {
    let api = start_api().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let net = api
        .json(&["network", "create", "podnet", "--ipv4", "10.20.0.0/24"])
        .await;
    let sg = api.json(&["sg", "create", "podsg"]).await;

    // run --detach: one container named after the pod, flags in the body as given.
    // `-o json` goes before `--`: everything after it is the container's.
    let ran = api
        .mvirt(&[
            "pod",
            "run",
            "solo",
            "--image",
            "127.0.0.1:5000/busybox:1",
            "--cpus",
            "2",
            "--memory",
            "256M",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--port",
            "http=8080",
            "--network",
            "podnet",
            "--sg",
            "podsg",
            "--label",
            "team=a",
            "--restart",
            "never",
            "--detach",
            "-o",
            "json",
            "--",
            "-c",
            "echo $A; exit 3",
        ])
        .await
        .json();
    assert_eq!(ran["name"], "solo");
    assert_eq!(ran["labels"], json!({"team": "a"}));
    let s = &ran["spec"];
    assert_eq!(s["vcpus"], 2);
    assert_eq!(s["memory_bytes"], 256u64 << 20);
    let c = &s["containers"];
    assert_eq!(c.as_array().expect("containers").len(), 1);
    assert_eq!(c[0]["name"], "solo");
    assert_eq!(c[0]["args"], json!(["-c", "echo $A; exit 3"]));
    assert_eq!(c[0]["env"], json!({"A": "1", "B": "x=y"}));
    assert_eq!(c[0]["restart_policy"], "never");
    assert_eq!(c[0]["ports"][0]["container_port"], 8080);
    assert_eq!(s["network_interfaces"][0]["network_id"], net["id"]);
    assert_eq!(
        s["network_interfaces"][0]["security_group_ids"],
        json!([sg["id"]])
    );

    // create -f: YAML with two containers, names resolved to ids; then the same as JSON.
    let yaml = write(dir.path(), "pod.yaml", TWO_CONTAINERS);
    let app = api.json(&["pod", "create", "-f", &yaml]).await;
    assert_eq!(app["name"], "app");
    assert_eq!(app["spec"]["containers"][1]["name"], "writer");
    assert_eq!(
        app["spec"]["containers"][1]["env"]["GREETING"],
        "hello world"
    );
    assert_eq!(
        app["spec"]["network_interfaces"][0]["network_id"],
        net["id"]
    );
    let mut other: Value = serde_yaml::from_str(TWO_CONTAINERS).expect("yaml");
    other["name"] = json!("app2");
    let json_file = write(dir.path(), "pod.json", &other.to_string());
    let out = api.mvirt(&["pod", "create", "-f", &json_file]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("pod app2 created ("),
        "{}",
        out.stdout
    );
    assert_eq!(pod_names(&api).await, ["app", "app2", "solo"]);

    // list (table) and show.
    let table = api.mvirt(&["pod", "list"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let header = table.stdout.lines().next().unwrap_or_default();
    for h in ["NAME", "PHASE", "CONTAINERS", "VCPUS", "MEMORY"] {
        assert!(header.contains(h), "{header}");
    }
    let shown = api.json(&["pod", "show", "app"]).await;
    assert_eq!(shown["id"], app["id"]);
    let by_id = api
        .json(&["pod", "show", app["id"].as_str().expect("id")])
        .await;
    assert_eq!(by_id["name"], "app");

    // Actions: the desired state follows.
    for (verb, desired) in [("stop", "stopped"), ("start", "running")] {
        let v = api.json(&["pod", verb, "app"]).await;
        assert_eq!(v["spec"]["desired_state"], desired, "{verb}: {v}");
    }
    let v = api.json(&["pod", "stop", "app2", "--force"]).await;
    assert_eq!(v["spec"]["desired_state"], "stopped");
    let before = api.json(&["pod", "show", "solo"]).await["restart_generation"]
        .as_u64()
        .unwrap_or(0);
    let v = api.json(&["pod", "restart", "solo"]).await;
    assert_eq!(v["restart_generation"].as_u64(), Some(before + 1), "{v}");
    let out = api.mvirt(&["pod", "start", "app"]).await;
    assert_eq!(out.stdout.trim(), "pod app: start requested", "{out:?}");

    // Errors from the API come with their message and exit code; nothing is created.
    api.fails(&["pod", "create", "-f", &yaml], 4, "app").await;
    api.fails(
        &["pod", "run", "Bad_Name", "--image", "i:1", "--detach"],
        1,
        "name",
    )
    .await;
    api.fails(
        &[
            "pod", "run", "big", "--image", "i:1", "--memory", "100M", "--detach",
        ],
        1,
        "memory_bytes must be a multiple of 1 MiB between 128 MiB and 1 TiB",
    )
    .await;
    api.fails(&["pod", "show", "ghost"], 3, "not found").await;
    api.fails(&["pod", "delete", "ghost"], 3, "not found").await;
    // A stale revision (If-Match) is refused, the pod stays.
    api.fails(
        &["pod", "delete", "app", "--if-match", "1"],
        4,
        "precondition",
    )
    .await;
    // Refused before any request (exit 2), or by a name that resolves to nothing (exit 3).
    for (args, needle) in [
        (vec!["--env", "NOVALUE"], "--env \"NOVALUE\" is not K=V"),
        (
            vec!["--env", "A=1", "--env", "A=2"],
            "--env A is given twice",
        ),
        (vec!["--port", "http=0"], "--port \"http=0\""),
        (vec!["--sg", "podsg"], "give --network as well"),
        (vec!["--command"], "--command needs the command"),
    ] {
        let mut a = vec!["pod", "run", "nope", "--image", "i:1", "--detach"];
        a.extend(args);
        api.fails(&a, 2, needle).await;
    }
    api.fails(
        &["pod", "run", "nope", "--image", "bad image", "--detach"],
        2,
        "whitespace",
    )
    .await;
    api.fails(
        &[
            "pod",
            "run",
            "nope",
            "--image",
            "i:1",
            "--network",
            "ghost-net",
            "--detach",
        ],
        3,
        "ghost-net",
    )
    .await;
    let dup = write(
        dir.path(),
        "dup.yaml",
        "name: dup\nspec: {vcpus: 1, memory_bytes: 268435456, containers: [{name: a, image: i}, {name: a, image: j}]}",
    );
    api.fails(
        &["pod", "create", "-f", &dup],
        2,
        "container name \"a\" is used twice",
    )
    .await;
    let ghost_net = write(
        dir.path(),
        "ghost.yaml",
        "name: gh\nspec: {vcpus: 1, memory_bytes: 268435456, network_interfaces: [{network_id: nowhere}], containers: [{name: a, image: i}]}",
    );
    api.fails(&["pod", "create", "-f", &ghost_net], 3, "nowhere")
        .await;
    api.fails(
        &["pod", "create", "-f", "/nonexistent/pod.yaml"],
        2,
        "cannot read the pod file",
    )
    .await;
    assert_eq!(
        pod_names(&api).await,
        ["app", "app2", "solo"],
        "nothing half-created"
    );

    // logs and exec arguments are checked before any request.
    api.fails(
        &["pod", "logs", "app", "-c", "Not_A_Label"],
        2,
        "not a DNS label",
    )
    .await;
    api.fails(
        &["pod", "exec", "app", "-c", "Bad!", "--", "ls"],
        2,
        "not a DNS label",
    )
    .await;
    let out = api.mvirt(&["pod", "exec", "app"]).await;
    assert_eq!(out.code, 2, "a command is required: {out:?}");
    api.fails(&["pod", "exec", "ghost", "--", "ls"], 3, "not found")
        .await;
    api.fails(&["pod", "logs", "ghost"], 3, "not found").await;
    // Not placed on a node yet: the API says so.
    api.fails(&["pod", "logs", "app", "-c", "web"], 4, "not placed")
        .await;

    // Delete: the pod and its owned NIC go.
    let out = api.mvirt(&["pod", "delete", "app2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("pod app2 deleted"), "{}", out.stdout);
    api.json(&["pod", "delete", "solo"]).await;
    api.json(&["pod", "delete", "app"]).await;
    assert!(pod_names(&api).await.is_empty());
}

/// Waits until pod `id` is placed on `node`.
async fn placed(api: &Api, id: &str, node: &str) {
    let http = api.http();
    mvirt_testsupport::process::wait_until_async("pod placed", Duration::from_secs(20), || async {
        let v: Value = http
            .get(format!("{}/v1/pods/{id}", api.url))
            .bearer_auth(&api.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["node_id"] == node).then_some(())
    })
    .await;
}

/// Reports a pod's phase from `node` as its agent does, with one status per container.
async fn report_pod(api: &Api, node: &str, id: &str, phase: proto::Phase, message: &str) {
    let containers = ["web", "writer"]
        .iter()
        .map(|n| proto::PodContainerStatus {
            name: n.to_string(),
            image: format!("127.0.0.1:5000/{n}:1"),
            state: if phase == proto::Phase::Running {
                proto::PodContainerState::Running as i32
            } else {
                proto::PodContainerState::Waiting as i32
            },
            restart_count: 1,
            message: message.to_string(),
            ..Default::default()
        })
        .collect();
    api.report(
        node,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Pod as i32,
            id: id.to_string(),
            phase: phase as i32,
            message: message.to_string(),
            ipv4_addresses: vec!["10.20.0.5".into()],
            containers,
            ..Default::default()
        },
    )
    .await;
}

fn spawn_mvirt(api: &Api, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mvirt"))
        .args(args)
        .env("MVIRT_URL", &api.url)
        .env("MVIRT_CA_FILE", &api.ca_file)
        .env("MVIRT_TOKEN", &api.token)
        .env("MVIRT_CONFIG", &api.config)
        .env_remove("MVIRT_PROJECT")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mvirt")
}

async fn finish(child: tokio::process::Child) -> Out {
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("mvirt ends")
        .expect("wait");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The id of pod `name` once it exists.
async fn pod_id(api: &Api, name: &str) -> String {
    let http = api.http();
    mvirt_testsupport::process::wait_until_async("pod created", Duration::from_secs(20), || async {
        let v: Value = http
            .get(format!("{}/v1/pods/{name}", api.url))
            .bearer_auth(&api.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["id"].as_str().map(str::to_string)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_running_and_logs_and_exec_go_through_the_relay() {
    let api = start_api().await;
    let secret = "pod-relay-secret".to_string();
    let (endpoint, server) = start_echo_console(&api, &secret).await;
    let node = api.register_node("hv1", &endpoint, &secret).await;
    api.json(&["network", "create", "podnet", "--ipv4", "10.20.0.0/24"])
        .await;
    api.json(&["sg", "create", "podsg"]).await;

    // run waits until the node reports running, then says where the pod is.
    let child = spawn_mvirt(
        &api,
        &["pod", "run", "web", "--image", "127.0.0.1:5000/httpd:1"],
    );
    let web = pod_id(&api, "web").await;
    placed(&api, &web, &node).await;
    report_pod(&api, &node, &web, proto::Phase::Creating, "pulling image").await;
    report_pod(&api, &node, &web, proto::Phase::Running, "").await;
    let out = finish(child).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("pod web is running ({web}) at 10.20.0.5")),
        "{out:?}"
    );
    // A second pod fails to start: run exits 1 with the node's message.
    let child = spawn_mvirt(
        &api,
        &["pod", "run", "broken", "--image", "127.0.0.1:5000/nope:1"],
    );
    let broken = pod_id(&api, "broken").await;
    placed(&api, &broken, &node).await;
    report_pod(
        &api,
        &node,
        &broken,
        proto::Phase::Failed,
        "registry 127.0.0.1:5000: manifest unknown",
    )
    .await;
    let out = finish(child).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("pod broken failed: registry 127.0.0.1:5000: manifest unknown"),
        "{out:?}"
    );

    // Two containers: a list shows their states.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "app.yaml", TWO_CONTAINERS);
    let app = id_of(&api.json(&["pod", "create", "-f", &file]).await);
    placed(&api, &app, &node).await;
    report_pod(&api, &node, &app, proto::Phase::Running, "").await;
    let table = api.mvirt(&["pod", "list"]).await;
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(" app "))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("web:running,restarts=1 writer:running,restarts=1"),
        "{}",
        table.stdout
    );

    // logs: the container must be named when there are two (the API lists them).
    api.fails(
        &["pod", "logs", "app"],
        1,
        "pod app has 2 containers: name one with ?container= (web, writer)",
    )
    .await;
    api.fails(
        &["pod", "logs", "app", "-c", "db"],
        3,
        "pod app has no container \"db\"",
    )
    .await;
    let out = api.mvirt(&["pod", "logs", "app", "-c", "writer"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "[writer] writer line 1\n[writer] writer line 2\n[writer] writer line 3\n"
    );
    let tail = api
        .json(&["pod", "logs", "app", "-c", "web", "--tail", "1"])
        .await;
    assert_eq!(tail["container"], "web");
    assert_eq!(tail["line"], "web line 3");
    assert_eq!(tail["stream"], "stdout");
    let single = api.mvirt(&["pod", "logs", "web", "--tail", "2"]).await;
    assert_eq!(
        single.stdout, "[web] web line 2\n[web] web line 3\n",
        "{single:?}"
    );
    // -f streams new lines as they come.
    let mut child = spawn_mvirt(&api, &["pod", "logs", "app", "-c", "web", "-f"]);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let l = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("logs -f keeps printing")
            .expect("read")
            .expect("logs -f ended early");
        seen.push(l);
    }
    assert_eq!(
        seen,
        [
            "[web] web line 1",
            "[web] web line 2",
            "[web] web line 3",
            "[web] web followed 1",
            "[web] web followed 2"
        ]
    );
    child.kill().await.expect("kill logs -f");

    // exec: every argument arrives as it was given, stderr stays apart, the exit code is mvirt's.
    let out = api
        .mvirt(&[
            "pod",
            "exec",
            "app",
            "-c",
            "writer",
            "--",
            "sh",
            "-c",
            "echo $HOME; a b",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let first: Value =
        serde_json::from_str(out.stdout.lines().next().unwrap_or_default()).expect("json line");
    assert_eq!(
        first,
        json!({"container": "writer", "command": ["sh", "-c", "echo $HOME; a b"],
            "tty": false, "rows": 0, "cols": 0})
    );
    assert_eq!(out.stderr, "stderr of writer\n");
    let out = api.mvirt(&["pod", "exec", "web", "--", "exit", "7"]).await;
    assert_eq!(out.code, 7, "{out:?}");
    let out = api
        .mvirt(&["pod", "exec", "app", "-c", "web", "--", "exit", "300"])
        .await;
    assert_eq!(out.code, 300 & 0xff, "{out:?}");
    api.fails(
        &["pod", "exec", "app", "--", "ls"],
        1,
        "name one with ?container=",
    )
    .await;
    api.fails(
        &["pod", "exec", "app", "-c", "db", "--", "ls"],
        3,
        "no container \"db\"",
    )
    .await;
    // -i: stdin goes to the command, its end closes the command's stdin.
    let mut child = spawn_mvirt(
        &api,
        &["pod", "exec", "app", "-c", "web", "-i", "--", "exit", "4"],
    );
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"hello pod\n").await.expect("write");
    drop(stdin);
    let out = finish(child).await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stdout.ends_with("HELLO POD\n"), "{out:?}");
    // -t without a terminal: asks for a TTY (stderr then arrives on stdout), no raw mode.
    let out = api
        .mvirt(&["pod", "exec", "app", "-c", "web", "-t", "--", "top"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\"tty\":true"), "{out:?}");
    assert!(out.stdout.contains("stderr of web"), "{out:?}");
    assert_eq!(out.stderr, "");

    api.json(&["pod", "delete", "app"]).await;
    server.abort();
}
