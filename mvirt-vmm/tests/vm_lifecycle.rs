//! Real guests under QEMU TCG driven through VmService: boot output on the console (several
//! viewers, scrollback, input), cloud-init seed, a read-write disk, a NIC on a TAP, graceful
//! stop with the power button, WatchVms, delete.

mod common;

use std::time::Duration;

use common::*;
use mvirt_vmm::proto;
use tokio_stream::StreamExt;

/// Disk ids are the API's UUIDs (36 characters): longer than QEMU's 31-character node names.
const HOT_DISK: &str = "01a24e96-25f6-74f8-b8ef-fc687d523142";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_boots_with_cloud_init_a_disk_and_a_nic_and_powers_off_on_the_power_button() {
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    let disks = tempfile::tempdir().unwrap();
    let (daemon, mut client) = start_daemon(config(dir.path(), &[disks.path()])).await;
    let mut reaper = GuestReaper::default();

    // Every change is reported on WatchVms, collected from before the VM exists.
    let mut watch = client
        .watch_vms(proto::WatchVmsRequest {
            include_initial: false,
        })
        .await
        .unwrap()
        .into_inner();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<proto::VmEvent>::new()));
    let sink = events.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            sink.lock().unwrap().push(event);
        }
    });

    let disk_path = disks.path().join("data.img");
    std::fs::write(&disk_path, vec![0u8; 1024 * 1024]).unwrap();
    let suffix = mvirt_testsupport::unique_suffix();
    // 10.<a>.<b>.0/24 unique per test process, only on the TAP this test owns.
    let net = format!(
        "10.{}.{}",
        100 + (std::process::id() % 100),
        std::process::id() % 250
    );
    let tap = PersistentTap::create(&format!("{net}.1/24"));

    let id = new_id();
    reaper.watch(&id);
    let mut config = guest_config("web-1", "");
    config.disks.push(proto::Disk {
        id: "data".into(),
        path: disk_path.display().to_string(),
        read_only: false,
    });
    config.nics.push(proto::Nic {
        id: "nic0".into(),
        tap: tap.name.clone(),
        mac: "02:00:00:12:34:56".into(),
    });
    config.cloud_init = Some(proto::CloudInit {
        user_data: format!("#cloud-config\nmvirt-test-marker: ud-{suffix}\n"),
        hostname: "ci-host".into(),
        ..Default::default()
    });
    config.labels.insert("role".into(), "web".into());
    let create = proto::CreateVmRequest {
        id: id.clone(),
        config: Some(config.clone()),
    };
    let vm = client.create_vm(create.clone()).await.unwrap().into_inner();
    assert_eq!(state(&vm), proto::VmState::Stopped);
    // Idempotent create: same id and config → the same VM.
    let again = client.create_vm(create.clone()).await.unwrap().into_inner();
    assert_eq!(again.created_at_ms, vm.created_at_ms);
    let listed = client
        .list_vms(proto::ListVmsRequest {
            label_selector: [("role".to_string(), "web".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.vms.len(), 1);
    let none = client
        .list_vms(proto::ListVmsRequest {
            label_selector: [("role".to_string(), "db".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.vms.is_empty());

    let running = client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&running), proto::VmState::Running);
    assert!(running.pid > 0);

    let info = client
        .get_system_info(proto::GetSystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.running_vms, info.allocated_vcpus), (1, 1));
    assert_eq!(info.allocated_memory_bytes, 192 * 1024 * 1024);

    let early = Viewer::open(&mut client, &id).await;
    let boot = early
        .wait_for("MVIRT-GUEST-BOOTED hostname=ci-host", BOOT_TIMEOUT)
        .await;
    // The guest mounted the cidata seed written by the daemon and printed its documents.
    assert!(
        boot.contains(&format!("mvirt-test-marker: ud-{suffix}")),
        "{boot}"
    );
    assert!(boot.contains("MVIRT-CIDATA-HOSTNAME ci-host"), "{boot}");
    assert!(
        boot.contains(&format!("MVIRT-CIDATA-INSTANCE-ID {id}")),
        "{boot}"
    );
    assert!(
        boot.contains("Linux version"),
        "kernel boot log missing: {boot}"
    );

    // A late viewer gets the scrollback, then shares live output with the first one.
    let late = Viewer::open(&mut client, &id).await;
    late.wait_for("MVIRT-CIDATA-HOSTNAME ci-host", Duration::from_secs(10))
        .await;

    // The guest writes to its read-write disk (vda: configured disks come before the seed).
    late.send("printf MVIRT-DISK-DATA | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null; sync; echo DISK-DONE-$((40+2))\n")
        .await;
    early
        .wait_for("DISK-DONE-42", Duration::from_secs(30))
        .await;
    late.wait_for("DISK-DONE-42", Duration::from_secs(5)).await;

    // The NIC is on the TAP: the guest reaches the host end.
    early
        .send(&format!(
            "for i in 1 2 3 4 5; do ip addr add {net}.2/24 dev eth0 2>/dev/null; ping -c 1 -W 2 {net}.1 >/dev/null && echo PING-OK-$((1+1)) && break; done\n"
        ))
        .await;
    early.wait_for("PING-OK-2", Duration::from_secs(60)).await;

    // Graceful stop: the guest's acpid powers off on the power button.
    let stopped = client
        .stop_vm(proto::StopVmRequest {
            id: id.clone(),
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&stopped), proto::VmState::Stopped);
    assert!(
        stopped.state_reason.contains("power button"),
        "{}",
        stopped.state_reason
    );
    assert!(
        !stopped.state_reason.contains("hard stop"),
        "the guest should have handled the power button: {}",
        stopped.state_reason
    );
    assert_eq!(stopped.pid, 0);
    assert!(
        !std::path::Path::new(&format!("/proc/{}", running.pid)).exists()
            || !std::fs::read_to_string(format!("/proc/{}/cmdline", running.pid))
                .unwrap_or_default()
                .contains(&id)
    );

    let data = std::fs::read(&disk_path).unwrap();
    assert!(
        data.starts_with(b"MVIRT-DISK-DATA"),
        "disk holds {:?}",
        &data[..32]
    );

    // A different config under the same id is refused.
    let mut other = config.clone();
    other.vcpus = 2;
    let err = client
        .create_vm(proto::CreateVmRequest {
            id: id.clone(),
            config: Some(other),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);

    client
        .delete_vm(proto::DeleteVmRequest {
            id: id.clone(),
            force: false,
        })
        .await
        .unwrap();
    let err = client
        .get_vm(proto::GetVmRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // WatchVms saw the whole life, in order.
    let kinds = mvirt_testsupport::process::wait_until_async(
        "WatchVms events up to the delete",
        Duration::from_secs(10),
        || {
            let events = events.clone();
            let id = id.clone();
            async move {
                let seen: Vec<(i32, i32)> = events
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|e| e.vm.as_ref().is_some_and(|v| v.id == id))
                    .filter(|e| e.r#type != proto::VmEventType::Updated as i32)
                    .map(|e| (e.r#type, e.vm.as_ref().map(|v| v.state).unwrap_or(0)))
                    .collect();
                seen.last()
                    .is_some_and(|(t, _)| *t == proto::VmEventType::Deleted as i32)
                    .then_some(seen)
            }
        },
    )
    .await;
    use proto::VmEventType as T;
    use proto::VmState as S;
    let expected = vec![
        (T::Created as i32, S::Stopped as i32),
        (T::StateChanged as i32, S::Starting as i32),
        (T::StateChanged as i32, S::Running as i32),
        (T::StateChanged as i32, S::Stopping as i32),
        (T::StateChanged as i32, S::Stopped as i32),
        (T::Deleted as i32, S::Stopped as i32),
    ];
    assert_eq!(kinds, expected);

    daemon.stop().await.unwrap();
    mvirt_testsupport::process::assert_no_hypervisor_outlives(dir.path(), Duration::ZERO).await;
}

/// The real `mvirt-vmm` binary on its unix socket `socket`.
fn spawn_daemon_binary(
    data_dir: &std::path::Path,
    allowed: &std::path::Path,
    socket: &std::path::Path,
) -> mvirt_testsupport::process::ChildGuard {
    let allowed = format!(
        "{},{}",
        allowed.display(),
        mvirt_testsupport::cache_dir().display()
    );
    mvirt_testsupport::process::ChildGuard::spawn(
        "mvirt-vmm",
        std::process::Command::new(env!("CARGO_BIN_EXE_mvirt-vmm"))
            .arg("--listen")
            .arg(socket)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--allowed-dir")
            .arg(allowed)
            .args([
                "--hypervisor",
                "qemu",
                "--qemu-accel",
                "tcg",
                "--qemu-tb-size-mib",
                "32",
            ])
            .args(["--log-endpoint", ""])
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data_dir.join("mvirt-vmm.log"))
                    .unwrap(),
            ),
    )
}

async fn connect_binary(
    socket: &std::path::Path,
) -> proto::vm_service_client::VmServiceClient<tonic::transport::Channel> {
    let endpoint = format!("unix:{}", socket.display());
    mvirt_testsupport::process::wait_until_async(
        "mvirt-vmm to serve",
        Duration::from_secs(30),
        || {
            let endpoint = endpoint.clone();
            async move {
                proto::vm_service_client::VmServiceClient::connect(endpoint)
                    .await
                    .ok()
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_daemon_adopts_the_running_guest_on_restart_and_a_guest_ignoring_the_power_button_is_stopped_hard(
) {
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    let disks = tempfile::tempdir().unwrap();
    let mut reaper = GuestReaper::default();
    // Killed and restarted on the same socket: the stale socket file is replaced.
    let socket = dir.path().join("vmm.sock");
    let mut daemon = spawn_daemon_binary(dir.path(), disks.path(), &socket);
    let mut client = connect_binary(&socket).await;

    let id = new_id();
    reaper.watch(&id);
    client
        .create_vm(proto::CreateVmRequest {
            id: id.clone(),
            config: Some(guest_config("stubborn", "mvirt.ignore_acpi")),
        })
        .await
        .unwrap();
    let vm = client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let pid = vm.pid;
    let viewer = Viewer::open(&mut client, &id).await;
    viewer.wait_for("MVIRT-ACPI-IGNORED", BOOT_TIMEOUT).await;
    viewer
        .wait_for("MVIRT-GUEST-BOOTED", Duration::from_secs(30))
        .await;

    // The guest prints something in 3 s; meanwhile the daemon crashes (SIGKILL: no chance to
    // clean up). The guest keeps running.
    viewer.send("(sleep 3; echo WHILE-DOWN-$((5*5))) &\n").await;
    viewer.wait_for("(sleep 3;", Duration::from_secs(10)).await;
    daemon.kill();
    assert!(
        mvirt_vmm::process::identity(pid).is_some(),
        "a dying mvirt-vmm must not take the guest with it"
    );
    let console_log = dir.path().join("run").join(&id).join("console.log");
    mvirt_testsupport::process::wait_until_async(
        "the guest's output while the daemon is down",
        Duration::from_secs(30),
        || {
            let console_log = console_log.clone();
            async move {
                std::fs::read_to_string(&console_log)
                    .ok()
                    .filter(|t| t.contains("WHILE-DOWN-25"))
            }
        },
    )
    .await;
    let mut daemon = spawn_daemon_binary(dir.path(), disks.path(), &socket);
    let mut client = connect_binary(&socket).await;
    let adopted = get_vm(&mut client, &id).await;
    assert_eq!(state(&adopted), proto::VmState::Running);
    assert_eq!(adopted.pid, pid, "the same process, not a new one");
    assert!(
        adopted.state_reason.contains("adopted"),
        "{}",
        adopted.state_reason
    );

    // The console still works: scrollback from before the restart (including what the guest
    // printed while no daemon was attached), and input.
    let viewer = Viewer::open(&mut client, &id).await;
    viewer
        .wait_for("MVIRT-GUEST-BOOTED", Duration::from_secs(10))
        .await;
    viewer
        .wait_for("WHILE-DOWN-25", Duration::from_secs(10))
        .await;
    viewer.send("echo ALIVE-$((6*7))\n").await;
    viewer.wait_for("ALIVE-42", Duration::from_secs(30)).await;

    // Hot-plug a disk into the running guest (QMP device_add): the guest sees a new block device.
    let hot = disks.path().join("hot.img");
    std::fs::write(&hot, vec![0u8; 1024 * 1024]).unwrap();
    let change = client
        .attach_disk(proto::AttachDiskRequest {
            vm_id: id.clone(),
            disk: Some(proto::Disk {
                id: HOT_DISK.into(),
                path: hot.display().to_string(),
                read_only: false,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(change.applied_live, "{}", change.message);
    viewer
        .send("for i in $(seq 1 50); do [ -e /sys/block/vda ] && break; sleep 0.2; done; ls /sys/block | grep -c vd | sed 's/^/VD-COUNT-/'\n")
        .await;
    viewer.wait_for("VD-COUNT-1", Duration::from_secs(30)).await;

    // Hot-plug a NIC on a TAP: the guest gets eth0. Then unplug the disk again (ACPI eject).
    let tap = PersistentTap::create("10.254.254.1/30");
    let change = client
        .attach_nic(proto::AttachNicRequest {
            vm_id: id.clone(),
            nic: Some(proto::Nic {
                id: "hotnic".into(),
                tap: tap.name.clone(),
                mac: "02:00:00:ab:cd:ef".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(change.applied_live, "{}", change.message);
    viewer
        .send("for i in $(seq 1 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done; cat /sys/class/net/eth0/address | sed 's/^/NIC-MAC-/'\n")
        .await;
    viewer
        .wait_for("NIC-MAC-02:00:00:ab:cd:ef", Duration::from_secs(30))
        .await;
    let change = client
        .detach_disk(proto::DetachDiskRequest {
            vm_id: id.clone(),
            disk_id: HOT_DISK.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(change.applied_live, "{}", change.message);
    assert!(change.vm.unwrap().config.unwrap().disks.is_empty());
    viewer
        .send("for i in $(seq 1 50); do [ -e /sys/block/vda ] || break; sleep 0.2; done; ls /sys/block | grep -c vd | sed 's/^/VD-AFTER-/'\n")
        .await;
    viewer.wait_for("VD-AFTER-0", Duration::from_secs(30)).await;
    // The same disk can be plugged in again.
    let change = client
        .attach_disk(proto::AttachDiskRequest {
            vm_id: id.clone(),
            disk: Some(proto::Disk {
                id: HOT_DISK.into(),
                path: hot.display().to_string(),
                read_only: true,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(change.applied_live, "{}", change.message);
    viewer
        .send("for i in $(seq 1 50); do [ -e /sys/block/vda ] && break; sleep 0.2; done; cat /sys/block/vda/ro | sed 's/^/VD-RO-/'\n")
        .await;
    viewer.wait_for("VD-RO-1", Duration::from_secs(30)).await;

    // QEMU cannot resize live: the change is recorded for the next boot and said so.
    let resized = client
        .resize_vm(proto::ResizeVmRequest {
            id: id.clone(),
            vcpus: 2,
            memory_mib: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resized.applied_live);
    let resized_vm = resized.vm.unwrap();
    assert_eq!(resized_vm.config.as_ref().unwrap().vcpus, 2);
    assert_eq!(
        resized_vm.pending_changes.len(),
        1,
        "{:?}",
        resized_vm.pending_changes
    );

    // A running VM is not deleted without force.
    let err = client
        .delete_vm(proto::DeleteVmRequest {
            id: id.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // The guest ignores the power button: StopVm falls back to a hard stop after the timeout.
    let stopped = client
        .stop_vm(proto::StopVmRequest {
            id: id.clone(),
            timeout_seconds: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&stopped), proto::VmState::Stopped);
    assert!(
        stopped.state_reason.contains("ignored the power button"),
        "{}",
        stopped.state_reason
    );
    assert!(mvirt_vmm::process::identity(pid).is_none_or(|_| {
        !mvirt_vmm::process::cmdline(pid)
            .iter()
            .any(|a| a.contains(&id))
    }));
    assert!(stopped.pending_changes.is_empty() || state(&stopped) == proto::VmState::Stopped);

    // Start again (with the recorded 2 vCPUs), then kill.
    let again = client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&again), proto::VmState::Running);
    assert!(again.pending_changes.is_empty());
    // Restart of a running VM: power button (ignored), hard stop, start: a new process.
    let restarted = client
        .restart_vm(proto::RestartVmRequest {
            id: id.clone(),
            timeout_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&restarted), proto::VmState::Running);
    assert_ne!(restarted.pid, again.pid);
    assert!(mvirt_vmm::process::identity(again.pid).is_none_or(|_| {
        !mvirt_vmm::process::cmdline(again.pid)
            .iter()
            .any(|a| a.contains(&id))
    }));
    let again = restarted;
    let cmdline = mvirt_vmm::process::cmdline(again.pid);
    assert!(
        cmdline.windows(2).any(|w| w[0] == "-smp" && w[1] == "2"),
        "{cmdline:?}"
    );
    let killed = client
        .kill_vm(proto::KillVmRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&killed), proto::VmState::Stopped);
    assert_eq!(killed.state_reason, "killed by request");

    // A hypervisor that dies on its own (here: SIGKILL from outside) is noticed and recorded.
    let crashing = client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(crashing.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let crashed = mvirt_testsupport::process::wait_until_async(
        "the crash to be recorded",
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let vm = get_vm(&mut client, &id).await;
                (state(&vm) == proto::VmState::Failed).then_some(vm)
            }
        },
    )
    .await;
    assert!(
        crashed.state_reason.contains("killed by signal 9"),
        "{}",
        crashed.state_reason
    );
    assert_eq!(crashed.pid, 0);

    // Start once more and delete with force: the process goes with the VM.
    let third = client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    client
        .delete_vm(proto::DeleteVmRequest {
            id: id.clone(),
            force: true,
        })
        .await
        .unwrap();
    assert!(mvirt_vmm::process::identity(third.pid).is_none_or(|_| {
        !mvirt_vmm::process::cmdline(third.pid)
            .iter()
            .any(|a| a.contains(&id))
    }));
    assert!(!dir.path().join("run").join(&id).exists());

    // A graceful stop of the daemon with SIGTERM.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait_timeout(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    mvirt_testsupport::process::assert_no_hypervisor_outlives(dir.path(), Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firmware_boot_vm_runs_ovmf_which_tries_to_boot_from_its_disk() {
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    let disks = tempfile::tempdir().unwrap();
    let mut reaper = GuestReaper::default();
    let mut cfg = config(
        dir.path(),
        &[disks.path(), std::path::Path::new("/usr/share/ovmf")],
    );
    cfg.qemu.default_firmware = "/usr/share/ovmf/OVMF.fd".into();
    let (daemon, mut client) = start_daemon(cfg).await;

    let blank = disks.path().join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(16 * 1024 * 1024)
        .unwrap();
    let id = new_id();
    reaper.watch(&id);
    client
        .create_vm(proto::CreateVmRequest {
            id: id.clone(),
            config: Some(proto::VmConfig {
                name: "uefi".into(),
                vcpus: 1,
                memory_mib: 128,
                boot: Some(proto::vm_config::Boot::Firmware(proto::FirmwareBoot {
                    firmware: String::new(),
                })),
                disks: vec![proto::Disk {
                    id: "root".into(),
                    path: blank.display().to_string(),
                    read_only: false,
                }],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    client
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap();
    let viewer = Viewer::open(&mut client, &id).await;
    // OVMF found the virtio disk (PCI slot 2), found nothing bootable on it, and says so.
    viewer
        .wait_for("UEFI Misc Device\" from PciRoot(0x0)/Pci(0x", BOOT_TIMEOUT)
        .await;
    let killed = client
        .kill_vm(proto::KillVmRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&killed), proto::VmState::Stopped);
    daemon.stop().await.unwrap();
    mvirt_testsupport::process::assert_no_hypervisor_outlives(dir.path(), Duration::ZERO).await;
}
