//! Fixtures for mvirt-vmm's integration tests: the daemon in-process on a free port with the
//! QEMU driver under TCG, a gRPC client, console viewers, and persistent TAP devices.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mvirt_testsupport::guest::TestGuest;
use mvirt_vmm::hypervisor::qemu::Accel;
use mvirt_vmm::hypervisor::HypervisorChoice;
use mvirt_vmm::proto;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use mvirt_vmm::vmm::VmmConfig;
use mvirt_vmm::RunningVmm;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The standard test guest, built once per test binary.
pub fn guest() -> &'static TestGuest {
    static GUEST: OnceLock<TestGuest> = OnceLock::new();
    GUEST.get_or_init(mvirt_testsupport::guest::standard_guest)
}

pub fn config(data_dir: &Path, extra_allowed: &[&Path]) -> VmmConfig {
    let mut config = VmmConfig::new(data_dir.to_path_buf());
    config.allowed_dirs.push(mvirt_testsupport::cache_dir());
    config
        .allowed_dirs
        .extend(extra_allowed.iter().map(|p| p.to_path_buf()));
    config.hypervisor = HypervisorChoice::Qemu;
    config.qemu.accel = Accel::Tcg;
    config.qemu.tcg_tb_size_mib = 32;
    config
}

pub async fn start_daemon(config: VmmConfig) -> (RunningVmm, VmServiceClient<Channel>) {
    mvirt_common::telemetry::init_for_tests();
    let socket = mvirt_common::listen::ListenAddr::Unix(config.data_dir.join("vmm.sock"));
    let running = mvirt_vmm::start(config, socket)
        .await
        .expect("start mvirt-vmm in-process");
    let client = VmServiceClient::connect(running.endpoint())
        .await
        .expect("connect to mvirt-vmm");
    (running, client)
}

/// A fresh lowercase UUID (the kernel's generator).
pub fn new_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

/// Kills, on drop, every hypervisor process still running for the VMs it was told about, so a
/// failing test leaves no guest behind.
#[derive(Default)]
pub struct GuestReaper {
    vm_ids: Vec<String>,
}

impl GuestReaper {
    pub fn watch(&mut self, vm_id: &str) {
        self.vm_ids.push(vm_id.to_string());
    }
}

impl Drop for GuestReaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("qemu-system")
                && self.vm_ids.iter().any(|id| cmdline.contains(id.as_str()))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A direct-kernel VM config booting the standard guest.
pub fn guest_config(name: &str, extra_cmdline: &str) -> proto::VmConfig {
    let g = guest();
    proto::VmConfig {
        name: name.to_string(),
        vcpus: 1,
        memory_mib: 192,
        boot: Some(proto::vm_config::Boot::Kernel(proto::KernelBoot {
            kernel: g.kernel.display().to_string(),
            initramfs: g.initramfs.display().to_string(),
            cmdline: format!("{} {extra_cmdline}", g.cmdline).trim().to_string(),
        })),
        ..Default::default()
    }
}

/// A console viewer collecting everything it receives.
pub struct Viewer {
    pub output: Arc<Mutex<Vec<u8>>>,
    input: mpsc::Sender<proto::ConsoleInput>,
}

impl Viewer {
    pub async fn open(client: &mut VmServiceClient<Channel>, vm_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tx.send(proto::ConsoleInput {
            vm_id: vm_id.to_string(),
            data: vec![],
        })
        .await
        .unwrap();
        let mut stream = client
            .console(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("open console")
            .into_inner();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                sink.lock().unwrap().extend_from_slice(&msg.data);
            }
        });
        Self { output, input: tx }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).to_string()
    }

    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let output = self.output.clone();
        let needle_owned = needle.to_string();
        mvirt_testsupport::process::wait_until_async(
            &format!("console output {needle:?}"),
            timeout,
            || {
                let output = output.clone();
                let needle = needle_owned.clone();
                async move {
                    let text = String::from_utf8_lossy(&output.lock().unwrap()).to_string();
                    text.contains(&needle).then_some(text)
                }
            },
        )
        .await
    }

    pub async fn send(&self, text: &str) {
        self.input
            .send(proto::ConsoleInput {
                vm_id: String::new(),
                data: text.as_bytes().to_vec(),
            })
            .await
            .unwrap();
    }
}

/// A persistent TAP device (QEMU opens it by name), deleted on drop.
pub struct PersistentTap {
    pub name: String,
}

impl PersistentTap {
    pub fn create(host_cidr: &str) -> Self {
        let name = mvirt_testsupport::netns::unique_name("mvt");
        mvirt_testsupport::netns::ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        let tap = Self { name };
        mvirt_testsupport::netns::ip(&["addr", "add", host_cidr, "dev", &tap.name]);
        mvirt_testsupport::netns::ip(&["link", "set", &tap.name, "up"]);
        tap
    }
}

impl Drop for PersistentTap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

pub async fn get_vm(client: &mut VmServiceClient<Channel>, id: &str) -> proto::Vm {
    client
        .get_vm(proto::GetVmRequest { id: id.into() })
        .await
        .expect("GetVm")
        .into_inner()
}

pub fn state(vm: &proto::Vm) -> proto::VmState {
    proto::VmState::try_from(vm.state).unwrap_or(proto::VmState::Unspecified)
}
