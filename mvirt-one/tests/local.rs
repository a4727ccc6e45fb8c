//! mvirt-one in local mode, as root on the host, against a real registry (distribution) into
//! which each test pushes images it builds itself. Containers really run: namespaces, overlayfs,
//! the static busybox from the host. Registry authentication is tested in `registry_auth.rs`;
//! the harness is `support/local.rs`.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use mvirt_common::Shutdown;
use mvirt_one::grpc::Mode;
use mvirt_one::proto;
use mvirt_one::runtime::RuntimeConfig;
use mvirt_one::server::{self, BoundListener, DaemonConfig, Listen};
use mvirt_testsupport::registry::{LayerBuilder, TestImage};
use support::local::*;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_in_its_namespaces_and_its_output_is_logged_with_timestamps() {
    let mut h = Harness::start().await;
    h.registry
        .push_image("busybox", "latest", &TestImage::busybox());
    let image = h.image("busybox");
    let script = "echo pid=$$; echo host=$(hostname); echo user=$(id -u):$(id -g); \
                  echo cwd=$(pwd); echo greeting=$GREETING; echo oops >&2; ls /proc/1 >/dev/null && echo proc=ok; \
                  ps -o pid | wc -l";
    let mut spec = sh("main", &image, script, proto::RestartPolicy::Never);
    spec.env = HashMap::from([("GREETING".to_string(), "hello".to_string())]);
    spec.working_dir = "/work/dir".into();
    spec.user = "app".into();
    let pod = h.create(vec![spec]).await;
    assert_eq!(pod.phase, proto::PodPhase::Created as i32);
    assert!(pod.containers[0].image_digest.starts_with("sha256:"));
    // Launched by the time StartPod answers: running, or (a short script) already exited.
    let started = h.start_pod(&pod.id).await;
    assert_ne!(
        started.containers[0].state,
        proto::ContainerState::Created as i32,
        "{started:?}"
    );
    let status = h
        .wait_container(&pod.id, "container to exit", |c| c.state == EXITED)
        .await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert_eq!(
        h.pod(&pod.id).await.phase,
        proto::PodPhase::Succeeded as i32
    );

    let entries = h.logs(&pod.id, "main", 0).await;
    let lines = text(&entries);
    assert!(
        lines.contains(&"pid=1".to_string()),
        "own pid namespace: {lines:?}"
    );
    assert!(
        lines.contains(&"host=testpod".to_string()),
        "own uts namespace: {lines:?}"
    );
    assert!(lines.contains(&"user=1000:1000".to_string()), "{lines:?}");
    assert!(lines.contains(&"cwd=/work/dir".to_string()), "{lines:?}");
    assert!(lines.contains(&"greeting=hello".to_string()), "{lines:?}");
    assert!(lines.contains(&"proc=ok".to_string()), "{lines:?}");
    let oops = entries.iter().find(|e| e.line == b"oops").unwrap();
    assert_eq!(oops.stream, "stderr");
    assert!(entries.iter().all(|e| e.timestamp_ns > 0));

    let last = h.logs(&pod.id, "main", 1).await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].line, entries.last().unwrap().line);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_defaults_follow_kubernetes_entrypoint_and_cmd_semantics() {
    let mut h = Harness::start().await;
    let image = TestImage::new(
        vec![mvirt_testsupport::registry::busybox_layer()],
        serde_json::json!({
            "Entrypoint": ["/bin/echo", "entry"],
            "Cmd": ["default-cmd"],
            "Env": ["PATH=/bin", "FROM_IMAGE=yes"],
            "WorkingDir": "/tmp",
        }),
    );
    h.registry.push_image("echo", "latest", &image);
    let reference = h.image("echo");
    let spec = |name: &str, command: &[&str], args: &[&str]| proto::ContainerSpec {
        name: name.into(),
        image: reference.clone(),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        restart_policy: proto::RestartPolicy::Never as i32,
        ..Default::default()
    };
    let pod = h
        .create(vec![
            spec("defaults", &[], &[]),
            spec("args", &[], &["given-args"]),
            spec(
                "command",
                &["/bin/sh", "-c", "echo $FROM_IMAGE $(pwd)"],
                &[],
            ),
        ])
        .await;
    h.start_pod(&pod.id).await;
    for name in ["defaults", "args", "command"] {
        h.wait_container(&pod.id, name, |c| c.name == name && c.state == EXITED)
            .await;
    }
    assert_eq!(
        text(&h.logs(&pod.id, "defaults", 0).await),
        ["entry default-cmd"]
    );
    assert_eq!(
        text(&h.logs(&pod.id, "args", 0).await),
        ["entry given-args"]
    );
    assert_eq!(text(&h.logs(&pod.id, "command", 0).await), ["yes /tmp"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_and_opaque_directories_hide_files_of_lower_layers() {
    let mut h = Harness::start().await;
    let upper = LayerBuilder::new()
        .dir("data/")
        .file("data/a", b"lower-a", 0o644)
        .file("data/b", b"lower-b", 0o644)
        .dir("opaque/")
        .file("opaque/old", b"old", 0o644)
        .build();
    let top = LayerBuilder::new()
        .whiteout("data/a")
        .opaque("opaque")
        .file("opaque/new", b"new", 0o644)
        .build();
    let image = TestImage::new(
        vec![mvirt_testsupport::registry::busybox_layer(), upper, top],
        serde_json::json!({"Cmd": ["/bin/sh"]}),
    );
    h.registry.push_image("layered", "latest", &image);
    let script = "ls /data; ls /opaque; cat /data/b";
    let pod = h
        .create(vec![sh(
            "main",
            &h.image("layered"),
            script,
            proto::RestartPolicy::Never,
        )])
        .await;
    h.start_pod(&pod.id).await;
    h.wait_container(&pod.id, "exit", |c| c.state == EXITED)
        .await;
    assert_eq!(
        text(&h.logs(&pod.id, "main", 0).await),
        ["b", "new", "lower-b"]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_index_resolves_to_the_linux_amd64_image() {
    let mut h = Harness::start().await;
    let amd64 = TestImage::new(
        vec![
            mvirt_testsupport::registry::busybox_layer(),
            LayerBuilder::new().file("arch", b"amd64", 0o644).build(),
        ],
        serde_json::json!({"Cmd": ["/bin/cat", "/arch"]}),
    );
    let mut arm64 = amd64.clone();
    arm64.layers[1] = LayerBuilder::new().file("arch", b"arm64", 0o644).build();
    let arm64 = TestImage::new(
        arm64.layers,
        serde_json::json!({"Cmd": ["/bin/cat", "/arch"]}),
    );
    h.registry.push_index(
        "multi",
        "latest",
        &[(&arm64, "linux", "arm64"), (&amd64, "linux", "amd64")],
    );
    let pod = h
        .create(vec![proto::ContainerSpec {
            name: "main".into(),
            image: h.image("multi"),
            restart_policy: proto::RestartPolicy::Never as i32,
            ..Default::default()
        }])
        .await;
    assert_eq!(
        pod.containers[0].image_digest,
        mvirt_testsupport::registry::sha256_digest(&amd64.manifest())
    );
    h.start_pod(&pod.id).await;
    h.wait_container(&pod.id, "exit", |c| c.state == EXITED)
        .await;
    assert_eq!(text(&h.logs(&pod.id, "main", 0).await), ["amd64"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_lines_until_the_container_exits() {
    let mut h = Harness::start().await;
    h.registry
        .push_image("busybox", "latest", &TestImage::busybox());
    let script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done";
    let pod = h
        .create(vec![sh(
            "main",
            &h.image("busybox"),
            script,
            proto::RestartPolicy::Never,
        )])
        .await;
    h.start_pod(&pod.id).await;
    let mut stream = h
        .client
        .logs(proto::LogsRequest {
            pod_id: pod.id.clone(),
            container: "main".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(entry) = stream.next().await {
        let entry = entry.unwrap();
        assert_eq!(entry.timestamp_ns, 0, "timestamps were not asked for");
        lines.push(String::from_utf8_lossy(&entry.line).to_string());
    }
    assert_eq!(lines, ["line1", "line2", "line3", "line4", "line5"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_commands_with_and_without_a_tty() {
    let mut h = Harness::start().await;
    h.registry
        .push_image("busybox", "latest", &TestImage::busybox());
    let pod = h
        .create(vec![sh(
            "main",
            &h.image("busybox"),
            "echo $$ > /tmp/main.pid; exec sleep 1000",
            proto::RestartPolicy::Never,
        )])
        .await;
    h.start_pod(&pod.id).await;
    h.wait_container(&pod.id, "running", |c| c.state == RUNNING)
        .await;

    // Without a TTY: stdin is piped, stdout and stderr are separate, the exit code comes back.
    let (out, err, code) = h
        .exec(
            &pod.id,
            "main",
            &[
                "/bin/sh",
                "-c",
                "cat; echo to-stderr >&2; cat /tmp/main.pid; hostname; exit 7",
            ],
            false,
            vec![
                proto::exec_input::Input::Stdin(b"from-stdin\n".to_vec()),
                proto::exec_input::Input::CloseStdin(true),
            ],
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "from-stdin\n1\ntestpod\n");
    assert_eq!(String::from_utf8_lossy(&err), "to-stderr\n");
    assert_eq!(code, 7);

    // With a TTY: the command has a terminal of the requested size, resizes reach it.
    let (out, _, code) = h
        .exec(
            &pod.id,
            "main",
            &[
                "/bin/sh",
                "-c",
                "test -t 0 && echo is-a-tty; stty size; read x; stty size; exit 3",
            ],
            true,
            vec![
                proto::exec_input::Input::Resize(proto::TerminalSize {
                    rows: 50,
                    cols: 132,
                }),
                proto::exec_input::Input::Stdin(b"go\n".to_vec()),
            ],
        )
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert!(out.contains("is-a-tty"), "{out:?}");
    assert!(
        out.contains("50 132"),
        "resize reached the terminal: {out:?}"
    );
    assert_eq!(code, 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_delivers_sigterm_then_sigkill_and_records_exit_codes() {
    let mut h = Harness::start().await;
    h.registry
        .push_image("busybox", "latest", &TestImage::busybox());
    let image = h.image("busybox");
    let pod = h
        .create(vec![
            // PID 1 of a pid namespace only gets signals it handles: the trap exits with 3.
            sh(
                "graceful",
                &image,
                "trap 'exit 3' TERM; while true; do sleep 0.1; done",
                proto::RestartPolicy::Always,
            ),
            sh(
                "stubborn",
                &image,
                "exec sleep 1000",
                proto::RestartPolicy::Always,
            ),
        ])
        .await;
    // StartPod answers once the processes run: both are running with their pids in the answer
    // itself (no second look needed).
    let started = h.start_pod(&pod.id).await;
    for c in &started.containers {
        assert_eq!(
            c.state, RUNNING,
            "StartPod answered before the launch: {c:?}"
        );
        assert_ne!(c.pid, 0, "{c:?}");
        assert_ne!(c.started_at_ns, 0, "{c:?}");
    }
    assert_eq!(started.containers.len(), 2);
    for name in ["graceful", "stubborn"] {
        h.wait_container(&pod.id, name, |c| c.name == name && c.state == RUNNING)
            .await;
    }
    let stopped = h
        .client
        .stop_pod(proto::StopPodRequest {
            id: pod.id.clone(),
            timeout_seconds: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.phase, proto::PodPhase::Stopped as i32);
    let by_name: HashMap<_, _> = stopped
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    assert_eq!(by_name["graceful"].exit_code, 3);
    assert_eq!(
        by_name["stubborn"].exit_code, 137,
        "SIGKILL after the grace period"
    );
    assert!(stopped
        .containers
        .iter()
        .all(|c| c.state == EXITED && !c.restarting && c.restart_count == 0));

    // Exec into a stopped container is refused.
    let err = h
        .exec(&pod.id, "stubborn", &["/bin/true"], false, vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // A stopped pod starts again.
    h.start_pod(&pod.id).await;
    h.wait_container(&pod.id, "restart after stop", |c| {
        c.name == "stubborn" && c.state == RUNNING
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_decide_whether_exited_containers_run_again() {
    let mut h = Harness::start().await;
    h.registry
        .push_image("busybox", "latest", &TestImage::busybox());
    let image = h.image("busybox");
    let pod = h
        .create(vec![
            sh(
                "failing",
                &image,
                "echo run; exit 4",
                proto::RestartPolicy::OnFailure,
            ),
            sh(
                "succeeding",
                &image,
                "exit 0",
                proto::RestartPolicy::OnFailure,
            ),
            sh("never", &image, "exit 5", proto::RestartPolicy::Never),
            // Unspecified means Always, as in Kubernetes: even a clean exit restarts.
            sh(
                "always",
                &image,
                "exit 0",
                proto::RestartPolicy::Unspecified,
            ),
        ])
        .await;
    h.start_pod(&pod.id).await;
    let failing = h
        .wait_container(&pod.id, "two restarts", |c| {
            c.name == "failing" && c.restart_count >= 2
        })
        .await;
    assert_eq!(failing.exit_code, 4);
    h.wait_container(&pod.id, "always restarts", |c| {
        c.name == "always" && c.restart_count >= 1
    })
    .await;
    let pod_now = h.pod(&pod.id).await;
    let by_name: HashMap<_, _> = pod_now
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.clone()))
        .collect();
    for (name, code) in [("succeeding", 0), ("never", 5)] {
        let c = &by_name[name];
        assert_eq!(
            (c.state, c.exit_code, c.restart_count, c.restarting),
            (EXITED, code, 0, false),
            "{c:?}"
        );
    }
    assert_eq!(pod_now.phase, proto::PodPhase::Running as i32);
    let runs = text(&h.logs(&pod.id, "failing", 0).await);
    assert!(
        runs.len() >= 3,
        "every run appends to the same log: {runs:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_stops_the_pod_and_removes_its_files() {
    let mut h = Harness::start().await;
    h.registry
        .push_image("busybox", "latest", &TestImage::busybox());
    let pod = h
        .create(vec![sh(
            "main",
            &h.image("busybox"),
            "echo x > /tmp/file; exec sleep 1000",
            proto::RestartPolicy::Always,
        )])
        .await;
    h.start_pod(&pod.id).await;
    let running = h
        .wait_container(&pod.id, "running", |c| c.state == RUNNING)
        .await;
    let pod_dir = h.data.path().join("pods").join(&pod.id);
    // The running shell writes it a moment after its launch.
    let file = pod_dir.join("main/upper/tmp/file");
    mvirt_testsupport::process::wait_until("the container's file", Duration::from_secs(30), || {
        file.exists().then_some(())
    });
    h.client
        .delete_pod(proto::DeletePodRequest {
            id: pod.id.clone(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    assert!(!pod_dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{}", running.pid)).exists());
    let err = h
        .client
        .get_pod(proto::GetPodRequest { id: pod.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let listed = h
        .client
        .list_pods(proto::ListPodsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.pods.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_leaves_nothing_behind() {
    let mut h = Harness::start().await;
    let image = TestImage::busybox();
    h.registry.push_image("busybox", "latest", &image);
    let good = h.image("busybox");
    let create = |id: String, image: String| proto::CreatePodRequest {
        id,
        hostname: String::new(),
        containers: vec![proto::ContainerSpec {
            name: "main".into(),
            image,
            ..Default::default()
        }],
    };
    let mut client = h.client.clone();
    let base = h.client.clone();
    let code_of = |req: proto::CreatePodRequest| {
        let mut client = base.clone();
        async move { client.create_pod(req).await.unwrap_err() }
    };
    let host = h.registry.host();
    let cases = [
        (
            create(uuid(), format!("{host}/busybox:nope")),
            tonic::Code::NotFound,
        ),
        (
            create(uuid(), format!("{host}/missing:latest")),
            tonic::Code::NotFound,
        ),
        (
            create(
                uuid(),
                format!(
                    "127.0.0.1:{}/busybox:latest",
                    mvirt_testsupport::net::free_port()
                ),
            ),
            tonic::Code::Unavailable,
        ),
        (
            create("not-a-uuid".into(), good.clone()),
            tonic::Code::InvalidArgument,
        ),
        (
            create(uuid(), "Bad Reference!".into()),
            tonic::Code::InvalidArgument,
        ),
    ];
    for (req, expected) in cases {
        let image = req.containers[0].image.clone();
        let status = code_of(req).await;
        assert_eq!(status.code(), expected, "{image}: {status:?}");
        assert!(!status.message().is_empty());
    }

    // The same id with another spec conflicts; with the same spec it is idempotent.
    let id = uuid();
    client
        .create_pod(create(id.clone(), good.clone()))
        .await
        .unwrap();
    client
        .create_pod(create(id.clone(), good.clone()))
        .await
        .unwrap();
    let mut other = create(id.clone(), good.clone());
    other.containers[0].args = vec!["different".into()];
    assert_eq!(code_of(other).await.code(), tonic::Code::AlreadyExists);

    // Unknown pod / container.
    let err = client
        .start_pod(proto::StartPodRequest { id: uuid() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .logs(proto::LogsRequest {
            pod_id: id.clone(),
            container: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Exec needs a known container.
    let err = h
        .exec(&id, "nope", &["/bin/true"], false, vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // A layer whose content does not match its digest.
    let corrupt = TestImage::new(
        vec![LayerBuilder::new().file("x", b"original", 0o644).build()],
        serde_json::json!({"Cmd": ["/x"]}),
    );
    h.registry.push_image("corrupt", "latest", &corrupt);
    let blob = h.registry.blob_data_path(&corrupt.layer_digests()[0]);
    std::fs::write(
        &blob,
        LayerBuilder::new().file("x", b"tampered", 0o644).build(),
    )
    .unwrap();
    let status = code_of(create(uuid(), format!("{host}/corrupt:latest"))).await;
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(status.message().contains("digest"), "{status:?}");

    let pods = client
        .list_pods(proto::ListPodsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert_eq!(pods.len(), 1, "only the valid pod exists: {pods:?}");
    assert!(
        !h.data
            .path()
            .join("images/blobs/sha256")
            .join(&corrupt.layer_digests()[0][7..])
            .exists(),
        "a blob that failed verification is not cached"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_limits_are_enforced_and_removed_with_the_pod() {
    let mut h = Harness::start().await;
    h.registry
        .push_image("limits", "latest", &TestImage::busybox());
    let image = h.image("limits");
    let container = |name: &str, script: &str| proto::ContainerSpec {
        name: name.into(),
        image: image.clone(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        restart_policy: proto::RestartPolicy::Never as i32,
        ..Default::default()
    };
    const MIB: u64 = 1024 * 1024;

    // Limits out of range are refused, and nothing is recorded.
    for (field, mut bad) in [
        ("cpu_millicores", container("bad", "true")),
        ("memory_limit_bytes", container("bad", "true")),
        ("pids_limit", container("bad", "true")),
    ] {
        match field {
            "cpu_millicores" => bad.cpu_millicores = Some(5),
            "memory_limit_bytes" => bad.memory_limit_bytes = Some(1024),
            _ => bad.pids_limit = Some(0),
        }
        let id = uuid();
        let err = h
            .client
            .create_pod(proto::CreatePodRequest {
                id: id.clone(),
                hostname: String::new(),
                containers: vec![bad],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
        let gone = h.client.get_pod(proto::GetPodRequest { id }).await;
        assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
    }

    let mut hog = container("hog", "echo start; tail /dev/zero");
    hog.memory_limit_bytes = Some(32 * MIB);
    let mut modest = container(
        "modest",
        "head -c 16000000 /dev/zero | tail -c 16000000 | wc -c",
    );
    modest.memory_limit_bytes = Some(64 * MIB);
    let mut forker = container(
        "forker",
        "for i in $(seq 1 20); do sleep 30 & done; echo all-started; wait",
    );
    forker.pids_limit = Some(5);
    let mut spinner = container("spinner", "while :; do :; done");
    spinner.cpu_millicores = Some(50);
    let pod = h.create(vec![hog, modest, forker, spinner]).await;
    let cgroups = mvirt_one::cgroup::Hierarchy::detect();
    for name in ["hog", "modest", "forker", "spinner"] {
        let dirs = cgroups.cgroup_of(&pod.id, name).dirs();
        assert!(!dirs.is_empty(), "no cgroup hierarchy on this host");
        for dir in dirs {
            assert!(dir.is_dir(), "{} missing after create", dir.display());
        }
    }
    h.start_pod(&pod.id).await;

    let hog = h
        .wait_container(&pod.id, "the hog to die", |c| {
            c.name == "hog" && c.state == EXITED
        })
        .await;
    assert!(hog.oom_killed, "{hog:?}");
    assert_eq!(hog.exit_code, 137, "{hog:?}");
    assert_eq!(text(&h.logs(&pod.id, "hog", 0).await), ["start"]);

    let modest = h
        .wait_container(&pod.id, "the modest container to finish", |c| {
            c.name == "modest" && c.state == EXITED
        })
        .await;
    assert!(!modest.oom_killed && modest.exit_code == 0, "{modest:?}");
    assert_eq!(text(&h.logs(&pod.id, "modest", 0).await), ["16000000"]);

    let forker = h
        .wait_container(&pod.id, "the fork loop to fail", |c| {
            c.name == "forker" && c.state == EXITED
        })
        .await;
    assert_ne!(forker.exit_code, 0, "{forker:?}");
    assert!(!forker.oom_killed);
    let forker_log = text(&h.logs(&pod.id, "forker", 0).await);
    assert!(
        forker_log.iter().any(|l| l.contains("can't fork"))
            && !forker_log.contains(&"all-started".to_string()),
        "{forker_log:?}"
    );

    // The spinner runs in its cgroup, and the quota throttles it.
    let spinner = h
        .wait_container(&pod.id, "the spinner to run", |c| {
            c.name == "spinner" && c.state == RUNNING
        })
        .await;
    let spinner_cgroup = cgroups.cgroup_of(&pod.id, "spinner");
    for dir in spinner_cgroup.dirs() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == spinner.pid.to_string()),
            "{}: {procs}",
            dir.display()
        );
    }
    let cpu_dir = spinner_cgroup.dir_for("cpu").unwrap();
    let throttled = || {
        std::fs::read_to_string(cpu_dir.join("cpu.stat"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap()
    };
    mvirt_testsupport::process::wait_until(
        "the spinner to be throttled",
        Duration::from_secs(20),
        || (throttled() > 0).then_some(()),
    );
    // An exec'd process joins the container's cgroup too.
    let (out, _, code) = h
        .exec(
            &pod.id,
            "spinner",
            &["cat", "/proc/self/cgroup"],
            false,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    let own = String::from_utf8_lossy(&out).to_string();
    assert!(
        own.contains(&format!("/mvirt-one/{}/spinner", pod.id)),
        "{own}"
    );

    h.client
        .delete_pod(proto::DeletePodRequest {
            id: pod.id.clone(),
            timeout_seconds: 1,
        })
        .await
        .unwrap();
    for name in ["hog", "modest", "forker", "spinner"] {
        for dir in cgroups.cgroup_of(&pod.id, name).dirs() {
            assert!(!dir.exists(), "{} left after delete", dir.display());
        }
    }
    for dir in cgroups.pod_dirs(&pod.id) {
        assert!(!dir.exists(), "{} left after delete", dir.display());
    }
    h.stop().await;
}

/// Bearer-token auth (distribution's `auth: token:`) with a real token server: the registry
/// verifies the tokens' signature, issuer, audience, expiry and access itself.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_serves_over_a_unix_socket() {
    mvirt_testsupport::require_root();
    let data = tempfile::Builder::new()
        .prefix("mvirt-one-unix-")
        .tempdir()
        .unwrap();
    let socket = data.path().join("one.sock");
    let config = DaemonConfig {
        mode: Mode::Local,
        listen: Listen::Unix(socket.clone()),
        runtime: RuntimeConfig {
            data_dir: data.path().join("data"),
            launcher: PathBuf::from(env!("CARGO_BIN_EXE_mvirt-one")),
            insecure_registries: vec![],
            resolv_conf: None,
        },
        log_endpoint: String::new(),
    };
    let listener = BoundListener::bind(&config.listen).await.unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(server::serve(config, listener, shutdown.clone()));
    let mut client = mvirt_one::client::connect_unix(socket).await.unwrap();
    let health = client
        .health(proto::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(health.ready);
    assert_eq!(health.mode, "local");
    assert!(health.rss_bytes > 0);
    let info = client
        .get_network_info(proto::GetNetworkInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info
        .interfaces
        .iter()
        .any(|i| i.name == "lo" && i.addresses.contains(&"127.0.0.1/8".to_string())));
    // Shutdown stops every pod and ends the server.
    client
        .shutdown(proto::ShutdownRequest { timeout_seconds: 1 })
        .await
        .unwrap();
    server.await.unwrap().unwrap();
}
