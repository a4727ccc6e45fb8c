//! The cloud-hypervisor driver (production default): one `cloud-hypervisor --api-socket`
//! process per VM, configured with `vm.create` and booted with `vm.boot` over its REST API on
//! the per-VM unix socket (HTTP/1.1, hyper client).
//!
//! Request bodies are built by the pure functions [`vm_config`], [`disk_config`],
//! [`net_config`], [`vm_resize`] and [`remove_device`]; unit tests validate them against
//! `shared/reference/cloud-hypervisor-openapi.yaml`. The serial console uses cloud-hypervisor's
//! `Socket` mode, so the daemon attaches to it exactly as it does for QEMU.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::{
    listen_socket, spawn_hypervisor, until_ready, Hypervisor, HypervisorError, LaunchRequest,
    Launched, MigrationStats, MigrationStatus, RunDir,
};
use crate::model::{BootSource, DiskSpec, NicSpec, VmSpec};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct CloudHypervisorConfig {
    pub binary: PathBuf,
    /// Firmware when a VM boots UEFI without naming one.
    pub default_firmware: PathBuf,
    pub start_timeout: Duration,
}

impl Default for CloudHypervisorConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("cloud-hypervisor"),
            default_firmware: PathBuf::from("/usr/share/cloud-hypervisor/CLOUDHV.fd"),
            start_timeout: Duration::from_secs(10),
        }
    }
}

pub struct CloudHypervisorDriver {
    config: CloudHypervisorConfig,
    /// How each VM's blocking migration call ended (cloud-hypervisor has no progress query).
    outcomes: MigrationOutcomes,
}

impl CloudHypervisorDriver {
    pub fn new(config: CloudHypervisorConfig) -> Self {
        Self {
            config,
            outcomes: MigrationOutcomes::default(),
        }
    }
}

/// Host CPUs, the ceiling for `max_vcpus` so that vCPUs can be hot-added later.
fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// The `vm.create` body (`VmConfig`).
pub fn vm_config(
    vm_id: &str,
    spec: &VmSpec,
    run: &RunDir,
    cidata: Option<&Path>,
    default_firmware: &Path,
) -> Value {
    let payload = match &spec.boot {
        BootSource::Kernel {
            kernel,
            initramfs,
            cmdline,
        } => {
            let mut p = json!({ "kernel": kernel, "cmdline": cmdline });
            if let Some(initramfs) = initramfs {
                p["initramfs"] = json!(initramfs);
            }
            p
        }
        BootSource::Firmware { firmware } => {
            let fw = firmware
                .clone()
                .unwrap_or_else(|| default_firmware.display().to_string());
            json!({ "firmware": fw })
        }
    };
    let memory_bytes = spec.memory_mib * 1024 * 1024;
    let mut memory = json!({
        "size": memory_bytes,
        // Room to grow to twice the boot size with vm.resize.
        "hotplug_size": memory_bytes,
        "hotplug_method": "Acpi",
    });
    if spec.hugepages {
        memory["hugepages"] = json!(true);
        memory["shared"] = json!(true);
        // Hot-plug needs a non-hugepage backend: keep it simple.
        if let Some(m) = memory.as_object_mut() {
            m.remove("hotplug_size");
            m.remove("hotplug_method");
        }
    }
    let mut disks: Vec<Value> = spec.disks.iter().map(disk_config).collect();
    if let Some(cidata) = cidata {
        disks.push(json!({
            "id": "disk-cidata",
            "path": cidata.display().to_string(),
            "readonly": true,
            "image_type": "Raw",
        }));
    }
    let net: Vec<Value> = spec.nics.iter().map(net_config).collect();
    let mut config = json!({
        "cpus": {
            "boot_vcpus": spec.vcpus,
            "max_vcpus": spec.vcpus.max(host_cpus()),
            "nested": spec.nested_virtualization,
        },
        "memory": memory,
        "payload": payload,
        "serial": { "mode": "Socket", "socket": run.console_socket().display().to_string() },
        "console": { "mode": "Off" },
        "rng": { "src": "/dev/urandom" },
        "platform": { "system_uuid": vm_id },
    });
    if !disks.is_empty() {
        config["disks"] = Value::Array(disks);
    }
    if !net.is_empty() {
        config["net"] = Value::Array(net);
    }
    if let Some(vsock) = spec.vsock {
        // cloud-hypervisor serves the hybrid vsock socket itself; vsock needs shared memory
        // only with vhost-user, which this is not.
        config["vsock"] = json!({
            "cid": vsock.cid,
            "socket": run.vsock_socket().display().to_string(),
            "id": "vsock0",
        });
    }
    config
}

/// A `DiskConfig` (boot-time disk or `vm.add-disk` body).
pub fn disk_config(disk: &DiskSpec) -> Value {
    json!({
        "id": format!("disk-{}", disk.id),
        "path": disk.path,
        "readonly": disk.read_only,
        "image_type": "Raw",
    })
}

/// A `NetConfig` (boot-time NIC or `vm.add-net` body) on an existing TAP.
pub fn net_config(nic: &NicSpec) -> Value {
    json!({
        "id": format!("nic-{}", nic.id),
        "tap": nic.tap,
        "mac": nic.mac,
    })
}

/// The `vm.resize` body (`VmResize`).
pub fn vm_resize(vcpus: Option<u32>, memory_mib: Option<u64>) -> Value {
    let mut body = json!({});
    if let Some(v) = vcpus {
        body["desired_vcpus"] = json!(v);
    }
    if let Some(m) = memory_mib {
        body["desired_ram"] = json!(m * 1024 * 1024);
    }
    body
}

/// The `vm.remove-device` body (`VmRemoveDevice`).
pub fn remove_device(id: &str) -> Value {
    json!({ "id": id })
}

/// The `vm.send-migration` body (`SendMigrationData`): the state goes to a unix socket the
/// node agent listens on (`local: false`: guest memory is copied, not handed over by fd).
pub fn send_migration(destination: &Path, max_downtime: Duration) -> Value {
    json!({
        "destination_url": format!("unix:{}", destination.display()),
        "local": false,
        "downtime_ms": max_downtime.as_millis().max(1) as u64,
        "timeout_strategy": "Cancel",
    })
}

/// The `vm.receive-migration` body (`ReceiveMigrationData`): cloud-hypervisor listens on the
/// unix socket itself.
pub fn receive_migration(socket: &Path) -> Value {
    json!({ "receiver_url": format!("unix:{}", socket.display()) })
}

/// One HTTP request to cloud-hypervisor's API socket. Returns the status and body.
pub async fn api_call(
    socket: &Path,
    method: hyper::Method,
    endpoint: &str,
    body: Option<&Value>,
) -> Result<(u16, Bytes), HypervisorError> {
    tokio::time::timeout(CALL_TIMEOUT, api_call_inner(socket, method, endpoint, body))
        .await
        .map_err(|_| HypervisorError::Timeout(CALL_TIMEOUT))?
}

async fn api_call_inner(
    socket: &Path,
    method: hyper::Method,
    endpoint: &str,
    body: Option<&Value>,
) -> Result<(u16, Bytes), HypervisorError> {
    tracing::debug!(socket = %socket.display(), %method, endpoint, ?body, "cloud-hypervisor API call");
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| HypervisorError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HypervisorError::Protocol(format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut builder = hyper::Request::builder()
        .method(method)
        // Origin-form request target, as ch-remote sends it.
        .uri(format!("/api/v1/{endpoint}"))
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::ACCEPT, "application/json");
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| HypervisorError::Protocol(format!("building request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| HypervisorError::Protocol(format!("{endpoint}: {e}")))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| HypervisorError::Protocol(format!("{endpoint} body: {e}")))?
        .to_bytes();
    driver.abort();
    Ok((status, bytes))
}

/// A PUT that must answer 2xx.
async fn put(
    socket: &Path,
    endpoint: &str,
    body: Option<&Value>,
) -> Result<Bytes, HypervisorError> {
    let (status, bytes) = api_call(socket, hyper::Method::PUT, endpoint, body).await?;
    if (200..300).contains(&status) {
        Ok(bytes)
    } else {
        Err(HypervisorError::Api {
            call: endpoint.to_string(),
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()),
        })
    }
}

#[async_trait]
impl Hypervisor for CloudHypervisorDriver {
    fn name(&self) -> &'static str {
        "cloud-hypervisor"
    }

    fn binary(&self) -> &Path {
        &self.config.binary
    }

    async fn launch(&self, request: &LaunchRequest<'_>) -> Result<Launched, HypervisorError> {
        super::qemu::check_host(request.spec, true)?;
        let run = request.run;
        let _ = std::fs::remove_file(run.console_socket());
        let program = self.config.binary.display().to_string();
        // fd 3 is the API socket, bound by the daemon: requests queue until the API is up.
        let api = [listen_socket(&run.control_socket())?];
        let args = vec![
            "--api-socket".to_string(),
            "fd=3".to_string(),
            "--log-file".to_string(),
            run.hypervisor_log().display().to_string(),
        ];
        let mut child = spawn_hypervisor(&self.config.binary, &args, run, &api)?;
        drop(api);
        let pid = child.id().unwrap_or(0);
        let config = vm_config(
            request.vm_id,
            request.spec,
            run,
            request.cidata,
            &self.config.default_firmware,
        );
        let socket = run.control_socket();
        until_ready(
            &program,
            &mut child,
            run,
            self.config.start_timeout,
            async {
                put(&socket, "vm.create", Some(&config)).await?;
                put(&socket, "vm.boot", None).await
            },
        )
        .await?;
        let identity = crate::process::identity(pid).ok_or_else(|| HypervisorError::EarlyExit {
            program,
            status: "gone right after boot".into(),
            log: run.hypervisor_log_tail(2000),
        })?;
        Ok(Launched {
            identity,
            child: Some(child),
        })
    }

    async fn power_button(&self, run: &RunDir) -> Result<(), HypervisorError> {
        put(&run.control_socket(), "vm.power-button", None).await?;
        Ok(())
    }

    async fn hard_stop(&self, run: &RunDir) -> Result<(), HypervisorError> {
        // vm.shutdown stops the guest; vmm.shutdown makes the process exit.
        if let Err(err) = put(&run.control_socket(), "vm.shutdown", None).await {
            tracing::warn!(error = %err, "vm.shutdown failed; shutting the VMM down anyway");
        }
        put(&run.control_socket(), "vmm.shutdown", None).await?;
        Ok(())
    }

    async fn ping(&self, run: &RunDir) -> Result<(), HypervisorError> {
        let (status, body) =
            api_call(&run.control_socket(), hyper::Method::GET, "vmm.ping", None).await?;
        if status == 200 {
            Ok(())
        } else {
            Err(HypervisorError::Api {
                call: "vmm.ping".into(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            })
        }
    }

    async fn add_disk(&self, run: &RunDir, disk: &DiskSpec) -> Result<(), HypervisorError> {
        put(
            &run.control_socket(),
            "vm.add-disk",
            Some(&disk_config(disk)),
        )
        .await?;
        Ok(())
    }

    async fn add_nic(&self, run: &RunDir, nic: &NicSpec) -> Result<(), HypervisorError> {
        put(&run.control_socket(), "vm.add-net", Some(&net_config(nic))).await?;
        Ok(())
    }

    async fn remove_disk(&self, run: &RunDir, disk_id: &str) -> Result<(), HypervisorError> {
        let body = remove_device(&format!("disk-{disk_id}"));
        put(&run.control_socket(), "vm.remove-device", Some(&body)).await?;
        Ok(())
    }

    async fn remove_nic(&self, run: &RunDir, nic_id: &str) -> Result<(), HypervisorError> {
        let body = remove_device(&format!("nic-{nic_id}"));
        put(&run.control_socket(), "vm.remove-device", Some(&body)).await?;
        Ok(())
    }

    async fn resize(
        &self,
        run: &RunDir,
        vcpus: Option<u32>,
        memory_mib: Option<u64>,
    ) -> Result<(), HypervisorError> {
        put(
            &run.control_socket(),
            "vm.resize",
            Some(&vm_resize(vcpus, memory_mib)),
        )
        .await?;
        Ok(())
    }

    async fn launch_incoming(
        &self,
        request: &LaunchRequest<'_>,
        socket: &Path,
    ) -> Result<Launched, HypervisorError> {
        super::qemu::check_host(request.spec, true)?;
        let run = request.run;
        let _ = std::fs::remove_file(run.console_socket());
        let _ = std::fs::remove_file(socket);
        let program = self.config.binary.display().to_string();
        let api = [listen_socket(&run.control_socket())?];
        let args = vec![
            "--api-socket".to_string(),
            "fd=3".to_string(),
            "--log-file".to_string(),
            run.hypervisor_log().display().to_string(),
        ];
        let mut child = spawn_hypervisor(&self.config.binary, &args, run, &api)?;
        drop(api);
        let pid = child.id().unwrap_or(0);
        let control = run.control_socket();
        until_ready(
            &program,
            &mut child,
            run,
            self.config.start_timeout,
            async {
                let (status, body) =
                    api_call(&control, hyper::Method::GET, "vmm.ping", None).await?;
                if status == 200 {
                    Ok(body)
                } else {
                    Err(HypervisorError::Api {
                        call: "vmm.ping".into(),
                        message: format!("HTTP {status}"),
                    })
                }
            },
        )
        .await?;
        // vm.receive-migration answers only once the whole state arrived: it runs on its own
        // task (its outcome is the migration's, read through `migration_progress`), and the
        // guest runs as soon as it completes (cloud-hypervisor has no paused-incoming mode).
        let body = receive_migration(socket);
        let receiving = control.clone();
        let outcome = self.outcomes.clone();
        let key = run.path().to_path_buf();
        outcome.set(&key, MigrationStatus::Active, String::new());
        tokio::spawn(async move {
            let result = put_long(&receiving, "vm.receive-migration", Some(&body)).await;
            match result {
                Ok(_) => outcome.set(&key, MigrationStatus::Completed, String::new()),
                Err(err) => outcome.set(&key, MigrationStatus::Failed, err.to_string()),
            }
        });
        // Wait until cloud-hypervisor listens.
        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        while !socket.exists() {
            if tokio::time::Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(HypervisorError::StartTimeout {
                    program,
                    timeout: self.config.start_timeout,
                    log: run.hypervisor_log_tail(2000),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let identity = crate::process::identity(pid).ok_or_else(|| HypervisorError::EarlyExit {
            program,
            status: "gone right after start".into(),
            log: run.hypervisor_log_tail(2000),
        })?;
        Ok(Launched {
            identity,
            child: Some(child),
        })
    }

    async fn migrate_out(
        &self,
        run: &RunDir,
        destination: &Path,
        with_disks: bool,
        max_downtime: Duration,
    ) -> Result<(), HypervisorError> {
        if with_disks {
            return Err(HypervisorError::Unsupported {
                driver: "cloud-hypervisor",
                what: "migrating local disks in the migration stream (cloud-hypervisor has no \
                       block migration; the disks must be copied by ZFS send first)"
                    .into(),
            });
        }
        let body = send_migration(destination, max_downtime);
        let control = run.control_socket();
        let outcome = self.outcomes.clone();
        let key = run.path().to_path_buf();
        outcome.set(&key, MigrationStatus::Active, String::new());
        // vm.send-migration answers when the migration ended.
        tokio::spawn(async move {
            match put_long(&control, "vm.send-migration", Some(&body)).await {
                Ok(_) => outcome.set(&key, MigrationStatus::Completed, String::new()),
                Err(err) => outcome.set(&key, MigrationStatus::Failed, err.to_string()),
            }
        });
        Ok(())
    }

    async fn migration_progress(&self, run: &RunDir) -> Result<MigrationStats, HypervisorError> {
        // cloud-hypervisor reports no byte counts: only how the API call ended.
        let (status, error) = self.outcomes.get(run.path());
        Ok(MigrationStats {
            status,
            error,
            ..Default::default()
        })
    }

    async fn cancel_migration(&self, run: &RunDir) -> Result<(), HypervisorError> {
        // No cancel endpoint: a failed send-migration leaves the source running
        // (timeout_strategy Cancel); make sure it is not left paused.
        self.resume(run).await
    }

    async fn resume(&self, run: &RunDir) -> Result<(), HypervisorError> {
        let (status, body) =
            api_call(&run.control_socket(), hyper::Method::GET, "vm.info", None).await?;
        if status == 200 {
            let info: Value = serde_json::from_slice(&body)
                .map_err(|e| HypervisorError::Protocol(format!("vm.info: {e}")))?;
            if info.get("state").and_then(Value::as_str) == Some("Running") {
                return Ok(());
            }
        }
        put(&run.control_socket(), "vm.resume", None).await?;
        Ok(())
    }
}

/// A PUT that may take as long as a migration (no call timeout).
async fn put_long(
    socket: &Path,
    endpoint: &str,
    body: Option<&Value>,
) -> Result<Bytes, HypervisorError> {
    let (status, bytes) = api_call_inner(socket, hyper::Method::PUT, endpoint, body).await?;
    if (200..300).contains(&status) {
        Ok(bytes)
    } else {
        Err(HypervisorError::Api {
            call: endpoint.to_string(),
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()),
        })
    }
}

/// How the blocking migration calls of each VM (by run directory) ended.
#[derive(Clone, Default)]
struct MigrationOutcomes {
    inner: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<PathBuf, (MigrationStatus, String)>>,
    >,
}

impl MigrationOutcomes {
    fn set(&self, run: &Path, status: MigrationStatus, error: String) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.to_path_buf(), (status, error));
    }

    fn get(&self, run: &Path) -> (MigrationStatus, String) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run)
            .cloned()
            .unwrap_or_default()
    }
}
