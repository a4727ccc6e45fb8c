//! A pod VM for tests and benchmarks: the product pod artefacts (`mvirt-podimage`: the Debian
//! kernel and an initramfs with mvirt-one as `/init`, its libraries, modules and CA bundle, no
//! busybox), built from this test's mvirt-one, booted in a real QEMU TCG microVM; vsock through
//! vhost-device-vsock, a TAP with dnsmasq (DHCPv4, router advertisements, DHCPv6) and a registry
//! on the host side. The host waits for the readiness connection and connects to OneService over
//! the hybrid vsock socket.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mvirt_one::client::{connect_hybrid_vsock, ONE_VSOCK_PORT};
use mvirt_one::proto;
use mvirt_one::proto::one_service_client::OneServiceClient;
use mvirt_podimage::image::{self, BuildConfig, Inputs, Manifest, INITRAMFS, VMLINUZ};
use mvirt_testsupport::netns::ip;
use mvirt_testsupport::process::{wait_until, wait_until_async, ChildGuard};
use mvirt_testsupport::registry::{Registry, TestImage};
use tonic::transport::Channel;

/// A persistent TAP with an address, removed on drop. QEMU attaches to it by name.
struct HostTap {
    name: String,
}

impl HostTap {
    fn create(address: &str) -> Self {
        let name = mvirt_testsupport::netns::unique_name("mone");
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        let tap = Self { name };
        ip(&["addr", "add", address, "dev", &tap.name]);
        ip(&["link", "set", &tap.name, "up"]);
        tap
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// The pod artefacts built from this test's mvirt-one into the test cache, in a directory named
/// by their version (so concurrent runs with another mvirt-one binary do not replace them):
/// `(vmlinuz, initramfs.img)`. Built once per process; a later run with the same inputs is a
/// cache hit.
fn pod_artefacts() -> &'static (PathBuf, PathBuf) {
    static ARTEFACTS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    ARTEFACTS.get_or_init(|| {
        let cache = mvirt_testsupport::cache_dir();
        let mut config = BuildConfig {
            out_dir: PathBuf::new(),
            mvirt_one: PathBuf::from(env!("CARGO_BIN_EXE_mvirt-one")),
            kernel: image::kernel_package(None).expect("the kernel package apt names"),
            cache_dir: cache.clone(),
            ca_bundle: PathBuf::from(image::CA_BUNDLE),
        };
        let version = Inputs::collect(&config)
            .expect("hash the pod artefacts' inputs")
            .version();
        config.out_dir = cache.join(format!("pod-artefacts-{}", &version[..16]));
        let (manifest, outcome) = image::build(&config).expect("build the pod artefacts");
        assert_eq!(manifest.version, version);
        assert_eq!(Manifest::read(&config.out_dir).unwrap(), manifest);
        eprintln!(
            "pod artefacts {} ({outcome:?}) in {}",
            manifest.version,
            config.out_dir.display()
        );
        (config.out_dir.join(VMLINUZ), config.out_dir.join(INITRAMFS))
    })
}

/// A booted pod VM and everything on the host side it needs; all removed on drop.
pub struct PodVm {
    pub client: OneServiceClient<Channel>,
    pub registry: Registry,
    pub host_ip: Ipv4Addr,
    /// Addresses the guest may lease start with this (`10.213.<n>.`).
    pub guest_prefix: String,
    /// The guest's DHCPv6 addresses start with this (`fd00:213:<n hex>::`).
    pub guest_prefix6: String,
    pub host_ip6: String,
    pub qemu: ChildGuard,
    /// Host wall time from starting QEMU to the readiness connection.
    pub boot_to_ready: Duration,
    console: PathBuf,
    qmp: PathBuf,
    _vsock: ChildGuard,
    _dhcp: ChildGuard,
    _tap: HostTap,
    _work: tempfile::TempDir,
}

impl PodVm {
    /// Boots a pod VM whose registry already holds `busybox:latest`.
    pub async fn boot() -> Self {
        mvirt_testsupport::require_root();
        let vhost = which("vhost-device-vsock");
        let work = tempfile::Builder::new()
            .prefix("mvirt-one-guest-")
            .tempdir()
            .unwrap();

        // Host side of the guest's network: TAP 10.<a>.<b>.1/24, DHCP, the registry.
        // A /24 per VM: unique across the VMs of this process and, most likely, across processes.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = (std::process::id() * 7 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            % 250
            + 1;
        let host_ip = Ipv4Addr::new(10, 213, n as u8, 1);
        let tap = HostTap::create(&format!("{host_ip}/24"));
        // IPv6 on the same link: fd00:213:<n>::1/64 (no DAD, so dnsmasq can use it at once).
        let host_ip6 = format!("fd00:213:{n:x}::1");
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{host_ip6}/64"),
            "dev",
            &tap.name,
            "nodad",
        ]);
        // dnsmasq: DHCPv4 (router, DNS), router advertisements with the managed flag, and
        // stateful DHCPv6 (address, DNS); no DNS service.
        let _dhcp = ChildGuard::spawn(
            "dnsmasq",
            Command::new("dnsmasq")
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--port=0",
                    "--bind-interfaces",
                ])
                .args(["--user=root", "--group=root", "--no-resolv", "--no-hosts"])
                .arg(format!("--interface={}", tap.name))
                .arg(format!(
                    "--dhcp-range=10.213.{n}.10,10.213.{n}.20,255.255.255.0,1h"
                ))
                .arg(format!(
                    "--dhcp-range=fd00:213:{n:x}::10,fd00:213:{n:x}::20,64,1h"
                ))
                .arg("--enable-ra")
                .arg(format!("--dhcp-option=option:router,{host_ip}"))
                .arg(format!("--dhcp-option=option:dns-server,{host_ip}"))
                .arg(format!("--dhcp-option=option6:dns-server,[{host_ip6}]"))
                .arg(format!(
                    "--dhcp-leasefile={}",
                    work.path().join("leases").display()
                ))
                .arg(format!(
                    "--pid-file={}",
                    work.path().join("dnsmasq.pid").display()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let registry = Registry::start_on(host_ip);
        registry.push_image("busybox", "latest", &TestImage::busybox());

        // The guest: the product kernel and initramfs (mvirt-one as /init, nothing else to run).
        let (vmlinuz, initramfs) = tokio::task::spawn_blocking(pod_artefacts)
            .await
            .unwrap()
            .clone();

        let vhost_socket = work.path().join("vhost.sock");
        let uds = work.path().join("vm.vsock");
        let _vsock = ChildGuard::spawn(
            "vhost-device-vsock",
            Command::new(&vhost)
                .arg("--guest-cid")
                .arg("3")
                .arg("--socket")
                .arg(&vhost_socket)
                .arg("--uds-path")
                .arg(&uds)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_until("vhost-device-vsock socket", Duration::from_secs(10), || {
            vhost_socket.exists().then_some(())
        });
        let ready_port = 9999u32;
        let ready =
            tokio::net::UnixListener::bind(format!("{}_{ready_port}", uds.display())).unwrap();

        let console = work.path().join("console.log");
        let qmp = work.path().join("qmp.sock");
        let cmdline = format!(
            "console=ttyS0 tsc_early_khz=2100000 panic=-1 mvirt.ready_port={ready_port} MVIRT_ONE_INSECURE_REGISTRIES={}",
            registry.host()
        );
        let boot_started = std::time::Instant::now();
        let qemu = ChildGuard::spawn(
            "qemu",
            Command::new("qemu-system-x86_64")
                .args([
                    "-accel",
                    "tcg,tb-size=256",
                    "-cpu",
                    "max",
                    "-m",
                    "768",
                    "-smp",
                    "1",
                ])
                .args(["-nographic", "-no-reboot", "-nodefaults"])
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qmp.display()))
                .arg("-kernel")
                .arg(&vmlinuz)
                .arg("-initrd")
                .arg(&initramfs)
                .arg("-append")
                .arg(&cmdline)
                .args(["-object", "memory-backend-memfd,id=mem,size=768M,share=on"])
                .args(["-numa", "node,memdev=mem"])
                .arg("-chardev")
                .arg(format!("socket,id=vsock0,path={}", vhost_socket.display()))
                .args(["-device", "vhost-user-vsock-pci,chardev=vsock0"])
                .arg("-netdev")
                .arg(format!(
                    "tap,id=net0,ifname={},script=no,downscript=no",
                    tap.name
                ))
                .args([
                    "-device",
                    "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
                ])
                .arg("-serial")
                .arg(format!("file:{}", console.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let console_text = || std::fs::read_to_string(&console).unwrap_or_default();
        let _ = &console_text;

        // mvirt-one says READY on the readiness port once OneService is about to listen.
        let accepted = tokio::time::timeout(Duration::from_secs(180), ready.accept()).await;
        let (mut stream, _) = accepted
            .unwrap_or_else(|_| panic!("no readiness connection; console:\n{}", console_text()))
            .unwrap();
        let mut line = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut line)
            .await
            .unwrap();
        assert_eq!(line, "READY\n");
        let boot_to_ready = boot_started.elapsed();

        let client = wait_until_async(
            "OneService over hybrid vsock",
            Duration::from_secs(30),
            || {
                let uds = uds.clone();
                async move {
                    let mut client = connect_hybrid_vsock(uds, ONE_VSOCK_PORT).await.ok()?;
                    client.health(proto::HealthRequest {}).await.ok()?;
                    Some(client)
                }
            },
        )
        .await;

        Self {
            client,
            registry,
            host_ip,
            guest_prefix: format!("10.213.{n}."),
            guest_prefix6: format!("fd00:213:{n:x}::"),
            host_ip6,
            qemu,
            boot_to_ready,
            console,
            qmp,
            _vsock,
            _dhcp,
            _tap: tap,
            _work: work,
        }
    }

    /// Presses the ACPI power button through QMP (`system_powerdown`).
    pub fn press_power_button(&self) {
        use std::io::{BufRead, BufReader, Write};
        let stream = std::os::unix::net::UnixStream::connect(&self.qmp).expect("connect QMP");
        let mut reader = BufReader::new(stream.try_clone().expect("clone QMP stream"));
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).expect("QMP greeting");
        for command in ["qmp_capabilities", "system_powerdown"] {
            writeln!(writer, "{{\"execute\":\"{command}\"}}").expect("QMP write");
            loop {
                line.clear();
                reader.read_line(&mut line).expect("QMP reply");
                if line.contains("\"return\"") {
                    break;
                }
                assert!(!line.contains("\"error\""), "QMP {command}: {line}");
            }
        }
    }

    /// What the guest printed on its serial console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

fn which(program: &str) -> PathBuf {
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(program))
        .chain([PathBuf::from(format!("/root/.cargo/bin/{program}"))])
        .collect::<Vec<_>>();
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{program} not found: run scripts/setup.sh"))
}
