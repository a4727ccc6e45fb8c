//! Pods under QEMU TCG on one host, every daemon real (the fixtures of `tests/pods.rs` and
//! `benches/vm_create.rs`: mvirt-api, the agent, mvirt-vmm with vhost-device-vsock, mvirt-ebpf
//! with a public network on an uplink holding a real registry, mvirt-zfs, mvirt-log). Three
//! things are measured side by side in the same run, interleaved per round so that load on the
//! shared machine hits all of them alike:
//!
//! - **pod**: `POST /v1/pods` (one container from the registry) → the container's process runs
//!   (mvirt-vmm's pod RUNNING and its container `running` in `GetPod`, which asks mvirt-one).
//!   That is the API, the agent, the NIC, the microVM's boot, mvirt-one's DHCP, the pull,
//!   unpacking and the container's start.
//! - **VM**: `POST /v1/vms` → the VM's hypervisor process runs (as `vm_create`).
//! - **kernel**: the TCG guest-kernel boot alone — the same pod kernel and initramfs, the same
//!   vCPUs and memory, created and started straight on mvirt-vmm (`CreateVm` + `StartVm`), until
//!   the kernel hands over to its init (`Run /init as init process` on the serial console).
//!
//! The pod's create is also split into stages: the host time at which the hypervisor's console
//! log appears and each of the kernel's and mvirt-one's marks (`/init`, OneService listening,
//! interface up, DHCP lease, readiness, pull started, pulled and unpacked, container running)
//! first shows on it.
//!
//! The pod artefacts carry a **release** mvirt-one, as production artefacts do
//! (`scripts/build-pod-artefacts.sh`): `target/release/mvirt-one` when fresh, else built once
//! under the test cache (`MVIRT_ONE_BINARY` overrides).
//!
//! Then the host memory of an idle pod: the RSS of its hypervisor (and of its vsock backend)
//! after it sat idle, against its guest memory, and how many such pods fit in 8 GiB.
//!
//! Targets (issue "Pods end to end"): host memory per idle pod ≤ 1.3× its guest memory; create →
//! container running ≤ 2× the TCG guest-kernel boot alone.
//!
//! Run as root: `cargo bench --profile dev -p mvirt-node --bench pod_create` (about 20 minutes;
//! `--profile dev` keeps the host side in the workspace's debug build instead of rebuilding it
//! all in release).
//! `MVIRT_BENCH_PODS` sets the rounds (default 20); `MVIRT_BENCH_IDLE_SECS` the idle time before
//! the memory is read (default 10).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mvirt_log::server::{BoundServer, Config as LogConfig};
use mvirt_testsupport::pod;
use mvirt_testsupport::registry::{Registry, TestImage};
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::pod_service_client::PodServiceClient;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use serde_json::json;
use tonic::transport::Channel;

const GUEST_MEMORY: u64 = 256 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;
/// What the kernel prints when it starts the initramfs' `/init` (mvirt-one in a pod).
const INIT_MARK: &str = "Run /init as init process";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An interface holding the registry's address: the host side a public network's traffic
/// reaches (mvirt-ebpf's `--uplink`), a veth pair with both ends up. Removed on drop.
struct Uplink {
    name: String,
    ip: std::net::Ipv4Addr,
}

impl Uplink {
    fn create() -> Uplink {
        let name = mvirt_testsupport::netns::unique_name("mvbu");
        let n = (std::process::id() % 200 + 20) as u8;
        let ip = std::net::Ipv4Addr::new(10, 217, n, 1);
        let peer = format!("{name}p");
        mvirt_testsupport::netns::ip(&[
            "link", "add", &name, "type", "veth", "peer", "name", &peer,
        ]);
        mvirt_testsupport::netns::ip(&["addr", "add", &format!("{ip}/24"), "dev", &name]);
        mvirt_testsupport::netns::ip(&["link", "set", &peer, "up"]);
        mvirt_testsupport::netns::ip(&["link", "set", &name, "up"]);
        Uplink { name, ip }
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A process's resident memory (`/proc/<pid>/status`), in bytes: all of it (`VmRSS`), and its
/// anonymous, file-backed (the binary and libraries: shared by every QEMU) and shared-memory
/// (here: the guest RAM's memfd pages the guest touched) parts.
#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

impl Rss {
    fn of(pid: i32) -> Rss {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .unwrap_or_else(|| panic!("no {name} for {pid}"))
        };
        Rss {
            total: field("VmRSS:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
            shmem: field("RssShmem:"),
        }
    }

    /// What this process adds on a host where other QEMUs already run (its file pages are
    /// shared with them).
    fn private(&self) -> u64 {
        self.anon + self.shmem
    }
}

/// Where a pod's create spends its time: the host time (since `POST /v1/pods`) at which each of
/// these first shows in the pod's serial console log (the kernel's and mvirt-one's lines), in
/// the order they happen. `None` for the console log itself: the hypervisor started.
const STAGES: [(&str, Option<&str>); 9] = [
    ("hypervisor up (console log exists)", None),
    ("kernel -> /init", Some(INIT_MARK)),
    (
        "mvirt-one: OneService listening",
        Some("OneService listening"),
    ),
    ("mvirt-one: interface up", Some("interface up")),
    ("mvirt-one: DHCP lease applied", Some("DHCP lease applied")),
    (
        "mvirt-one: readiness announced",
        Some("announced readiness"),
    ),
    ("mvirt-one: pull started", Some("pulling image manifest")),
    (
        "mvirt-one: pulled and unpacked",
        Some("image pulled and unpacked"),
    ),
    ("mvirt-one: container running", Some("container running")),
];

/// The host times of [`STAGES`] in one pod's create; `None` where a mark never showed.
type StageTimes = [Option<Duration>; STAGES.len()];

fn note_stages(console: &Path, start: Instant, times: &mut StageTimes) {
    let Ok(bytes) = std::fs::read(console) else {
        return;
    };
    let text = String::from_utf8_lossy(&bytes);
    let now = start.elapsed();
    for (slot, (_, mark)) in times.iter_mut().zip(STAGES) {
        if slot.is_none() && mark.is_none_or(|m| text.contains(m)) {
            *slot = Some(now);
        }
    }
}

/// Waits until mvirt-vmm's pod runs and a container of it is `running`; panics with its reason
/// if it failed. Meanwhile notes when the stages of [`STAGES`] show in `console`.
async fn wait_pod_running(
    pods: &mut PodServiceClient<Channel>,
    id: &str,
    console: &Path,
    start: Instant,
) -> (vmm::Pod, StageTimes) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut stages: StageTimes = Default::default();
    loop {
        note_stages(console, start, &mut stages);
        if let Ok(pod) = pods.get_pod(vmm::GetPodRequest { id: id.into() }).await {
            let pod = pod.into_inner();
            match vmm::PodState::try_from(pod.state).unwrap_or_default() {
                // mvirt-one's StartPod answers once the containers' supervisors are spawned:
                // the process runs when GetPod (which asks mvirt-one) says `running`.
                vmm::PodState::Running
                    if pod
                        .containers
                        .iter()
                        .any(|c| c.state == vmm::PodContainerState::Running as i32) =>
                {
                    note_stages(console, start, &mut stages);
                    return (pod, stages);
                }
                vmm::PodState::Failed => panic!("pod {id} failed: {}", pod.state_reason),
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "pod {id} not running in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_vm_pid(vms: &mut VmServiceClient<Channel>, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(vm) = vms.get_vm(vmm::GetVmRequest { id: id.into() }).await {
            if vm.into_inner().pid != 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "VM {id} has no hypervisor in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `file` contains `needle`.
async fn wait_in_file(file: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if std::fs::read(file).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in {} in time",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until mvirt-vmm has no pod or VM and mvirt-ebpf no NIC left, so that each
/// measurement runs alone.
async fn wait_clean(host: &HostDaemons) {
    let mut vms = VmServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .expect("vmm");
    let mut pods = PodServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .expect("vmm");
    let mut net = mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(
        host.endpoints.ebpf.clone(),
    )
    .await
    .expect("ebpf");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let vms_left = vms
            .list_vms(vmm::ListVmsRequest::default())
            .await
            .map(|r| r.into_inner().vms.len())
            .unwrap_or(1);
        let pods_left = pods
            .list_pods(vmm::ListPodsRequest::default())
            .await
            .map(|r| r.into_inner().pods.len())
            .unwrap_or(1);
        let nics_left = net
            .list_nics(mvirt_ebpf::proto::ListNicsRequest::default())
            .await
            .map(|r| r.into_inner().nics.len())
            .unwrap_or(1);
        if vms_left + pods_left + nics_left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left over: {vms_left} VMs, {pods_left} pods, {nics_left} NICs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The medians of each stage's host time over the rounds, and of the step from the stage before.
fn print_stages(rounds: &[StageTimes], total_p50: Duration) {
    println!("where a pod's create goes (medians over the rounds; ms since POST, step from the line before):");
    let median = |mut values: Vec<Duration>| {
        values.sort();
        values.get(values.len() / 2).copied()
    };
    let mut previous = Some(Duration::ZERO);
    for (n, (name, _)) in STAGES.iter().enumerate() {
        let at = median(rounds.iter().filter_map(|r| r[n]).collect());
        let step = median(
            rounds
                .iter()
                .filter_map(|r| {
                    let before = if n == 0 {
                        Some(Duration::ZERO)
                    } else {
                        r[n - 1]
                    };
                    Some(r[n]?.saturating_sub(before?))
                })
                .collect(),
        );
        match (at, step) {
            (Some(at), Some(step)) => {
                println!(
                    "  {name:<40} at {:>7.0} ms  step {:>7.0} ms",
                    ms(at),
                    ms(step)
                )
            }
            _ => println!("  {name:<40} never seen on the console"),
        }
        previous = at.or(previous);
    }
    if let Some(last) = previous {
        println!(
            "  {:<40} at {:>7.0} ms  step {:>7.0} ms",
            "GetPod: container running (p50)",
            ms(total_p50),
            ms(total_p50.saturating_sub(last))
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init("pod_create", mvirt_common::telemetry::LogFormat::Text);
    let rounds = env_or("MVIRT_BENCH_PODS", 20) as usize;
    let idle = Duration::from_secs(env_or("MVIRT_BENCH_IDLE_SECS", 10));
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();

    // Production artefacts carry a release mvirt-one (scripts/build-pod-artefacts.sh); so do
    // these: what runs after /init is emulated under TCG, and a debug build pays for it.
    let artefacts = tokio::task::spawn_blocking(|| pod::artefacts_for(pod::OneProfile::Release))
        .await
        .expect("artefacts");
    let uplink = Uplink::create();
    let registry = Registry::start_on(uplink.ip);
    registry.push_image("app", "1", &TestImage::busybox());
    let image = format!("{}/app:1", registry.host());

    let log = BoundServer::bind(LogConfig {
        listen: common::socket(root, "log"),
        data_dir: root.join("log"),
        retention: Default::default(),
    })
    .await
    .expect("log");
    let log_endpoint = log.endpoint();
    tokio::spawn(log.serve(mvirt_common::Shutdown::new()));
    let kernel_args = vec!["tsc_early_khz=2100000".to_string()];
    let options = HostOptions {
        uplink: Some(uplink.name.clone()),
        pods: Some(mvirt_vmm::pod::PodConfig {
            artefacts_dir: artefacts.clone(),
            ready_timeout: Duration::from_secs(300),
            kernel_args: kernel_args.clone(),
            insecure_registries: vec![registry.host()],
            ..Default::default()
        }),
    };
    let host = HostDaemons::start_with(root, &root.join("images"), &log_endpoint, options).await;
    // The kernel baseline boots copies of the pod artefacts (VMs may only use allowed dirs).
    let kernel = host.images.join("pod-vmlinuz");
    let initramfs = host.images.join("pod-initramfs.img");
    std::fs::copy(artefacts.join("vmlinuz"), &kernel).expect("copy the pod kernel");
    std::fs::copy(artefacts.join("initramfs.img"), &initramfs).expect("copy the pod initramfs");

    let api = mvirt_api::server::start(
        mvirt_api::server::ServerConfig::for_tests(
            "127.0.0.1".parse().expect("ip"),
            &root.join("api"),
        ),
        mvirt_common::Shutdown::new(),
    )
    .await
    .expect("api");
    let token = api.admin_token().expect("token");
    let rest = Rest::for_member(&api, &token);
    rest.wait_ready().await;
    let agent = Agent::start(agent_config(
        "bench",
        &root.join("agent"),
        &host.endpoints,
        &api,
        &token,
    ));
    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "bench", "spec": {"ipv4_prefix": "10.98.0.0/24", "is_public": true}}),
        )
        .await;
    let network_id = network["id"].as_str().expect("id").to_string();
    let template_id = rest.create_template("tiny", &host.images).await;
    let pod_body = |name: String| {
        json!({"name": name, "spec": {
            "vcpus": 1, "memory_bytes": GUEST_MEMORY,
            "containers": [{"name": "app", "image": image,
                "command": ["sh", "-c", "exec sleep 1000000"]}],
            "network_interfaces": [{"network_id": network_id}],
        }})
    };
    let vm_body = |name: String| {
        json!({"name": name, "spec": {"vcpus": 1, "memory_bytes": 64u64 << 20,
            "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
            "network_interfaces": [{"network_id": network_id}]}})
    };
    let mut pods = PodServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .expect("vmm");
    let mut vms = VmServiceClient::connect(host.endpoints.vmm.clone())
        .await
        .expect("vmm");

    // Warm up: the template import, the first NIC, the artefacts read.
    let warm = rest.post("/v1/vms", vm_body("warm".into())).await;
    let warm_vm = warm["id"].as_str().expect("id").to_string();
    rest.wait_vm_phase(&warm_vm, "running", Duration::from_secs(300))
        .await;
    rest.delete(&format!("/v1/vms/{warm_vm}")).await;
    let warm = rest.post("/v1/pods", pod_body("warm".into())).await;
    let warm_pod = warm["id"].as_str().expect("id").to_string();
    let console = |id: &str| root.join("vmm").join("run").join(id).join("console.log");
    wait_pod_running(&mut pods, &warm_pod, &console(&warm_pod), Instant::now()).await;
    rest.delete(&format!("/v1/pods/{warm_pod}")).await;
    wait_clean(&host).await;

    let (mut pod_times, mut vm_times, mut kernel_times) = (Vec::new(), Vec::new(), Vec::new());
    let (mut qemu_rss, mut backend_rss) = (Vec::new(), Vec::new());
    let mut pod_stages = Vec::new();
    for i in 0..rounds {
        // A pod through the control plane, to its container's process.
        let start = Instant::now();
        let created = rest.post("/v1/pods", pod_body(format!("pod-{i}"))).await;
        let id = created["id"].as_str().expect("id").to_string();
        let (running, stages) = wait_pod_running(&mut pods, &id, &console(&id), start).await;
        pod_times.push(start.elapsed());
        pod_stages.push(stages);
        assert!(
            running
                .containers
                .iter()
                .any(|c| c.state == vmm::PodContainerState::Running as i32),
            "pod {id} runs no container: {running:?}"
        );
        // Idle, then its host memory.
        tokio::time::sleep(idle).await;
        let pid = running.pid as i32;
        qemu_rss.push(Rss::of(pid));
        let backends: Vec<_> = pod::vsock_backends_under(root)
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains(&id))
            .collect();
        assert_eq!(backends.len(), 1, "the pod's vsock backend: {backends:?}");
        backend_rss.push(Rss::of(backends[0].0));
        rest.delete(&format!("/v1/pods/{id}")).await;
        wait_clean(&host).await;

        // A VM through the control plane, to its hypervisor process.
        let start = Instant::now();
        let vm = rest.post("/v1/vms", vm_body(format!("vm-{i}"))).await;
        let vm_id = vm["id"].as_str().expect("id").to_string();
        wait_vm_pid(&mut vms, &vm_id).await;
        vm_times.push(start.elapsed());
        rest.delete(&format!("/v1/vms/{vm_id}")).await;
        wait_clean(&host).await;

        // The pod kernel alone, straight on mvirt-vmm, to its init.
        let kernel_id = format!("00000000-0000-4000-8000-{i:012x}");
        let config = vmm::VmConfig {
            name: format!("kernel-{i}"),
            vcpus: 1,
            memory_mib: GUEST_MEMORY >> 20,
            boot: Some(vmm::vm_config::Boot::Kernel(vmm::KernelBoot {
                kernel: kernel.display().to_string(),
                initramfs: initramfs.display().to_string(),
                cmdline: format!("console=ttyS0 panic=-1 {}", kernel_args.join(" ")),
            })),
            ..Default::default()
        };
        let kernel_console = console(&kernel_id);
        let start = Instant::now();
        vms.create_vm(vmm::CreateVmRequest {
            id: kernel_id.clone(),
            config: Some(config),
        })
        .await
        .expect("create the kernel VM");
        vms.start_vm(vmm::StartVmRequest {
            id: kernel_id.clone(),
        })
        .await
        .expect("start the kernel VM");
        wait_in_file(&kernel_console, INIT_MARK).await;
        kernel_times.push(start.elapsed());
        let _ = vms
            .kill_vm(vmm::KillVmRequest {
                id: kernel_id.clone(),
            })
            .await;
        vms.delete_vm(vmm::DeleteVmRequest {
            id: kernel_id,
            force: true,
        })
        .await
        .expect("delete the kernel VM");
        wait_clean(&host).await;
        let q = qemu_rss[i];
        eprintln!(
            "round {i}: pod {:.0} ms, VM {:.0} ms, kernel {:.0} ms; pod hypervisor RSS {:.0} MiB (anon {:.0}, file {:.0}, guest RAM {:.0}), vsock backend {:.1} MiB",
            ms(pod_times[i]),
            ms(vm_times[i]),
            ms(kernel_times[i]),
            q.total as f64 / MIB,
            q.anon as f64 / MIB,
            q.file as f64 / MIB,
            q.shmem as f64 / MIB,
            backend_rss[i].total as f64 / MIB
        );
        let marks: Vec<String> = stages
            .iter()
            .map(|t| t.map_or("-".into(), |t| format!("{:.0}", ms(t))))
            .collect();
        eprintln!("round {i}: pod stages (ms since POST): {}", marks.join(" "));
    }

    let (p50, p99) = (percentile(&pod_times, 0.5), percentile(&pod_times, 0.99));
    let (v50, v99) = (percentile(&vm_times, 0.5), percentile(&vm_times, 0.99));
    let (k50, k99) = (
        percentile(&kernel_times, 0.5),
        percentile(&kernel_times, 0.99),
    );
    println!(
        "{rounds} rounds under QEMU TCG, guest memory {} MiB",
        GUEST_MEMORY >> 20
    );
    println!(
        "POST /v1/pods -> container running:       p50 {:>7.0} ms  p99 {:>7.0} ms",
        ms(p50),
        ms(p99)
    );
    println!(
        "POST /v1/vms -> hypervisor running:       p50 {:>7.0} ms  p99 {:>7.0} ms",
        ms(v50),
        ms(v99)
    );
    println!(
        "pod kernel alone (CreateVm -> /init):     p50 {:>7.0} ms  p99 {:>7.0} ms",
        ms(k50),
        ms(k99)
    );
    print_stages(&pod_stages, p50);
    let boot_ratio = p50.as_secs_f64() / k50.as_secs_f64();
    println!(
        "pod / kernel boot: p50 {boot_ratio:.2}, p99 {:.2} (target <= 2.0: {})",
        p99.as_secs_f64() / k99.as_secs_f64(),
        if boot_ratio <= 2.0 { "met" } else { "MISSED" }
    );
    println!(
        "pod / VM create: p50 {:.1}, p99 {:.1}",
        p50.as_secs_f64() / v50.as_secs_f64(),
        p99.as_secs_f64() / v99.as_secs_f64()
    );
    let median = |values: Vec<u64>| {
        let mut values = values;
        values.sort();
        values[values.len() / 2]
    };
    let pairs = || qemu_rss.iter().zip(&backend_rss);
    let per_pod = median(pairs().map(|(q, b)| q.total + b.total).collect());
    let hypervisor = median(qemu_rss.iter().map(|q| q.total).collect());
    let (anon, file, shmem) = (
        median(qemu_rss.iter().map(|q| q.anon).collect()),
        median(qemu_rss.iter().map(|q| q.file).collect()),
        median(qemu_rss.iter().map(|q| q.shmem).collect()),
    );
    let private = median(pairs().map(|(q, b)| q.private() + b.private()).collect());
    let memory_ratio = per_pod as f64 / GUEST_MEMORY as f64;
    println!(
        "idle pod host memory ({}s idle), medians: hypervisor RSS {:.0} MiB (anon {:.0}, file {:.0}, guest RAM touched {:.0}); with the vsock backend {:.0} MiB; private (anon + guest RAM, both processes) {:.0} MiB",
        idle.as_secs(),
        hypervisor as f64 / MIB,
        anon as f64 / MIB,
        file as f64 / MIB,
        shmem as f64 / MIB,
        per_pod as f64 / MIB,
        private as f64 / MIB,
    );
    println!(
        "host memory / guest memory: {memory_ratio:.2} (target <= 1.3: {}); private / guest memory: {:.2}",
        if memory_ratio <= 1.3 { "met" } else { "MISSED" },
        private as f64 / GUEST_MEMORY as f64
    );
    println!(
        "idle pods in 8 GiB: {} by the whole RSS, {} by the private memory (the QEMU binary and libraries counted once)",
        (8.0 * GIB / per_pod as f64).floor(),
        ((8.0 * GIB - file as f64) / private as f64).floor()
    );
    agent.stop().await;
    api.stop().await;
    drop(host);
}
