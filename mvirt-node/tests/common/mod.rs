//! A whole mvirt host in one test process: mvirt-log, mvirt-zfs (on a fresh zfs-fuse pool),
//! mvirt-ebpf (eBPF datapath, TAPs), mvirt-vmm (QEMU TCG), mvirt-api (single member) and the
//! node agent — every one the real daemon, started through its library. The local daemons
//! listen on unix sockets in the test's directory, as they do under /run/mvirt in production;
//! the API and the console relay use free TCP ports.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mvirt_common::listen::{ListenAddr, Listener, SocketOptions};
use mvirt_common::Shutdown;
use mvirt_node::agent::AgentConfig;
use mvirt_node::daemons::Endpoints;
use mvirt_testsupport::process::wait_until_async;
use mvirt_testsupport::zfs::TestPool;
use serde_json::{json, Value};

pub const CMDLINE: &str = "console=ttyS0 tsc_early_khz=2100000 panic=-1";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The unix socket of a local daemon (`<name>.sock`) in `dir`.
pub fn socket(dir: &Path, name: &str) -> ListenAddr {
    ListenAddr::Unix(dir.join(format!("{name}.sock")))
}

async fn bind_socket(dir: &Path, name: &str) -> Listener {
    Listener::bind(&socket(dir, name), &SocketOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{name}.sock: {}", mvirt_common::error::error_chain(&e)))
}

/// The template files: the standard test guest's kernel and initramfs and a raw disk.
pub fn template_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let guest = mvirt_testsupport::guest::standard_guest();
    let kernel = dir.join("vmlinuz");
    let initramfs = dir.join("initramfs.img");
    let disk = dir.join("disk.raw");
    std::fs::copy(&guest.kernel, &kernel).unwrap();
    std::fs::copy(&guest.initramfs, &initramfs).unwrap();
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(32 * 1024 * 1024)
        .unwrap();
    (disk, kernel, initramfs)
}

/// What a host runs beyond VMs.
#[derive(Default, Clone)]
pub struct HostOptions {
    /// mvirt-ebpf's `--uplink` (public networks reach the host stack and are NATed there).
    pub uplink: Option<String>,
    /// mvirt-vmm's pod settings (artefacts, kernel args, insecure registries).
    pub pods: Option<mvirt_vmm::pod::PodConfig>,
}

/// The local daemons of one host (everything but the API and the agent).
pub struct HostDaemons {
    pub endpoints: Endpoints,
    pub pool: TestPool,
    pub images: PathBuf,
    pub dir: PathBuf,
    shutdown: Shutdown,
    pub vmm: Option<mvirt_vmm::RunningVmm>,
    pub vmm_config: mvirt_vmm::vmm::VmmConfig,
    pin_dir: PathBuf,
    tunnel_device: String,
    /// The runtime mvirt-ebpf and mvirt-vmm run on when the host has a network namespace of
    /// its own ([`HostDaemons::start_in_netns`]); dropped last, after the daemons stopped.
    netns: Option<mvirt_testsupport::netns::NetnsRuntime>,
}

impl HostDaemons {
    /// Starts the daemons of one host in `dir`; template sources are imported from `images`
    /// (shared by all hosts of a test, as an NFS export or identical paths would be).
    pub async fn start(dir: &Path, images: &Path, log_endpoint: &str) -> HostDaemons {
        Self::start_with(dir, images, log_endpoint, HostOptions::default()).await
    }

    /// [`HostDaemons::start`] with an uplink for public networks and/or pods.
    pub async fn start_with(
        dir: &Path,
        images: &Path,
        log_endpoint: &str,
        options: HostOptions,
    ) -> HostDaemons {
        Self::start_inner(dir, images, log_endpoint, options, None).await
    }

    /// [`HostDaemons::start`] with mvirt-ebpf and mvirt-vmm (so the host's TAPs, VXLAN device
    /// and QEMU processes) inside the network namespace `netns` runs in, as on a machine of
    /// their own; mvirt-zfs stays in the host namespace (it has no network). The VXLAN port is
    /// 4789 in every namespace (the port is both the local and the remote one).
    /// Its namespace runtime holds copies of the mounts of pools created before it (of other
    /// hosts too): drop such hosts in reverse order of their start, or their pools stay busy.
    pub async fn start_in_netns(
        dir: &Path,
        images: &Path,
        log_endpoint: &str,
        netns: &mvirt_testsupport::netns::Netns,
    ) -> HostDaemons {
        Self::start_inner(
            dir,
            images,
            log_endpoint,
            HostOptions::default(),
            Some(netns),
        )
        .await
    }

    async fn start_inner(
        dir: &Path,
        images: &Path,
        log_endpoint: &str,
        options: HostOptions,
        netns: Option<&mvirt_testsupport::netns::Netns>,
    ) -> HostDaemons {
        let shutdown = Shutdown::new();
        let images = images.to_path_buf();
        if !images.join("disk.raw").exists() {
            template_files(&images);
        }

        let pool = TestPool::create();
        // The daemons in the namespace have a mount namespace of their own (for its /sys): the
        // volumes mvirt-zfs mounts later (each dataset is a FUSE mount of zfs-fuse) reach it
        // only through a shared mount, so the pool's mount becomes one before it is copied.
        let netns = netns.map(|ns| {
            mvirt_testsupport::netns::share_mounts_below(&pool.mountpoint);
            mvirt_testsupport::netns::NetnsRuntime::new(ns, 2)
        });
        let zfs_config = mvirt_zfs::server::Config {
            pool: pool.name.clone(),
            parent_dataset: "mvirt".into(),
            data_dir: dir.join("zfs"),
            import_dir: Some(images.clone()),
            log_endpoint: log_endpoint.to_string(),
            compression: "on".into(),
            backup_dir: dir.join("zfs-backups"),
        };
        let zfs = mvirt_zfs::server::Daemon::prepare(&zfs_config, &shutdown)
            .await
            .expect("mvirt-zfs prepares");
        let zfs_listener = bind_socket(dir, "zfs").await;
        let zfs_endpoint = zfs_listener.endpoint();
        tokio::spawn(zfs.serve(zfs_listener, shutdown.clone()));

        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/mvirt-node-test-{}",
            mvirt_testsupport::unique_suffix()
        ));
        let tunnel_device = format!("mvg{}", mvirt_testsupport::unique_suffix());
        let ebpf_config = mvirt_ebpf::DaemonConfig {
            data_dir: dir.join("ebpf"),
            pin_dir: pin_dir.clone(),
            lease_secs: 3600,
            conntrack_timeout_secs: 600,
            uplink: options.uplink.clone(),
            nft_table: format!("mvnt{}", mvirt_testsupport::unique_suffix()),
            tunnel_device: tunnel_device.clone(),
            tunnel_port: if netns.is_some() {
                4789
            } else {
                mvirt_testsupport::net::free_port()
            },
            guest_mtu: 1450,
            log_endpoint: log_endpoint.to_string(),
            control_rate: Default::default(),
        };
        let ebpf_listener = bind_socket(dir, "ebpf").await;
        let ebpf_start = mvirt_ebpf::start(ebpf_config, ebpf_listener, shutdown.clone());
        let ebpf = match &netns {
            Some(ns) => ns.run(ebpf_start).await,
            None => ebpf_start.await,
        }
        .expect("mvirt-ebpf starts (eBPF programs load)");

        let mut vmm_config = mvirt_vmm::vmm::VmmConfig::new(dir.join("vmm"));
        vmm_config.allowed_dirs = vec![dir.join("vmm"), pool.mountpoint.clone(), images.clone()];
        vmm_config.hypervisor = mvirt_vmm::hypervisor::HypervisorChoice::Qemu;
        // /dev/kvm exists here but cannot run guests (see TESTING.md).
        vmm_config.qemu.accel = mvirt_vmm::hypervisor::qemu::Accel::Tcg;
        vmm_config.log_endpoint = log_endpoint.to_string();
        vmm_config.default_stop_timeout = Duration::from_secs(10);
        if let Some(pods) = options.pods {
            vmm_config.pod = pods;
            vmm_config.qemu.vhost_vsock_binary = mvirt_testsupport::pod::vhost_device_vsock();
        }
        let vmm_start = mvirt_vmm::start(vmm_config.clone(), socket(dir, "vmm"));
        let vmm = match &netns {
            Some(ns) => ns.run(vmm_start).await,
            None => vmm_start.await,
        }
        .expect("mvirt-vmm starts");

        HostDaemons {
            endpoints: Endpoints {
                api: String::new(),
                vmm: vmm.endpoint(),
                zfs: zfs_endpoint,
                ebpf: ebpf.addr.endpoint(),
                log: log_endpoint.to_string(),
            },
            pool,
            images,
            dir: dir.to_path_buf(),
            shutdown,
            vmm: Some(vmm),
            vmm_config,
            pin_dir,
            tunnel_device,
            netns,
        }
    }

    /// Stops mvirt-vmm (guests keep running) and starts it again on the same socket.
    pub async fn restart_vmm(&mut self) {
        let old = self.vmm.take().expect("vmm running");
        let addr = old.addr.clone();
        old.stop().await.expect("vmm stops cleanly");
        let vmm_start = mvirt_vmm::start(self.vmm_config.clone(), addr);
        let vmm = match &self.netns {
            Some(ns) => ns.run(vmm_start).await,
            None => vmm_start.await,
        }
        .expect("mvirt-vmm restarts");
        self.vmm = Some(vmm);
    }
}

impl Drop for HostDaemons {
    /// Leaves nothing behind, even when the test failed: guests are killed, NICs (whose TAPs
    /// are persistent by design) deleted, the tunnel device and pinned maps removed.
    fn drop(&mut self) {
        let vmm = self.endpoints.vmm.clone();
        let ebpf = self.endpoints.ebpf.clone();
        let cleanup = |vmm: String, ebpf: String| async move {
            use mvirt_ebpf::proto::net_service_client::NetServiceClient;
            use mvirt_vmm::proto::vm_service_client::VmServiceClient;
            if let Ok(mut client) = VmServiceClient::connect(vmm.clone()).await {
                if let Ok(vms) = client
                    .list_vms(mvirt_vmm::proto::ListVmsRequest::default())
                    .await
                {
                    for vm in vms.into_inner().vms {
                        let _ = client
                            .kill_vm(mvirt_vmm::proto::KillVmRequest { id: vm.id.clone() })
                            .await;
                        let _ = client
                            .delete_vm(mvirt_vmm::proto::DeleteVmRequest {
                                id: vm.id,
                                force: true,
                            })
                            .await;
                    }
                }
            }
            if let Ok(mut client) =
                mvirt_vmm::proto::pod_service_client::PodServiceClient::connect(vmm.clone()).await
            {
                if let Ok(pods) = client
                    .list_pods(mvirt_vmm::proto::ListPodsRequest::default())
                    .await
                {
                    for pod in pods.into_inner().pods {
                        let _ = client
                            .delete_pod(mvirt_vmm::proto::DeletePodRequest {
                                id: pod.id,
                                force: true,
                            })
                            .await;
                    }
                }
            }
            if let Ok(mut client) = NetServiceClient::connect(ebpf).await {
                if let Ok(nics) = client
                    .list_nics(mvirt_ebpf::proto::ListNicsRequest::default())
                    .await
                {
                    for nic in nics.into_inner().nics {
                        let _ = client
                            .delete_nic(mvirt_ebpf::proto::DeleteNicRequest { id: nic.id })
                            .await;
                    }
                }
            }
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            // Twice: an agent of this host that was still converging (a test that ended without
            // stopping it) may have created a VM or NIC while the first pass ran.
            tokio::task::block_in_place(|| {
                handle.block_on(async {
                    cleanup(vmm.clone(), ebpf.clone()).await;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    cleanup(vmm, ebpf).await;
                })
            });
        }
        // Last resort: no hypervisor started from this host's directory outlives the test.
        kill_processes_mentioning(&self.dir);
        self.shutdown.trigger();
        // The namespace's runtime (and with it its mount namespace, which holds copies of the
        // pool's mounts) ends before the pool is destroyed.
        drop(self.netns.take());
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.tunnel_device])
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// SIGKILLs every process whose command line mentions `dir` (hypervisors started by this host's
/// vmm carry their socket and disk paths under it).
fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            eprintln!("test cleanup: killing leftover process {pid} that uses {needle}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A started node agent.
pub struct Agent {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    pub fn start(config: AgentConfig) -> Agent {
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            mvirt_node::agent::run(config, stop)
                .await
                .expect("agent runs");
        });
        Agent { shutdown, task }
    }

    /// Kills the agent task at once (as `kill -9` would: no clean shutdown).
    pub fn kill(self) {
        self.task.abort();
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Agent {
    /// An agent a test did not stop must not keep converging while the host is torn down.
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.task.abort();
    }
}

/// The agent configuration of a host whose agent registers with `api` (TLS with the member's
/// cluster CA as `--ca-file`, or plain when the member runs `--insecure-plaintext`).
pub fn agent_config(
    name: &str,
    data_dir: &Path,
    endpoints: &Endpoints,
    api: &mvirt_api::server::Running,
    token: &str,
) -> AgentConfig {
    let mut endpoints = endpoints.clone();
    endpoints.api = api.grpc_url();
    let plain = endpoints.api.starts_with("http://");
    AgentConfig {
        data_dir: data_dir.to_path_buf(),
        endpoints,
        token: token.to_string(),
        name: name.to_string(),
        address: "127.0.0.1".into(),
        labels: Default::default(),
        firmware: None,
        resync_interval: Duration::from_secs(5),
        stop_timeout_secs: 10,
        deregister_on_shutdown: false,
        cpu_overcommit: 1.0,
        ha_fencing: Duration::from_secs(30),
        console_listen: Some(loopback()),
        console_endpoint: String::new(),
        tls: mvirt_node::tls::TlsOptions {
            insecure_plaintext: plain,
            ca_file: (!plain).then(|| member_ca_file(api)),
            ca_fingerprint: None,
        },
    }
}

/// The cluster CA a member created at bootstrap: `<data-dir>/tls/ca.pem`.
pub fn member_ca_file(api: &mvirt_api::server::Running) -> PathBuf {
    api.data_dir.join("tls").join("ca.pem")
}

/// A REST client for the API: over TLS it trusts exactly the member's cluster CA.
#[derive(Clone)]
pub struct Rest {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    /// The cluster CA (PEM) for `https://`; `None` for a member run `--insecure-plaintext`.
    pub ca_pem: Option<String>,
}

impl Rest {
    /// A client of `api`'s REST listener with `token`.
    pub fn for_member(api: &mvirt_api::server::Running, token: &str) -> Rest {
        let base = api.api_url();
        let ca_pem = base
            .starts_with("https://")
            .then(|| mvirt_testsupport::tls::read_ca(&api.data_dir));
        let http = match &ca_pem {
            Some(ca) => mvirt_testsupport::tls::reqwest_client(ca),
            None => reqwest::Client::new(),
        };
        Rest {
            base,
            token: token.to_string(),
            http,
            ca_pem,
        }
    }

    /// The same API with another token.
    pub fn with_token(&self, token: &str) -> Rest {
        Rest {
            token: token.to_string(),
            ..self.clone()
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("REST call");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Waits until the token is accepted (the bootstrap commits it through Raft).
    pub async fn wait_ready(&self) {
        wait_until_async(
            "the API to accept the admin token",
            Duration::from_secs(30),
            || {
                let rest = self.clone();
                async move {
                    let (status, _) = rest.call(reqwest::Method::GET, "/v1/projects", None).await;
                    (status == 200).then_some(())
                }
            },
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, value) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {value}");
        value
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "POST {path}: {status} {value}"
        );
        value
    }

    pub async fn put(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.call(reqwest::Method::PUT, path, Some(body)).await;
        assert_eq!(status, 200, "PUT {path}: {value}");
        value
    }

    pub async fn delete(&self, path: &str) {
        let (status, value) = self.call(reqwest::Method::DELETE, path, None).await;
        assert!(
            (200..300).contains(&status),
            "DELETE {path}: {status} {value}"
        );
    }

    /// Waits until the VM's status phase is `phase`; returns the VM. On timeout the panic shows
    /// the VM as last seen.
    pub async fn wait_vm_phase(&self, id: &str, phase: &str, timeout: Duration) -> Value {
        let path = format!("/v1/vms/{id}");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let vm = self.get(&path).await;
            if vm["status"]["phase"] == phase {
                return vm;
            }
            if tokio::time::Instant::now() > deadline {
                let nodes = self.get("/v1/nodes").await;
                let volumes = self.get("/v1/volumes").await;
                let nics = self.get("/v1/nics").await;
                let templates = self.get("/v1/templates").await;
                panic!(
                    "VM {id} not {phase} after {timeout:?}:\n{vm:#}\nnodes: {nodes:#}\nvolumes: {volumes:#}\nnics: {nics:#}\ntemplates: {templates:#}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Creates the standard template from `images` and returns its id.
    /// Creates a template from [`template_files`] (kernel and initramfs with their checksums,
    /// which every node verifies); returns its id.
    /// Waits until exactly `names` are registered and online; their ids, in that order.
    pub async fn wait_nodes_online(&self, names: &[&str]) -> Vec<String> {
        let nodes = wait_until_async("the nodes online", Duration::from_secs(30), || {
            let rest = self.clone();
            async move {
                let items = rest.get("/v1/nodes").await["items"].as_array()?.clone();
                (items.len() == names.len()
                    && items.iter().all(|n| n["status"]["state"] == "online"))
                .then_some(items)
            }
        })
        .await;
        names
            .iter()
            .map(|name| {
                let node = nodes.iter().find(|n| n["name"] == *name);
                let id = node.and_then(|n| n["id"].as_str());
                id.unwrap_or_else(|| panic!("node {name} is not among {nodes:?}"))
                    .to_string()
            })
            .collect()
    }

    pub async fn create_template(&self, name: &str, images: &Path) -> String {
        let kernel_sha256 = sha256_of(&images.join("vmlinuz"));
        self.create_template_with_kernel_sha256(name, images, &kernel_sha256)
            .await
    }

    /// [`Rest::create_template`] with a given kernel checksum (a wrong one fails the import).
    pub async fn create_template_with_kernel_sha256(
        &self,
        name: &str,
        images: &Path,
        kernel_sha256: &str,
    ) -> String {
        let dir = images.display();
        let template = self
            .post(
                "/v1/templates",
                json!({
                    "name": name,
                    "spec": {
                        "source_url": format!("file://{dir}/disk.raw"),
                        "format": "raw",
                        "kernel_url": format!("file://{dir}/vmlinuz"),
                        "initramfs_url": format!("file://{dir}/initramfs.img"),
                        "kernel_sha256": kernel_sha256,
                        "initramfs_sha256": sha256_of(&images.join("initramfs.img")),
                        "cmdline": CMDLINE,
                    }
                }),
            )
            .await;
        template["id"].as_str().expect("template id").to_string()
    }
}

/// The SHA-256 of a file (lowercase hex), by `sha256sum`.
pub fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a checksum")
        .to_string()
}

/// Collects a VM's console output (through mvirt-vmm) until `needle` appears.
pub async fn console_until(
    vmm_endpoint: &str,
    vm_id: &str,
    input: &[u8],
    needle: &str,
    timeout: Duration,
) -> String {
    use mvirt_vmm::proto::vm_service_client::VmServiceClient;
    use mvirt_vmm::proto::ConsoleInput;
    use tokio_stream::StreamExt;
    let mut client = VmServiceClient::connect(vmm_endpoint.to_string())
        .await
        .expect("connect vmm");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(ConsoleInput {
        vm_id: vm_id.to_string(),
        data: input.to_vec(),
    })
    .await
    .unwrap();
    let mut output = client
        .console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("console")
        .into_inner();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !seen.contains(needle) {
        let next = tokio::time::timeout_at(deadline, output.next())
            .await
            .unwrap_or_else(|_| {
                panic!("timed out waiting for {needle:?} on the console; saw:\n{seen}")
            });
        match next {
            Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk.data)),
            other => panic!("console ended ({other:?}) before {needle:?}; saw:\n{seen}"),
        }
    }
    drop(tx);
    seen
}

/// Opens the VM's console WebSocket through the API, sends `input` once `ready` has been seen
/// (empty: at once), and collects output until `needle` appears.
pub async fn ws_console_until(
    rest: &Rest,
    vm_id: &str,
    ready: &str,
    input: &[u8],
    needle: &str,
    timeout: Duration,
) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!(
        "{}/v1/vms/{vm_id}/console",
        rest.base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", rest.token).parse().unwrap(),
    );
    let connector = rest.ca_pem.as_ref().map(|ca| {
        tokio_tungstenite::Connector::Rustls(
            mvirt_common::tls::client_config(ca, None).expect("TLS client config"),
        )
    });
    let (mut socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
            .expect("console WebSocket opens");
    let mut seen = String::new();
    let mut sent = input.is_empty();
    let deadline = tokio::time::Instant::now() + timeout;
    if ready.is_empty() && !sent {
        socket.send(Message::binary(input.to_vec())).await.unwrap();
        sent = true;
    }
    while !(sent && seen.contains(needle)) {
        let next = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| {
                panic!("timed out waiting for {needle:?} on the WebSocket; saw:\n{seen}")
            });
        match next {
            Some(Ok(Message::Binary(data))) => seen.push_str(&String::from_utf8_lossy(&data)),
            Some(Ok(Message::Text(text))) => seen.push_str(text.as_str()),
            Some(Ok(_)) => {}
            other => panic!("console WebSocket ended ({other:?}); saw:\n{seen}"),
        }
        if !sent && seen.contains(ready) {
            socket.send(Message::binary(input.to_vec())).await.unwrap();
            sent = true;
        }
    }
    let _ = socket.close(None).await;
    seen
}

/// mvirt-log on a unix socket in `root` (data in `root/log`): its endpoint and what stops it.
pub async fn start_log(root: &Path) -> (String, Shutdown) {
    let log = mvirt_log::server::BoundServer::bind(mvirt_log::server::Config {
        listen: socket(root, "log"),
        data_dir: root.join("log"),
        retention: Default::default(),
    })
    .await
    .unwrap();
    let endpoint = log.endpoint();
    let shutdown = Shutdown::new();
    tokio::spawn(log.serve(shutdown.clone()));
    (endpoint, shutdown)
}

/// A one-member mvirt-api in `root/api` (test configuration, changed by `edit`), ready: the
/// member, its admin token and a REST client with it.
pub async fn start_api(
    root: &Path,
    edit: impl FnOnce(&mut mvirt_api::server::ServerConfig),
) -> (mvirt_api::server::Running, String, Rest) {
    let mut config =
        mvirt_api::server::ServerConfig::for_tests("127.0.0.1".parse().unwrap(), &root.join("api"));
    edit(&mut config);
    let api = mvirt_api::server::start(config, Shutdown::new())
        .await
        .expect("mvirt-api starts");
    let token = api.admin_token().expect("admin token");
    let rest = Rest::for_member(&api, &token);
    rest.wait_ready().await;
    (api, token, rest)
}

/// A single-node cluster in `root`: mvirt-log, the host's daemons, a one-member mvirt-api and
/// an agent named `node_name` registered with it.
pub struct OneNode {
    pub log_endpoint: String,
    /// Stops mvirt-log.
    pub log_shutdown: Shutdown,
    pub host: HostDaemons,
    pub api: mvirt_api::server::Running,
    pub token: String,
    pub rest: Rest,
    pub agent: Agent,
}

impl OneNode {
    pub async fn start(root: &Path, node_name: &str) -> OneNode {
        let (log_endpoint, log_shutdown) = start_log(root).await;
        let host = HostDaemons::start(root, &root.join("images"), &log_endpoint).await;
        let (api, token, rest) = start_api(root, |_| {}).await;
        let agent = Agent::start(agent_config(
            node_name,
            &root.join("agent"),
            &host.endpoints,
            &api,
            &token,
        ));
        OneNode {
            log_endpoint,
            log_shutdown,
            host,
            api,
            token,
            rest,
            agent,
        }
    }
}

/// A VM's serial console on one node's mvirt-vmm, read continuously in the background (for a
/// guest that keeps printing, e.g. a counter, across a live migration).
pub struct GuestConsole {
    output: std::sync::Arc<std::sync::Mutex<String>>,
    input: tokio::sync::mpsc::Sender<mvirt_vmm::proto::ConsoleInput>,
}

impl GuestConsole {
    pub async fn open(vmm_endpoint: &str, vm_id: &str) -> GuestConsole {
        use mvirt_vmm::proto::vm_service_client::VmServiceClient;
        use tokio_stream::StreamExt;
        let mut client = VmServiceClient::connect(vmm_endpoint.to_string())
            .await
            .expect("connect vmm");
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(mvirt_vmm::proto::ConsoleInput {
            vm_id: vm_id.to_string(),
            data: Vec::new(),
        })
        .await
        .unwrap();
        let mut stream = client
            .console(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("open the console")
            .into_inner();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = output.clone();
        tokio::spawn(async move {
            while let Some(Ok(chunk)) = stream.next().await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk.data));
            }
        });
        GuestConsole { output, input: tx }
    }

    pub fn text(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output holds `needle`; the output so far.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let output = self.output.clone();
        wait_until_async(&format!("console output {needle:?}"), timeout, || {
            let text = output.lock().unwrap().clone();
            let found = text.contains(needle);
            async move { found.then_some(text) }
        })
        .await
    }

    pub async fn send(&self, text: &str) {
        self.input
            .send(mvirt_vmm::proto::ConsoleInput {
                vm_id: String::new(),
                data: text.as_bytes().to_vec(),
            })
            .await
            .unwrap();
    }

    /// Starts a counter in the guest printing `COUNT-<n>` every second.
    pub async fn start_counter(&self, timeout: Duration) {
        self.send("(i=0; while true; do i=$((i+1)); echo COUNT-$i; sleep 1; done) &\n")
            .await;
        self.wait_for("COUNT-2", timeout).await;
    }

    /// The highest `COUNT-<n>` the guest printed so far.
    pub fn count(&self) -> u64 {
        self.text()
            .split("COUNT-")
            .skip(1)
            .filter_map(|s| {
                let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }
}

/// The VMs one node's mvirt-vmm has, with their state.
pub async fn hypervisor_vms(vmm_endpoint: &str) -> Vec<mvirt_vmm::proto::Vm> {
    use mvirt_vmm::proto::vm_service_client::VmServiceClient;
    VmServiceClient::connect(vmm_endpoint.to_string())
        .await
        .expect("connect vmm")
        .list_vms(mvirt_vmm::proto::ListVmsRequest::default())
        .await
        .expect("ListVms")
        .into_inner()
        .vms
}
