//! mvirt-one as `/init` of a real QEMU TCG microVM (see `support/pod_vm.rs`): the host waits
//! for the readiness connection, talks to OneService over the hybrid vsock socket, checks the
//! DHCP-configured network, runs a container pulled from the registry, reads its logs, execs
//! into it, and shuts the VM down.

mod support;

use std::time::Duration;

use mvirt_one::proto;
use mvirt_testsupport::process::wait_until_async;
use support::pod_vm::PodVm;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_vm_with_mvirt_one_as_init_runs_a_container_from_the_registry() {
    mvirt_common::telemetry::init_for_tests();
    let vm = PodVm::boot().await;
    eprintln!("pod VM ready {:?} after QEMU started", vm.boot_to_ready);
    let mut client = vm.client.clone();
    let host_ip = vm.host_ip;
    let guest_prefix = vm.guest_prefix.clone();
    let registry_host = vm.registry.host();
    let console_text = || vm.console_text();
    let health = client
        .health(proto::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.mode, "init");
    assert!(health.rss_bytes > 0, "{health:?}");
    assert!(
        health.init_after_boot_ms > 0 && health.ready_after_boot_ms >= health.init_after_boot_ms,
        "{health:?}"
    );

    // DHCPv4 and DHCPv6 configured the NIC (DNS servers from both).
    let guest_prefix6 = vm.guest_prefix6.clone();
    let host_ip6 = vm.host_ip6.clone();
    let info = wait_until_async(
        "DHCPv4 and DHCPv6 leases in the guest",
        Duration::from_secs(90),
        || {
            let mut client = client.clone();
            let guest_prefix = guest_prefix.clone();
            let guest_prefix6 = guest_prefix6.clone();
            let host_ip6 = host_ip6.clone();
            async move {
                let info = client
                    .get_network_info(proto::GetNetworkInfoRequest {})
                    .await
                    .ok()?
                    .into_inner();
                let has = |prefix: &str| {
                    info.interfaces
                        .iter()
                        .any(|i| i.addresses.iter().any(|a| a.starts_with(prefix)))
                };
                // DHCPv6 addresses are /128 (SLAAC ones are /64 and not in the range).
                let has_dhcpv6 = info.interfaces.iter().any(|i| {
                    i.addresses
                        .iter()
                        .any(|a| a.starts_with(&guest_prefix6) && a.ends_with("/128"))
                });
                // resolv.conf is written right after the addresses and routes.
                (has(&guest_prefix) && has_dhcpv6 && info.dns_servers.contains(&host_ip6))
                    .then_some(info)
            }
        },
    )
    .await;
    assert!(
        info.default_gateways.contains(&host_ip.to_string()),
        "{info:?}"
    );
    assert!(info.dns_servers.contains(&host_ip.to_string()), "{info:?}");

    // A container from the registry, its logs, an exec.
    let pod_id = "6f1c2d3e-4a5b-4c6d-8e7f-001122334455".to_string();
    let pod = client
        .create_pod(proto::CreatePodRequest {
            id: pod_id.clone(),
            hostname: "guestpod".into(),
            containers: vec![proto::ContainerSpec {
                name: "web".into(),
                image: format!("{}/busybox:latest", registry_host),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo hello from $(hostname); exec sleep 1000".into(),
                ],
                ..Default::default()
            }],
        })
        .await
        .unwrap_or_else(|e| panic!("create pod: {e:?}; console:\n{}", console_text()))
        .into_inner();
    assert_eq!(pod.phase, proto::PodPhase::Created as i32);
    client
        .start_pod(proto::StartPodRequest { id: pod_id.clone() })
        .await
        .unwrap();
    let lines = wait_until_async(
        "the container's first log line",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            let pod_id = pod_id.clone();
            async move {
                let mut stream = client
                    .logs(proto::LogsRequest {
                        pod_id,
                        container: "web".into(),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                let mut lines = Vec::new();
                while let Some(Ok(entry)) = stream.next().await {
                    lines.push(String::from_utf8_lossy(&entry.line).to_string());
                }
                (!lines.is_empty()).then_some(lines)
            }
        },
    )
    .await;
    assert_eq!(
        lines,
        ["hello from guestpod"],
        "console:\n{}",
        console_text()
    );

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::ExecInput {
        input: Some(proto::exec_input::Input::Start(proto::ExecStart {
            pod_id: pod_id.clone(),
            container: "web".into(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo $((6*7)); exit 5".into(),
            ],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    drop(tx);
    let mut output = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut stdout, mut code) = (Vec::new(), None);
    while let Some(message) = output.next().await {
        match message.unwrap().output {
            Some(proto::exec_output::Output::Stdout(b)) => stdout.extend(b),
            Some(proto::exec_output::Output::ExitCode(c)) => code = Some(c),
            _ => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "42\n");
    assert_eq!(code, Some(5));

    // cgroup v2 (mounted by mvirt-one as init): every container has its own cgroup, which
    // exec'd processes join; a memory limit OOM-kills and the status says so; deleting the pod
    // removes its cgroups (DeletePod fails if one cannot be removed).
    let (stdout, code) = exec(&mut client, &pod_id, "web", &["cat", "/proc/self/cgroup"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        format!("0::/mvirt-one/{pod_id}/web\n")
    );
    let hog_pod = "6f1c2d3e-4a5b-4c6d-8e7f-00112233aaaa".to_string();
    client
        .create_pod(proto::CreatePodRequest {
            id: hog_pod.clone(),
            hostname: "hog".into(),
            containers: vec![proto::ContainerSpec {
                name: "hog".into(),
                image: format!("{}/busybox:latest", registry_host),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo start; tail /dev/zero".into(),
                ],
                restart_policy: proto::RestartPolicy::Never as i32,
                memory_limit_bytes: Some(32 * 1024 * 1024),
                pids_limit: Some(16),
                cpu_millicores: Some(500),
                ..Default::default()
            }],
        })
        .await
        .unwrap_or_else(|e| panic!("create hog pod: {e:?}; console:\n{}", console_text()));
    client
        .start_pod(proto::StartPodRequest {
            id: hog_pod.clone(),
        })
        .await
        .unwrap();
    let hog = wait_until_async("the hog to be OOM-killed", Duration::from_secs(120), || {
        let mut client = client.clone();
        let id = hog_pod.clone();
        async move {
            let pod = client
                .get_pod(proto::GetPodRequest { id })
                .await
                .ok()?
                .into_inner();
            pod.containers
                .into_iter()
                .find(|c| c.state == proto::ContainerState::Exited as i32)
        }
    })
    .await;
    assert!(
        hog.oom_killed && hog.exit_code == 137,
        "{hog:?}; console:\n{}",
        console_text()
    );
    client
        .delete_pod(proto::DeletePodRequest {
            id: hog_pod.clone(),
            timeout_seconds: 1,
        })
        .await
        .unwrap_or_else(|e| panic!("delete hog pod: {e:?}"));

    // Shutdown stops the containers and powers the VM off.
    client
        .shutdown(proto::ShutdownRequest { timeout_seconds: 2 })
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut vm = vm;
        let status = vm.qemu.wait_timeout(Duration::from_secs(60));
        (status, vm)
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some(),
        "the VM did not power off; console:\n{}",
        status.1.console_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpi_power_button_stops_containers_gracefully_and_powers_off() {
    mvirt_common::telemetry::init_for_tests();
    let vm = PodVm::boot().await;
    let mut client = vm.client.clone();
    let pod_id = "6f1c2d3e-4a5b-4c6d-8e7f-001122334466".to_string();
    client
        .create_pod(proto::CreatePodRequest {
            id: pod_id.clone(),
            hostname: String::new(),
            containers: vec![proto::ContainerSpec {
                name: "graceful".into(),
                image: format!("{}/busybox:latest", vm.registry.host()),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "trap 'exit 0' TERM; while true; do sleep 0.1; done".into(),
                ],
                ..Default::default()
            }],
        })
        .await
        .unwrap_or_else(|e| panic!("create pod: {e:?}; console:\n{}", vm.console_text()));
    client
        .start_pod(proto::StartPodRequest { id: pod_id.clone() })
        .await
        .unwrap();
    wait_until_async("the container running", Duration::from_secs(60), || {
        let mut client = client.clone();
        let pod_id = pod_id.clone();
        async move {
            let pod = client
                .get_pod(proto::GetPodRequest { id: pod_id })
                .await
                .ok()?
                .into_inner();
            (pod.containers[0].state == proto::ContainerState::Running as i32).then_some(())
        }
    })
    .await;

    vm.press_power_button();
    let (status, vm) = tokio::task::spawn_blocking(move || {
        let mut vm = vm;
        (vm.qemu.wait_timeout(Duration::from_secs(60)), vm)
    })
    .await
    .unwrap();
    let console = vm.console_text();
    assert!(
        status.is_some(),
        "the VM did not power off; console:\n{console}"
    );
    assert!(console.contains("power button pressed"), "{console}");
    // The audit entry (tracing on the console) of the container's graceful exit.
    assert!(
        console.contains("container graceful exited with code 0"),
        "{console}"
    );
}

/// Runs `command` in a container (no TTY, no stdin); returns stdout and the exit code.
async fn exec(
    client: &mut proto::one_service_client::OneServiceClient<tonic::transport::Channel>,
    pod_id: &str,
    container: &str,
    command: &[&str],
) -> (Vec<u8>, Option<i32>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::ExecInput {
        input: Some(proto::exec_input::Input::Start(proto::ExecStart {
            pod_id: pod_id.into(),
            container: container.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    drop(tx);
    let mut output = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut stdout, mut code) = (Vec::new(), None);
    while let Some(message) = output.next().await {
        match message.unwrap().output {
            Some(proto::exec_output::Output::Stdout(b)) => stdout.extend(b),
            Some(proto::exec_output::Output::ExitCode(c)) => code = Some(c),
            _ => {}
        }
    }
    (stdout, code)
}
