//! The cloud-hypervisor driver's requests against cloud-hypervisor's OpenAPI contract
//! (`shared/reference/cloud-hypervisor-openapi.yaml`).
//!
//! cloud-hypervisor cannot run guests on these machines (no usable KVM, not packaged by Debian),
//! so the API endpoint here is a **test double**: an HTTP server on a unix socket that records
//! each request. Every request the driver sends must name a path and method of the spec, and
//! every body must validate against that path's request schema, made strict: objects may not
//! carry properties the spec does not define (so a misspelt field fails).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mvirt_vmm::hypervisor::cloud_hypervisor::{
    self as ch, CloudHypervisorConfig, CloudHypervisorDriver,
};
use mvirt_vmm::hypervisor::{Hypervisor, RunDir};
use mvirt_vmm::model::{BootSource, CloudInitSpec, DiskSpec, NicSpec, VmSpec};
use serde_json::{json, Value};

fn spec_document() -> Value {
    let path = mvirt_testsupport::workspace_root()
        .parent()
        .unwrap()
        .join("shared/reference/cloud-hypervisor-openapi.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// Adds `additionalProperties: false` to every object schema that lists its properties.
fn make_strict(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for v in map.values_mut() {
                make_strict(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_strict),
        _ => {}
    }
}

struct Contract {
    doc: Value,
}

impl Contract {
    fn load() -> Self {
        let mut doc = spec_document();
        make_strict(doc.get_mut("components").unwrap());
        Self { doc }
    }

    /// Validates `instance` against `#/components/schemas/<name>`; returns the errors.
    fn errors(&self, schema_ref: &str, instance: &Value) -> Vec<String> {
        let schema = json!({
            "components": self.doc["components"],
            "allOf": [{ "$ref": schema_ref }],
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema {schema_ref} does not compile: {e}"));
        validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    fn assert_valid(&self, name: &str, instance: &Value) {
        let errors = self.errors(&format!("#/components/schemas/{name}"), instance);
        assert!(
            errors.is_empty(),
            "{name} body {instance:#} violates the spec: {errors:#?}"
        );
    }

    /// The request-body schema of `method path`, `None` if the operation takes no body.
    fn request_schema(&self, method: &str, path: &str) -> Option<String> {
        let op = self.doc["paths"]
            .get(path)
            .unwrap_or_else(|| panic!("the spec has no path {path}"))
            .get(method)
            .unwrap_or_else(|| panic!("the spec has no {method} {path}"));
        op.pointer("/requestBody/content/application~1json/schema/$ref")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

fn spec() -> VmSpec {
    VmSpec {
        name: "web-1".into(),
        vcpus: 2,
        memory_mib: 512,
        boot: BootSource::Kernel {
            kernel: "/var/lib/mvirt/k/vmlinuz".into(),
            initramfs: Some("/var/lib/mvirt/k/initrd".into()),
            cmdline: "console=ttyS0 root=/dev/vda".into(),
        },
        disks: vec![DiskSpec {
            id: "root".into(),
            path: "/var/lib/mvirt/volumes/root.img".into(),
            read_only: false,
        }],
        nics: vec![NicSpec {
            id: "nic0".into(),
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
        }],
        cloud_init: Some(CloudInitSpec::default()),
        hugepages: false,
        nested_virtualization: true,
        labels: Default::default(),
        vsock: None,
    }
}

#[test]
fn vm_create_bodies_validate_against_the_openapi_spec() {
    let contract = Contract::load();
    let run = RunDir::new(PathBuf::from("/var/lib/mvirt/vmm/run/id"));
    let fw = Path::new("/usr/share/cloud-hypervisor/CLOUDHV.fd");
    let cidata = Path::new("/var/lib/mvirt/vmm/run/id/cidata.img");

    let body = ch::vm_config(
        "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f",
        &spec(),
        &run,
        Some(cidata),
        fw,
    );
    contract.assert_valid("VmConfig", &body);
    assert_eq!(body["payload"]["kernel"], "/var/lib/mvirt/k/vmlinuz");
    assert_eq!(body["payload"]["initramfs"], "/var/lib/mvirt/k/initrd");
    assert_eq!(body["cpus"]["boot_vcpus"], 2);
    assert_eq!(body["memory"]["size"], 512u64 * 1024 * 1024);
    assert_eq!(body["serial"]["mode"], "Socket");
    assert_eq!(
        body["serial"]["socket"],
        "/var/lib/mvirt/vmm/run/id/console.sock"
    );
    assert_eq!(
        body["disks"].as_array().unwrap().len(),
        2,
        "root disk and the cidata seed"
    );
    assert_eq!(body["disks"][1]["readonly"], true);
    assert_eq!(body["net"][0]["tap"], "tap0");
    assert_eq!(body["net"][0]["mac"], "02:00:00:00:00:01");

    // Firmware boot with hugepages, no NICs, no seed.
    let mut s = spec();
    s.boot = BootSource::Firmware { firmware: None };
    s.hugepages = true;
    s.nics.clear();
    s.cloud_init = None;
    let body = ch::vm_config("0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f", &s, &run, None, fw);
    contract.assert_valid("VmConfig", &body);
    assert_eq!(body["payload"]["firmware"], fw.display().to_string());
    assert_eq!(body["memory"]["hugepages"], true);
    assert!(body.get("net").is_none());
}

#[test]
fn migration_bodies_validate_against_the_openapi_spec_and_use_the_vms_paths() {
    let contract = Contract::load();
    let out = Path::new("/var/lib/mvirt/node/migrate/id.sock");
    let body = ch::send_migration(out, std::time::Duration::from_millis(300));
    contract.assert_valid("SendMigrationData", &body);
    assert_eq!(
        contract
            .request_schema("put", "/vm.send-migration")
            .as_deref(),
        Some("#/components/schemas/SendMigrationData")
    );
    assert_eq!(
        body["destination_url"],
        "unix:/var/lib/mvirt/node/migrate/id.sock"
    );
    assert_eq!(body["downtime_ms"], 300);
    let socket = Path::new("/var/lib/mvirt/vmm/run/id/migrate-in.sock");
    let body = ch::receive_migration(socket);
    contract.assert_valid("ReceiveMigrationData", &body);
    assert_eq!(
        contract
            .request_schema("put", "/vm.receive-migration")
            .as_deref(),
        Some("#/components/schemas/ReceiveMigrationData")
    );
    assert_eq!(
        body["receiver_url"],
        "unix:/var/lib/mvirt/vmm/run/id/migrate-in.sock"
    );
    // The strict contract refuses what cloud-hypervisor would refuse.
    assert!(!contract
        .errors(
            "#/components/schemas/SendMigrationData",
            &serde_json::json!({"destination_url": "unix:/x", "downtime_ms": 0})
        )
        .is_empty());
}

#[test]
fn a_pod_microvm_gets_cloud_hypervisors_hybrid_vsock_on_its_run_directory_socket() {
    let contract = Contract::load();
    let run = RunDir::new(PathBuf::from("/var/lib/mvirt/vmm/run/id"));
    let fw = Path::new("/usr/share/cloud-hypervisor/CLOUDHV.fd");
    let mut s = spec();
    s.disks.clear();
    s.cloud_init = None;
    s.vsock = Some(mvirt_vmm::model::VsockSpec { cid: 3 });
    let body = ch::vm_config("0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f", &s, &run, None, fw);
    contract.assert_valid("VmConfig", &body);
    assert_eq!(body["vsock"]["cid"], 3);
    assert_eq!(
        body["vsock"]["socket"],
        "/var/lib/mvirt/vmm/run/id/vsock.sock"
    );
    // Without vhost-user there is no need for shared memory.
    assert!(body["memory"].get("shared").is_none());
    // A VM without vsock has none.
    let plain = ch::vm_config(
        "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f",
        &spec(),
        &run,
        None,
        fw,
    );
    assert!(plain.get("vsock").is_none());
}

#[test]
fn the_strict_contract_rejects_what_cloud_hypervisor_would_reject() {
    // The validation is not vacuous: wrong types, unknown fields, missing required fields fail.
    let contract = Contract::load();
    assert!(!contract
        .errors(
            "#/components/schemas/DiskConfig",
            &json!({"path": "/x", "read_only": true})
        )
        .is_empty());
    assert!(!contract
        .errors(
            "#/components/schemas/VmResize",
            &json!({"desired_vcpus": "two"})
        )
        .is_empty());
    assert!(!contract
        .errors(
            "#/components/schemas/VmConfig",
            &json!({"cpus": {"boot_vcpus": 1, "max_vcpus": 1}})
        )
        .is_empty());
    assert!(!contract
        .errors(
            "#/components/schemas/SerialConfig",
            &json!({"mode": "Sockets"})
        )
        .is_empty());
}

/// The test double: records `(method, path, body)` and answers 204 (200 with JSON for pings).
async fn fake_api(socket: PathBuf) -> Arc<Mutex<Vec<(String, String, Option<Value>)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let method = req.method().as_str().to_lowercase();
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body: Option<Value> = (!body.is_empty()).then(|| {
                                serde_json::from_slice(&body).expect("request body is JSON")
                            });
                            let ping = path.ends_with("vmm.ping");
                            record.lock().unwrap().push((method, path, body));
                            let response = if ping {
                                hyper::Response::builder()
                                    .status(200)
                                    .body(Full::new(Bytes::from(r#"{"version":"v44.0"}"#)))
                            } else {
                                hyper::Response::builder()
                                    .status(204)
                                    .body(Full::new(Bytes::new()))
                            };
                            Ok::<_, std::convert::Infallible>(response.unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    seen
}

#[tokio::test]
async fn every_control_request_the_driver_sends_is_in_the_spec_with_a_valid_body() {
    let contract = Contract::load();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().to_path_buf());
    let seen = fake_api(run.control_socket()).await;
    let driver = CloudHypervisorDriver::new(CloudHypervisorConfig::default());

    driver.ping(&run).await.unwrap();
    driver.power_button(&run).await.unwrap();
    let disk = DiskSpec {
        id: "data".into(),
        path: "/var/lib/mvirt/volumes/data.img".into(),
        read_only: true,
    };
    driver.add_disk(&run, &disk).await.unwrap();
    let nic = NicSpec {
        id: "nic1".into(),
        tap: "tap1".into(),
        mac: "02:00:00:00:00:02".into(),
    };
    driver.add_nic(&run, &nic).await.unwrap();
    driver.remove_disk(&run, "data").await.unwrap();
    driver.remove_nic(&run, "nic1").await.unwrap();
    driver.resize(&run, Some(4), Some(2048)).await.unwrap();
    driver.resize(&run, None, Some(1024)).await.unwrap();
    driver.hard_stop(&run).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let endpoints: Vec<String> = seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(
        endpoints,
        [
            "get /api/v1/vmm.ping",
            "put /api/v1/vm.power-button",
            "put /api/v1/vm.add-disk",
            "put /api/v1/vm.add-net",
            "put /api/v1/vm.remove-device",
            "put /api/v1/vm.remove-device",
            "put /api/v1/vm.resize",
            "put /api/v1/vm.resize",
            "put /api/v1/vm.shutdown",
            "put /api/v1/vmm.shutdown",
        ]
    );
    for (method, path, body) in &seen {
        let api_path = path.strip_prefix("/api/v1").unwrap();
        match (contract.request_schema(method, api_path), body) {
            (Some(schema), Some(body)) => {
                let errors = contract.errors(&schema, body);
                assert!(
                    errors.is_empty(),
                    "{method} {path} body {body} violates {schema}: {errors:?}"
                );
            }
            (None, None) => {}
            (Some(schema), None) => panic!("{method} {path} needs a {schema} body"),
            (None, Some(body)) => panic!("{method} {path} takes no body, got {body}"),
        }
    }
    assert_eq!(seen[2].2.as_ref().unwrap()["readonly"], true);
    assert_eq!(seen[4].2.as_ref().unwrap()["id"], "disk-data");
    assert_eq!(
        seen[6].2.as_ref().unwrap(),
        &json!({"desired_vcpus": 4, "desired_ram": 2048u64 * 1024 * 1024})
    );
}

/// The daemon drives the cloud-hypervisor driver end to end against the fake binary
/// (`tests/fixtures/fake-cloud-hypervisor`, a test double serving the same API on the inherited
/// fd 3): spawn with `--api-socket fd=3`, `vm.create` + `vm.boot`, console through the serial
/// socket, live hot-plug and resize, graceful stop. Every request it received is then checked
/// against the spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_drives_a_cloud_hypervisor_process_through_its_whole_life() {
    use mvirt_vmm::proto;
    use mvirt_vmm::proto::vm_service_client::VmServiceClient;
    use tokio_stream::StreamExt;

    let contract = Contract::load();
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut config = mvirt_vmm::vmm::VmmConfig::new(dir.path().to_path_buf());
    config.allowed_dirs.push(files.path().to_path_buf());
    config.hypervisor = mvirt_vmm::hypervisor::HypervisorChoice::CloudHypervisor;
    // A copy with the exec bit set, whatever the checkout did with file modes.
    let fake = files.path().join("fake-cloud-hypervisor");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-cloud-hypervisor"),
        &fake,
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    config.cloud_hypervisor.binary = fake.clone();
    let _reaper = KillOnDrop(fake.display().to_string());
    let socket = mvirt_common::listen::ListenAddr::Unix(config.data_dir.join("vmm.sock"));
    let daemon = mvirt_vmm::start(config, socket).await.unwrap();
    let mut client = VmServiceClient::connect(daemon.endpoint()).await.unwrap();

    let kernel = files.path().join("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let root = files.path().join("root.img");
    std::fs::write(&root, b"").unwrap();
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string();
    client
        .create_vm(proto::CreateVmRequest {
            id: id.clone(),
            config: Some(proto::VmConfig {
                name: "ch-vm".into(),
                vcpus: 2,
                memory_mib: 256,
                boot: Some(proto::vm_config::Boot::Kernel(proto::KernelBoot {
                    kernel: kernel.display().to_string(),
                    initramfs: String::new(),
                    cmdline: "console=ttyS0 root=/dev/vda".into(),
                })),
                disks: vec![proto::Disk {
                    id: "root".into(),
                    path: root.display().to_string(),
                    read_only: false,
                }],
                cloud_init: Some(proto::CloudInit {
                    user_data: "#cloud-config\n".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let vm = client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vm.state, proto::VmState::Running as i32);
    assert_eq!(vm.hypervisor, "cloud-hypervisor");

    // Console: output of the serial socket, and input reaching it.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::ConsoleInput {
        vm_id: id.clone(),
        data: b"hello\n".to_vec(),
    })
    .await
    .unwrap();
    let mut console = client
        .console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let text = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            seen.extend(console.next().await.unwrap().unwrap().data);
            let text = String::from_utf8_lossy(&seen).to_string();
            if text.contains("FAKE-CH-BOOTED") && text.contains("ECHO:hello") {
                return text;
            }
        }
    })
    .await
    .expect("console output and echo");
    assert!(text.contains("FAKE-CH-BOOTED"));

    // Live changes are applied by cloud-hypervisor.
    let extra = files.path().join("extra.img");
    std::fs::write(&extra, b"").unwrap();
    let change = client
        .attach_disk(proto::AttachDiskRequest {
            vm_id: id.clone(),
            disk: Some(proto::Disk {
                id: "extra".into(),
                path: extra.display().to_string(),
                read_only: true,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(change.applied_live, "{}", change.message);
    let change = client
        .resize_vm(proto::ResizeVmRequest {
            id: id.clone(),
            vcpus: 3,
            memory_mib: 512,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(change.applied_live, "{}", change.message);
    assert!(change.vm.unwrap().pending_changes.is_empty());
    client
        .detach_disk(proto::DetachDiskRequest {
            vm_id: id.clone(),
            disk_id: "extra".into(),
        })
        .await
        .unwrap();

    // Graceful stop: the power button makes the (fake) guest power off and the process exit.
    let stopped = client
        .stop_vm(proto::StopVmRequest {
            id: id.clone(),
            timeout_seconds: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.state, proto::VmState::Stopped as i32);
    assert!(
        stopped.state_reason.contains("power button"),
        "{}",
        stopped.state_reason
    );
    assert!(
        !stopped.state_reason.contains("hard stop"),
        "{}",
        stopped.state_reason
    );
    daemon.stop().await.unwrap();

    // What the fake received, in order, each checked against the spec.
    let log = dir
        .path()
        .join("run")
        .join(&id)
        .join("hypervisor.log.requests");
    let requests: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let endpoints: Vec<String> = requests
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            "PUT /api/v1/vm.create",
            "PUT /api/v1/vm.boot",
            "PUT /api/v1/vm.add-disk",
            "PUT /api/v1/vm.resize",
            "PUT /api/v1/vm.remove-device",
            "PUT /api/v1/vm.power-button",
        ]
    );
    for r in &requests {
        let method = r["method"].as_str().unwrap().to_lowercase();
        let path = r["path"]
            .as_str()
            .unwrap()
            .strip_prefix("/api/v1")
            .unwrap()
            .to_string();
        match (contract.request_schema(&method, &path), r["body"].is_null()) {
            (Some(schema), false) => {
                let errors = contract.errors(&schema, &r["body"]);
                assert!(errors.is_empty(), "{path}: {errors:?}");
            }
            (None, true) => {}
            other => panic!("{path}: body presence does not match the spec: {other:?}"),
        }
    }
    let create = &requests[0]["body"];
    assert_eq!(create["platform"]["system_uuid"], id.as_str());
    let disks = create["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "root disk and the cidata seed");
    assert!(disks[1]["path"].as_str().unwrap().ends_with("cidata.img"));
    assert_eq!(
        requests[3]["body"],
        json!({"desired_vcpus": 3, "desired_ram": 512u64 * 1024 * 1024})
    );
}

/// Kills, on drop, every process whose command line contains the given text (the fake's unique
/// temporary path), so a failing test leaves no fake hypervisor behind.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in mvirt_vmm::process::all_pids() {
            if mvirt_vmm::process::cmdline(pid)
                .iter()
                .any(|a| a.contains(&self.0))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
