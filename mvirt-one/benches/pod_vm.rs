//! Benchmark (run as root: `cargo bench -p mvirt-one --bench pod_vm`): a pod VM under QEMU TCG
//! with mvirt-one as /init.
//!
//! - boot: guest kernel start → OneService listening (the guest kernel's uptime when the server
//!   started), and host wall time from starting QEMU to the readiness connection;
//! - StartPod → container running, image cached, in the guest and, as the baseline, with
//!   mvirt-one in local mode on the host (same image, same registry); reported as a ratio;
//! - mvirt-one's resident memory at idle in the guest.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mvirt_common::Shutdown;
use mvirt_one::grpc::Mode;
use mvirt_one::proto;
use mvirt_one::proto::one_service_client::OneServiceClient;
use mvirt_one::runtime::RuntimeConfig;
use mvirt_one::server::{self, BoundListener, DaemonConfig, Listen};
use tonic::transport::Channel;

const RUNS: usize = 5;

fn pod_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012x}", i + 1)
}

/// Creates (image cached after the first) and starts pods; returns StartPod → Running times.
async fn start_to_running(client: &mut OneServiceClient<Channel>, image: &str) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in 0..=RUNS {
        let id = pod_id(i);
        client
            .create_pod(proto::CreatePodRequest {
                id: id.clone(),
                hostname: "bench".into(),
                containers: vec![proto::ContainerSpec {
                    name: "main".into(),
                    image: image.into(),
                    command: vec!["/bin/sleep".into(), "1000".into()],
                    ..Default::default()
                }],
            })
            .await
            .expect("create pod");
        let started = Instant::now();
        client
            .start_pod(proto::StartPodRequest { id: id.clone() })
            .await
            .expect("start pod");
        loop {
            let pod = client
                .get_pod(proto::GetPodRequest { id: id.clone() })
                .await
                .expect("get pod")
                .into_inner();
            if pod.containers[0].state == proto::ContainerState::Running as i32 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The first run includes the pull; it is not part of the measurement.
        if i > 0 {
            times.push(started.elapsed());
        }
        client
            .delete_pod(proto::DeletePodRequest {
                id,
                timeout_seconds: 1,
            })
            .await
            .expect("delete pod");
    }
    times
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let vm = support::pod_vm::PodVm::boot().await;
    let mut client = vm.client.clone();
    let image = format!("{}/busybox:latest", vm.registry.host());
    let health = client
        .health(proto::HealthRequest {})
        .await
        .expect("health")
        .into_inner();
    let guest = median(start_to_running(&mut client, &image).await);
    let idle = client
        .health(proto::HealthRequest {})
        .await
        .expect("health")
        .into_inner();

    // Baseline: local mode on the host against the same registry.
    let data = tempfile::tempdir().expect("temp dir");
    let config = DaemonConfig {
        mode: Mode::Local,
        listen: Listen::Tcp("127.0.0.1:0".parse().expect("address")),
        runtime: RuntimeConfig {
            data_dir: data.path().to_path_buf(),
            launcher: PathBuf::from(env!("CARGO_BIN_EXE_mvirt-one")),
            insecure_registries: vec![vm.registry.host()],
            resolv_conf: None,
        },
        log_endpoint: String::new(),
    };
    let listener = BoundListener::bind(&config.listen).await.expect("bind");
    let BoundListener::Tcp(tcp) = &listener else {
        unreachable!("bound TCP")
    };
    let addr = tcp.local_addr().expect("address");
    let shutdown = Shutdown::new();
    let local = tokio::spawn(server::serve(config, listener, shutdown.clone()));
    let mut host_client = OneServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let host = median(start_to_running(&mut host_client, &image).await);
    shutdown.trigger();
    let _ = local.await;

    let _ = client
        .shutdown(proto::ShutdownRequest { timeout_seconds: 1 })
        .await;
    println!("pod VM (QEMU TCG, 1 vCPU), median of {RUNS} runs");
    println!(
        "boot: guest kernel start -> OneService listening: {} ms (guest clock)",
        health.ready_after_boot_ms
    );
    println!(
        "boot: guest kernel start -> mvirt-one started as init: {} ms; init -> listening: {} ms",
        health.init_after_boot_ms,
        health
            .ready_after_boot_ms
            .saturating_sub(health.init_after_boot_ms)
    );
    println!(
        "boot: QEMU start -> readiness connection: {} ms (host wall clock)",
        vm.boot_to_ready.as_millis()
    );
    println!(
        "StartPod -> container running (image cached): guest {:.1} ms, host local mode {:.1} ms, ratio {:.1}x",
        guest.as_secs_f64() * 1000.0,
        host.as_secs_f64() * 1000.0,
        guest.as_secs_f64() / host.as_secs_f64()
    );
    println!(
        "mvirt-one RSS at idle in the guest: {:.1} MiB (after the runs: {:.1} MiB)",
        health.rss_bytes as f64 / 1048576.0,
        idle.rss_bytes as f64 / 1048576.0
    );
}
