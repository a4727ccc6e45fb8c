//! VmService without booting guests: bad input gets the right code and leaves nothing behind,
//! a failing start is reported with the hypervisor's own message, host information, and every
//! state change reaches a real mvirt-log as an AUDIT entry with the VM id.

mod common;

use std::time::Duration;

use common::*;
use mvirt_log::proto::log_service_client::LogServiceClient;
use mvirt_vmm::proto;
use tokio_stream::StreamExt;

fn kernel_config(kernel: &str) -> proto::VmConfig {
    proto::VmConfig {
        name: "vm-a".into(),
        vcpus: 1,
        memory_mib: 64,
        boot: Some(proto::vm_config::Boot::Kernel(proto::KernelBoot {
            kernel: kernel.into(),
            initramfs: String::new(),
            cmdline: "console=ttyS0".into(),
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_codes_and_leave_nothing_behind_and_changes_are_audited() {
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();

    // A real mvirt-log.
    let log_dir = tempfile::tempdir().unwrap();
    let log_server = mvirt_log::server::BoundServer::bind(mvirt_log::server::Config {
        listen: mvirt_common::listen::ListenAddr::Unix(log_dir.path().join("log.sock")),
        data_dir: log_dir.path().to_path_buf(),
        retention: mvirt_log::retention::RetentionPolicy {
            max_age: None,
            max_rows: None,
            interval: Duration::from_secs(3600),
        },
    })
    .await
    .unwrap();
    let log_endpoint = log_server.endpoint();
    let log_shutdown = mvirt_common::Shutdown::new();
    let log_task = tokio::spawn(log_server.serve(log_shutdown.clone()));

    let mut cfg = config(dir.path(), &[files.path()]);
    cfg.log_endpoint = log_endpoint.clone();
    let (daemon, mut client) = start_daemon(cfg).await;

    let kernel = files.path().join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let kernel = kernel.display().to_string();
    let id = new_id();

    let code = |r: Result<tonic::Response<proto::Vm>, tonic::Status>| r.unwrap_err().code();
    let creator = client.clone();
    let create = |id: &str, config: proto::VmConfig| {
        let mut client = creator.clone();
        let id = id.to_string();
        async move {
            client
                .create_vm(proto::CreateVmRequest {
                    id,
                    config: Some(config),
                })
                .await
        }
    };

    // Unknown and malformed ids.
    let err = client
        .get_vm(proto::GetVmRequest { id: new_id() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .start_vm(proto::StartVmRequest {
            id: "../../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        code(create("not-a-uuid", kernel_config(&kernel)).await),
        tonic::Code::InvalidArgument
    );

    // Zero vCPUs, zero memory.
    let mut c = kernel_config(&kernel);
    c.vcpus = 0;
    let err = create(&id, c).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("vcpus"), "{}", err.message());
    let mut c = kernel_config(&kernel);
    c.memory_mib = 0;
    assert_eq!(code(create(&id, c).await), tonic::Code::InvalidArgument);

    // Missing kernel, kernel outside the allowed directories.
    let missing = files.path().join("nope").display().to_string();
    let err = create(&id, kernel_config(&missing)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("does not exist"),
        "{}",
        err.message()
    );
    let foreign = outside.path().join("vmlinuz");
    std::fs::write(&foreign, b"x").unwrap();
    let err = create(&id, kernel_config(&foreign.display().to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("outside the allowed"),
        "{}",
        err.message()
    );
    // A symlink inside an allowed directory pointing outside is still outside.
    let link = files.path().join("link");
    std::os::unix::fs::symlink(&foreign, &link).unwrap();
    assert_eq!(
        code(create(&id, kernel_config(&link.display().to_string())).await),
        tonic::Code::PermissionDenied
    );

    // Missing disk, invalid MAC, a TAP that does not exist.
    let mut c = kernel_config(&kernel);
    c.disks.push(proto::Disk {
        id: "root".into(),
        path: files.path().join("missing.img").display().to_string(),
        read_only: false,
    });
    assert_eq!(code(create(&id, c).await), tonic::Code::FailedPrecondition);
    let mut c = kernel_config(&kernel);
    c.nics.push(proto::Nic {
        id: "n".into(),
        tap: "mvtnone0".into(),
        mac: "03:00:00:00:00:01".into(),
    });
    let err = create(&id, c.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("MAC"), "{}", err.message());
    c.nics[0].mac = "02:00:00:00:00:01".into();
    let err = create(&id, c).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("TAP device mvtnone0"),
        "{}",
        err.message()
    );

    // Nothing was created by any of that.
    let listed = client
        .list_vms(proto::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.vms.is_empty());
    assert!(std::fs::read_dir(dir.path().join("run"))
        .unwrap()
        .next()
        .is_none());

    // A valid VM whose kernel QEMU refuses: start fails with QEMU's message, no process remains.
    let vm = create(&id, kernel_config(&kernel))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&vm), proto::VmState::Stopped);
    let err = client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(
        err.message().contains("exited during start-up"),
        "{}",
        err.message()
    );
    let failed = get_vm(&mut client, &id).await;
    assert_eq!(state(&failed), proto::VmState::Failed);
    assert!(
        failed.state_reason.starts_with("start failed"),
        "{}",
        failed.state_reason
    );
    assert_eq!(failed.pid, 0);
    // Console of a VM that does not run.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(proto::ConsoleInput {
        vm_id: id.clone(),
        data: vec![],
    })
    .await
    .unwrap();
    let err = client
        .console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // A new watcher can start with the current state of every VM.
    let mut watch = client
        .watch_vms(proto::WatchVmsRequest {
            include_initial: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.r#type, proto::VmEventType::Initial as i32);
    assert_eq!(first.vm.as_ref().unwrap().id, id);
    assert_eq!(first.vm.unwrap().state, proto::VmState::Failed as i32);
    drop(watch);

    // Version and host information.
    let version = client
        .get_version(proto::GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.component, "mvirt-vmm");
    assert_eq!(version.hypervisor, "qemu");
    let info = client
        .get_system_info(proto::GetSystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.cpu_cores >= 1 && info.memory_total_bytes > 0);
    assert_eq!(info.defined_vms, 1);
    assert_eq!(info.running_vms, 0);
    assert_eq!(info.allocated_vcpus, 0);

    // Stopped VMs can change devices: recorded for the next boot.
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
    assert!(!change.applied_live);
    assert_eq!(change.vm.unwrap().config.unwrap().disks.len(), 1);
    let err = client
        .detach_disk(proto::DetachDiskRequest {
            vm_id: id.clone(),
            disk_id: "other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    client
        .detach_disk(proto::DetachDiskRequest {
            vm_id: id.clone(),
            disk_id: "extra".into(),
        })
        .await
        .unwrap();

    client
        .delete_vm(proto::DeleteVmRequest {
            id: id.clone(),
            force: false,
        })
        .await
        .unwrap();
    daemon.stop().await.unwrap();

    // The audit trail of this VM in mvirt-log.
    let mut log = LogServiceClient::connect(log_endpoint.clone())
        .await
        .unwrap();
    let mut stream = log
        .query(mvirt_log::proto::QueryRequest {
            object_id: id.clone(),
            order: mvirt_log::proto::Order::OldestFirst as i32,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut entries = Vec::new();
    while let Some(Ok(item)) = stream.next().await {
        if let Some(mvirt_log::proto::query_response::Item::Entry(e)) = item.item {
            entries.push(e);
        }
    }
    let audits: Vec<&str> = entries
        .iter()
        .filter(|e| e.level == mvirt_log::proto::LogLevel::Audit as i32)
        .map(|e| e.message.as_str())
        .collect();
    assert!(
        audits.iter().any(|m| m.starts_with("created VM vm-a")),
        "{audits:?}"
    );
    assert!(
        audits.iter().any(|m| m.contains("attach disk extra")),
        "{audits:?}"
    );
    assert!(
        audits.iter().any(|m| m.starts_with("deleted VM vm-a")),
        "{audits:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e.component == "mvirt-vmm" && e.object_ids.contains(&id)),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.level == mvirt_log::proto::LogLevel::Error as i32
                && e.message.starts_with("start failed")),
        "{entries:?}"
    );

    log_shutdown.trigger();
    let _ = log_task.await;
}
