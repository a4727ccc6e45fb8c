//! Start latency and memory of mvirt-vmm against QEMU started by hand.
//!
//! For each round, alternating so that machine load affects both alike:
//! - by hand: spawn `qemu-system-x86_64` with the same command line the driver builds (serial on
//!   stdout, QMP on a unix socket), time until QMP answers `query-status` (polled every 1 ms) and
//!   until its first serial byte;
//! - mvirt-vmm: `StartVm` over gRPC on an in-process daemon, time until it returns (process
//!   running, QMP answering) and until the first byte arrives on a `Console` stream opened right
//!   after.
//!
//! Then the daemon's resident memory per managed VM: RSS of this process with `VMS` guests
//! running minus RSS before, divided by `VMS` (QEMU's own memory is not counted).
//!
//! Run: `cargo bench -p mvirt-vmm --bench start_latency` (as root). Prints ratios.

use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

use mvirt_vmm::hypervisor::qemu::{Accel, QemuConfig, QemuDriver};
use mvirt_vmm::hypervisor::{HypervisorChoice, LaunchRequest, RunDir};
use mvirt_vmm::proto;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use tokio_stream::StreamExt;

const ROUNDS: usize = 3;
const VMS: usize = 4;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn new_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn config(guest: &mvirt_testsupport::guest::TestGuest, name: &str) -> proto::VmConfig {
    proto::VmConfig {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        boot: Some(proto::vm_config::Boot::Kernel(proto::KernelBoot {
            kernel: guest.kernel.display().to_string(),
            initramfs: guest.initramfs.display().to_string(),
            cmdline: guest.cmdline.clone(),
        })),
        ..Default::default()
    }
}

/// QEMU by hand with the driver's command line, serial on stdout.
async fn by_hand(
    guest: &mvirt_testsupport::guest::TestGuest,
    dir: &std::path::Path,
) -> (Duration, Duration) {
    let qemu_config = QemuConfig {
        accel: Accel::Tcg,
        tcg_tb_size_mib: 32,
        ..QemuConfig::default()
    };
    let driver = QemuDriver::new(qemu_config);
    let run = RunDir::new(dir.to_path_buf());
    let spec = mvirt_vmm::grpc::spec_from_proto(config(guest, "by-hand")).unwrap();
    let id = new_id();
    let request = LaunchRequest {
        vm_id: &id,
        spec: &spec,
        run: &run,
        cidata: None,
    };
    // Same machine, but the serial port and QMP as a person would type them.
    let mut args = driver.command_line(&request);
    let mut i = 0;
    while i < args.len() {
        if args[i] == "-chardev" || args[i] == "-mon" || args[i] == "-serial" {
            args.drain(i..i + 2);
        } else {
            i += 1;
        }
    }
    args.extend(["-serial".to_string(), "stdio".to_string()]);
    args.extend([
        "-qmp".to_string(),
        format!("unix:{}/qmp.sock,server=on,wait=off", dir.display()),
    ]);
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qemu");
    // Running = QMP answers `query-status`, as the driver requires.
    let qmp = dir.join("qmp.sock");
    loop {
        if qmp.exists()
            && mvirt_vmm::hypervisor::qmp::execute(&qmp, "query-status", None)
                .await
                .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let running = t0.elapsed();
    let mut out = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    out.read_exact(&mut byte).await.expect("first serial byte");
    let first_byte = t0.elapsed();
    let _ = child.kill().await;
    (running, first_byte)
}

async fn via_vmm(
    client: &mut VmServiceClient<tonic::transport::Channel>,
    guest: &mvirt_testsupport::guest::TestGuest,
) -> (Duration, Duration) {
    let id = new_id();
    client
        .create_vm(proto::CreateVmRequest {
            id: id.clone(),
            config: Some(config(guest, "bench")),
        })
        .await
        .unwrap();
    let t0 = Instant::now();
    client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap();
    let running = t0.elapsed();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(proto::ConsoleInput {
        vm_id: id.clone(),
        data: vec![],
    })
    .await
    .unwrap();
    let mut stream = client
        .console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    loop {
        let msg = stream.next().await.expect("console open").unwrap();
        if !msg.data.is_empty() {
            break;
        }
    }
    let first_byte = t0.elapsed();
    client
        .delete_vm(proto::DeleteVmRequest { id, force: true })
        .await
        .unwrap();
    (running, first_byte)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let guest = mvirt_testsupport::guest::standard_guest();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = mvirt_vmm::vmm::VmmConfig::new(dir.path().to_path_buf());
    cfg.allowed_dirs.push(mvirt_testsupport::cache_dir());
    cfg.hypervisor = HypervisorChoice::Qemu;
    cfg.qemu.accel = Accel::Tcg;
    cfg.qemu.tcg_tb_size_mib = 32;
    let socket = mvirt_common::listen::ListenAddr::Unix(cfg.data_dir.join("vmm.sock"));
    let daemon = mvirt_vmm::start(cfg, socket).await.unwrap();
    let mut client = VmServiceClient::connect(daemon.endpoint()).await.unwrap();

    let (mut hand_run, mut hand_byte, mut vmm_run, mut vmm_byte) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let scratch = tempfile::tempdir().unwrap();
        let (r, b) = by_hand(&guest, scratch.path()).await;
        hand_run.push(r);
        hand_byte.push(b);
        let (r, b) = via_vmm(&mut client, &guest).await;
        vmm_run.push(r);
        vmm_byte.push(b);
        eprintln!(
            "round {round}: by hand {:?}/{:?}, mvirt-vmm {:?}/{:?}",
            hand_run[round], hand_byte[round], vmm_run[round], vmm_byte[round]
        );
    }
    let (hr, hb, vr, vb) = (
        median(hand_run),
        median(hand_byte),
        median(vmm_run),
        median(vmm_byte),
    );
    println!(
        "start → process running: by hand {hr:?}, mvirt-vmm {vr:?}, ratio {:.2}",
        vr.as_secs_f64() / hr.as_secs_f64()
    );
    println!(
        "start → first console byte: by hand {hb:?}, mvirt-vmm {vb:?}, ratio {:.2}",
        vb.as_secs_f64() / hb.as_secs_f64()
    );

    // Memory of the daemon per managed VM.
    let before = rss_kib();
    let mut ids = Vec::new();
    for i in 0..VMS {
        let id = new_id();
        let mut c = config(&guest, &format!("mem-{i}"));
        c.memory_mib = 64;
        client
            .create_vm(proto::CreateVmRequest {
                id: id.clone(),
                config: Some(c),
            })
            .await
            .unwrap();
        client
            .start_vm(proto::StartVmRequest { id: id.clone() })
            .await
            .unwrap();
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib();
    println!(
        "mvirt-vmm resident memory per running VM: {} KiB ({} KiB with 0, {} KiB with {VMS})",
        after.saturating_sub(before) / VMS as u64,
        before,
        after
    );
    for id in ids {
        client
            .delete_vm(proto::DeleteVmRequest { id, force: true })
            .await
            .unwrap();
    }
    daemon.stop().await.unwrap();
}
