//! Real pods through PodService: the real `mvirt-vmm` binary boots the pod artefacts (built from
//! this checkout's mvirt-one by `mvirt_testsupport::pod`) under QEMU TCG with vhost-device-vsock,
//! mvirt-one pulls from a real registry on the host side of the pod's TAP, and one booted pod is
//! shared by the assertions: containers, logs, exec, addresses, console, adoption after a
//! SIGKILL of the daemon, stop, delete; then a pod whose image does not exist, and bad input.

use std::path::Path;
use std::time::Duration;

use mvirt_testsupport::pod::{self, PodNet};
use mvirt_testsupport::process::{wait_until_async, ChildGuard};
use mvirt_testsupport::registry::{Registry, TestImage};
use mvirt_vmm::proto;
use mvirt_vmm::proto::pod_service_client::PodServiceClient;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn new_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

fn spawn_daemon(data_dir: &Path, socket: &Path, artefacts: &Path, registry: &str) -> ChildGuard {
    ChildGuard::spawn(
        "mvirt-vmm",
        std::process::Command::new(env!("CARGO_BIN_EXE_mvirt-vmm"))
            .arg("--listen")
            .arg(socket)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--pod-artefacts")
            .arg(artefacts)
            .arg("--vhost-device-vsock-binary")
            .arg(pod::vhost_device_vsock())
            .args(["--pod-kernel-args", "tsc_early_khz=2100000"])
            .args(["--pod-insecure-registries", registry])
            .args(["--pod-ready-timeout", "240"])
            .args(["--hypervisor", "qemu", "--qemu-accel", "tcg"])
            .args(["--qemu-tb-size-mib", "64", "--log-endpoint", ""])
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data_dir.join("mvirt-vmm.log"))
                    .unwrap(),
            ),
    )
}

async fn connect(socket: &Path) -> (PodServiceClient<Channel>, VmServiceClient<Channel>) {
    let endpoint = format!("unix:{}", socket.display());
    let pods = wait_until_async("mvirt-vmm to serve", Duration::from_secs(30), || {
        let endpoint = endpoint.clone();
        async move { PodServiceClient::connect(endpoint).await.ok() }
    })
    .await;
    let vms = VmServiceClient::connect(endpoint).await.unwrap();
    (pods, vms)
}

fn container(
    name: &str,
    image: &str,
    script: &str,
    policy: proto::PodRestartPolicy,
) -> proto::PodContainer {
    proto::PodContainer {
        name: name.into(),
        image: image.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        restart_policy: policy as i32,
        ..Default::default()
    }
}

fn state(pod: &proto::Pod) -> proto::PodState {
    proto::PodState::try_from(pod.state).unwrap()
}

async fn get(client: &mut PodServiceClient<Channel>, id: &str) -> proto::Pod {
    client
        .get_pod(proto::GetPodRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn logs(
    client: &mut PodServiceClient<Channel>,
    id: &str,
    container: &str,
    tail: u32,
) -> Vec<String> {
    let mut stream = client
        .pod_logs(proto::PodLogsRequest {
            pod_id: id.into(),
            container: container.into(),
            tail,
            follow: false,
            timestamps: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(entry) = stream.next().await {
        lines.push(String::from_utf8_lossy(&entry.unwrap().line).into_owned());
    }
    lines
}

/// Runs a command in a container; (stdout, stderr, exit code).
async fn exec(
    client: &mut PodServiceClient<Channel>,
    id: &str,
    command: &[&str],
    tty: bool,
) -> (String, String, i32) {
    let start = proto::PodExecInput {
        input: Some(proto::pod_exec_input::Input::Start(proto::PodExecStart {
            pod_id: id.into(),
            container: "logger".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
            rows: 24,
            cols: 80,
            ..Default::default()
        })),
    };
    // Without a TTY the command gets EOF on stdin; with one, stdin stays the terminal.
    let mut input = vec![start];
    if !tty {
        input.push(proto::PodExecInput {
            input: Some(proto::pod_exec_input::Input::CloseStdin(true)),
        });
    }
    let mut output = client
        .pod_exec(tokio_stream::iter(input))
        .await
        .unwrap()
        .into_inner();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(message) = output.next().await {
        match message.unwrap().output {
            Some(proto::pod_exec_output::Output::Stdout(d)) => out.extend(d),
            Some(proto::pod_exec_output::Output::Stderr(d)) => err.extend(d),
            Some(proto::pod_exec_output::Output::ExitCode(c)) => code = Some(c),
            None => {}
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        code.expect("exec ends with an exit code"),
    )
}

fn assert_nothing_runs_for(dir: &Path) {
    let hypervisors = mvirt_testsupport::process::hypervisors_under(dir);
    let backends = pod::vsock_backends_under(dir);
    assert!(
        hypervisors.is_empty() && backends.is_empty(),
        "left behind: {hypervisors:?} {backends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_its_containers_survives_a_daemon_crash_and_leaves_nothing_behind() {
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    let artefacts = tokio::task::spawn_blocking(pod::artefacts).await.unwrap();
    let manifest = mvirt_podimage::image::Manifest::read(&artefacts).unwrap();
    let net = PodNet::create();
    let registry = Registry::start_on(net.host_ip);
    registry.push_image("busybox", "latest", &TestImage::busybox());
    let image = format!("{}/busybox:latest", registry.host());
    let socket = dir.path().join("vmm.sock");
    let mut daemon = spawn_daemon(dir.path(), &socket, &artefacts, &registry.host());
    let (mut client, mut vms) = connect(&socket).await;

    // Bad input: refused with a clear message, nothing recorded.
    let good_config = proto::PodConfig {
        name: "web".into(),
        memory_mib: 512,
        nics: vec![proto::Nic {
            id: "nic0".into(),
            tap: net.tap.clone(),
            mac: "52:54:00:12:34:99".into(),
        }],
        containers: vec![
            container(
                "logger",
                &image,
                "i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done",
                proto::PodRestartPolicy::Always,
            ),
            container(
                "once",
                &image,
                "echo done; exit 3",
                proto::PodRestartPolicy::Never,
            ),
        ],
        ..Default::default()
    };
    for (id, change, expected) in [
        (
            new_id(),
            Box::new(|c: &mut proto::PodConfig| c.containers.clear())
                as Box<dyn Fn(&mut proto::PodConfig)>,
            "at least one container",
        ),
        (
            new_id(),
            Box::new(|c: &mut proto::PodConfig| c.name = "bad name".into()),
            "invalid pod name",
        ),
        (
            new_id(),
            Box::new(|c: &mut proto::PodConfig| c.containers[0].name = "Bad_Name".into()),
            "container name",
        ),
        (
            "NOT-A-UUID".to_string(),
            Box::new(|_: &mut proto::PodConfig| {}),
            "pod id",
        ),
    ] {
        let mut config = good_config.clone();
        change(&mut config);
        let err = client
            .create_pod(proto::CreatePodRequest {
                id,
                config: Some(config),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(expected),
            "{:?} lacks {expected:?}",
            err.message()
        );
    }
    let listed = client
        .list_pods(proto::ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.pods.is_empty());

    // Every change is reported on WatchPods, collected from before the pod exists.
    let mut watch = client
        .watch_pods(proto::WatchPodsRequest {
            include_initial: true,
        })
        .await
        .unwrap()
        .into_inner();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<proto::PodEvent>::new()));
    let sink = events.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            sink.lock().unwrap().push(event);
        }
    });

    // Create (idempotent), start.
    let id = new_id();
    let created = client
        .create_pod(proto::CreatePodRequest {
            id: id.clone(),
            config: Some(good_config.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&created), proto::PodState::Created);
    let again = client
        .create_pod(proto::CreatePodRequest {
            id: id.clone(),
            config: Some(good_config.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.created_at_ms, created.created_at_ms);
    let mut other = good_config.clone();
    other.memory_mib = 768;
    let err = client
        .create_pod(proto::CreatePodRequest {
            id: id.clone(),
            config: Some(other),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);

    let started = client
        .start_pod(proto::StartPodRequest { id: id.clone() })
        .await
        .unwrap_or_else(|e| panic!("start failed: {e:?}"))
        .into_inner();
    assert_eq!(state(&started), proto::PodState::Running, "{started:?}");
    assert!(started.pid > 0);
    assert_eq!(started.artefacts_version, manifest.version);
    let info = vms
        .get_system_info(proto::GetSystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.pod_artefacts_version, manifest.version);
    assert_eq!(
        (info.running_pods, info.defined_pods, info.running_vms),
        (1, 1, 0)
    );
    // The microVM is not a VM of VmService.
    let vm_list = vms
        .list_vms(proto::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(vm_list.vms.is_empty());
    assert_eq!(
        vms.get_vm(proto::GetVmRequest { id: id.clone() })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );

    // Containers, addresses.
    let pod = wait_until_async(
        "the one-shot container to exit",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let pod = get(&mut client, &id).await;
                let once = pod.containers.iter().find(|c| c.name == "once")?;
                (once.state == proto::PodContainerState::Exited as i32).then_some(pod)
            }
        },
    )
    .await;
    let once = pod.containers.iter().find(|c| c.name == "once").unwrap();
    assert_eq!(once.exit_code, 3);
    assert!(once.image_digest.starts_with("sha256:"), "{once:?}");
    let logger = pod.containers.iter().find(|c| c.name == "logger").unwrap();
    assert_eq!(logger.state, proto::PodContainerState::Running as i32);
    let addresses: Vec<&String> = pod.interfaces.iter().flat_map(|i| &i.addresses).collect();
    assert!(
        addresses.iter().any(|a| a.starts_with(&net.guest_prefix)),
        "no address in {}0/24: {:?}",
        net.guest_prefix,
        pod.interfaces
    );

    // Logs: tail, and follow.
    wait_until_async("three log lines", Duration::from_secs(30), || {
        let mut client = client.clone();
        let id = id.clone();
        async move { (logs(&mut client, &id, "logger", 0).await.len() >= 3).then_some(()) }
    })
    .await;
    let tail = logs(&mut client, &id, "logger", 2).await;
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert!(tail.iter().all(|l| l.starts_with("line ")), "{tail:?}");
    assert_eq!(
        logs(&mut client, &id, "once", 0).await,
        vec!["done".to_string()]
    );
    let mut follow = client
        .pod_logs(proto::PodLogsRequest {
            pod_id: id.clone(),
            container: "logger".into(),
            tail: 1,
            follow: true,
            timestamps: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut followed = Vec::new();
    while followed.len() < 3 {
        let entry = tokio::time::timeout(Duration::from_secs(20), follow.next())
            .await
            .expect("a followed line")
            .unwrap()
            .unwrap();
        assert!(entry.timestamp_ns > 0);
        followed.push(String::from_utf8_lossy(&entry.line).into_owned());
    }
    drop(follow);
    assert_ne!(followed[0], followed[2]);

    // Exec, with and without a TTY.
    let (out, err, code) = exec(
        &mut client,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 5"],
        false,
    )
    .await;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 5));
    let (out, _, code) = exec(
        &mut client,
        &id,
        &["sh", "-c", "test -t 1 && echo stdout-is-a-tty; exit 2"],
        true,
    )
    .await;
    assert!(out.contains("stdout-is-a-tty\r\n"), "{out:?}");
    assert_eq!(code, 2);

    // The serial console shows the microVM's boot.
    let mut console = client
        .pod_console(tokio_stream::iter(vec![proto::PodConsoleInput {
            pod_id: id.clone(),
            data: vec![],
        }]))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), console.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first.data).contains("Linux version"));
    drop(console);

    // The watch saw the pod created, starting (booting, pulling, starting the containers),
    // running, then its status updates; nothing before it existed.
    let seen: Vec<(proto::PodEventType, proto::PodState, String)> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            let pod = e.pod.as_ref().unwrap();
            assert_eq!(pod.id, id);
            (
                proto::PodEventType::try_from(e.r#type).unwrap(),
                state(pod),
                pod.state_reason.clone(),
            )
        })
        .collect();
    let transitions: Vec<_> = seen
        .iter()
        .filter(|(t, _, _)| *t != proto::PodEventType::Updated)
        .map(|(t, s, r)| (*t, *s, r.as_str()))
        .collect();
    use proto::PodEventType::{Created, StateChanged};
    use proto::PodState::{Running, Starting};
    assert_eq!(
        transitions,
        vec![
            (Created, proto::PodState::Created, "created"),
            (StateChanged, Starting, "booting the microVM"),
            (StateChanged, Starting, "pulling images"),
            (StateChanged, Starting, "starting the containers"),
            (StateChanged, Running, "started"),
        ],
        "{seen:?}"
    );
    // RUNNING is honest: the event that first says so already carries both containers
    // launched (the logger's process running, the one-shot running or exited), never `created`.
    let first_running = events
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| e.pod.clone().filter(|p| state(p) == Running))
        .unwrap();
    let launched = |c: &proto::PodContainerStatus| {
        c.state == proto::PodContainerState::Running as i32
            || c.state == proto::PodContainerState::Exited as i32
    };
    assert_eq!(first_running.containers.len(), 2, "{first_running:?}");
    assert!(
        first_running.containers.iter().all(launched),
        "RUNNING before the containers were launched: {first_running:?}"
    );
    let logger_then = first_running
        .containers
        .iter()
        .find(|c| c.name == "logger")
        .unwrap();
    assert_eq!(
        logger_then.state,
        proto::PodContainerState::Running as i32,
        "{first_running:?}"
    );
    // The one-shot's exit reached the watch too: in that event already, or an UPDATED after.
    let last = events.lock().unwrap().last().unwrap().pod.clone().unwrap();
    let once_last = last.containers.iter().find(|c| c.name == "once").unwrap();
    assert_eq!(
        (once_last.state, once_last.exit_code),
        (proto::PodContainerState::Exited as i32, 3),
        "{seen:?}"
    );

    // The daemon crashes; the restarted one adopts the running pod.
    daemon.kill();
    let mut daemon = spawn_daemon(dir.path(), &socket, &artefacts, &registry.host());
    let (mut client, _) = connect(&socket).await;
    let adopted = get(&mut client, &id).await;
    assert_eq!(state(&adopted), proto::PodState::Running, "{adopted:?}");
    assert_eq!(adopted.pid, started.pid);
    assert!(
        adopted.state_reason.contains("adopted"),
        "{}",
        adopted.state_reason
    );
    assert_eq!(
        logs(&mut client, &id, "once", 0).await,
        vec!["done".to_string()]
    );
    assert!(!logs(&mut client, &id, "logger", 1).await.is_empty());

    // Delete of a running pod is refused; stop; delete.
    let err = client
        .delete_pod(proto::DeletePodRequest {
            id: id.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let stopped = client
        .stop_pod(proto::StopPodRequest {
            id: id.clone(),
            timeout_seconds: 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&stopped), proto::PodState::Stopped, "{stopped:?}");
    assert_eq!(stopped.pid, 0);
    assert_nothing_runs_for(dir.path());
    client
        .delete_pod(proto::DeletePodRequest {
            id: id.clone(),
            force: false,
        })
        .await
        .unwrap();
    assert!(!dir.path().join("run").join(&id).exists());
    assert_eq!(
        client
            .get_pod(proto::GetPodRequest { id: id.clone() })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );

    // A pod whose image does not exist fails with the registry's reason, and a forced delete
    // leaves nothing.
    let bad = new_id();
    let mut config = good_config.clone();
    config.name = "missing".into();
    config.containers = vec![container(
        "app",
        &format!("{}/nope:1", registry.host()),
        "true",
        proto::PodRestartPolicy::Never,
    )];
    client
        .create_pod(proto::CreatePodRequest {
            id: bad.clone(),
            config: Some(config),
        })
        .await
        .unwrap();
    let err = client
        .start_pod(proto::StartPodRequest { id: bad.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let failed = get(&mut client, &bad).await;
    assert_eq!(state(&failed), proto::PodState::Failed);
    assert!(
        failed.state_reason.contains("nope")
            && failed
                .state_reason
                .contains("creating the containers failed"),
        "{}",
        failed.state_reason
    );
    assert_nothing_runs_for(dir.path());
    client
        .delete_pod(proto::DeletePodRequest {
            id: bad.clone(),
            force: true,
        })
        .await
        .unwrap();
    assert!(!dir.path().join("run").join(&bad).exists());

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon
        .wait_timeout(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    mvirt_testsupport::process::assert_no_hypervisor_outlives(dir.path(), Duration::ZERO).await;
    assert_nothing_runs_for(dir.path());
}
