//! Live migration between two mvirt-vmm daemons (two data dirs on this host, QEMU TCG), with
//! the stream carried by a relay the test runs between the source's destination socket and
//! the target's incoming socket — the part the node agents play between hosts.
//!
//! A guest that counts on its serial console and wrote a marker to its disk is migrated: the
//! count goes on on the target without a reboot (no second boot banner, uptime continues), the
//! disk arrived (block migration), downtime is reported. A migration whose target dies midway
//! fails and leaves the guest running on the source.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mvirt_vmm::proto;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Relays one connection accepted on `listen` to `target` (both unix sockets), as the node
/// agents do over their peer channel.
fn relay(listen: &Path, target: PathBuf) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(listen).unwrap();
    tokio::spawn(async move {
        let Ok((mut from, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut to) = tokio::net::UnixStream::connect(&target).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
    })
}

/// Like [`relay`], but SIGKILLs the process `victim` once `after` bytes went through: a target
/// that dies in the middle of the stream.
fn relay_killing(
    listen: &Path,
    target: PathBuf,
    victim: i32,
    after: usize,
) -> tokio::task::JoinHandle<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(listen).unwrap();
    tokio::spawn(async move {
        let Ok((mut from, _)) = listener.accept().await else {
            return false;
        };
        let Ok(mut to) = tokio::net::UnixStream::connect(&target).await else {
            return false;
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        loop {
            let Ok(n) = from.read(&mut buf).await else {
                return false;
            };
            if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                return false;
            }
            sent += n;
            if sent >= after {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(victim),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .expect("kill the target's QEMU");
                return true;
            }
        }
    })
}

async fn migrate_to_end(
    client: &mut VmServiceClient<Channel>,
    id: &str,
    destination: &Path,
) -> (Vec<proto::MigrationProgress>, proto::MigrationProgress) {
    let mut stream = client
        .migrate_vm(proto::MigrateVmRequest {
            id: id.to_string(),
            destination_socket: destination.display().to_string(),
            with_disks: true,
            max_downtime_ms: 300,
        })
        .await
        .expect("MigrateVm")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(progress) = stream.next().await {
        seen.push(progress.expect("progress"));
    }
    let last = seen.last().cloned().expect("at least one progress message");
    (seen, last)
}

use mvirt_testsupport::guest::uptime_of;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counting_guest_moves_with_its_disk_and_a_failed_migration_leaves_it_on_the_source() {
    mvirt_testsupport::require_root();
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let disks = tempfile::tempdir().unwrap();
    let (_source, mut source) = start_daemon(config(source_dir.path(), &[disks.path()])).await;
    let (_target, mut target) = start_daemon(config(target_dir.path(), &[disks.path()])).await;
    let mut reaper = GuestReaper::default();

    // The source's disk and the target's empty, same-sized image.
    let size = 16 * 1024 * 1024;
    let source_disk = disks.path().join("source.img");
    let target_disk = disks.path().join("target.img");
    std::fs::File::create(&source_disk)
        .unwrap()
        .set_len(size)
        .unwrap();
    std::fs::File::create(&target_disk)
        .unwrap()
        .set_len(size)
        .unwrap();

    let id = new_id();
    reaper.watch(&id);
    let mut config = guest_config("mover", "");
    config.memory_mib = 128;
    config.disks.push(proto::Disk {
        id: "root".into(),
        path: source_disk.display().to_string(),
        read_only: false,
    });
    source
        .create_vm(proto::CreateVmRequest {
            id: id.clone(),
            config: Some(config.clone()),
        })
        .await
        .unwrap();
    source
        .start_vm(proto::StartVmRequest { id: id.clone() })
        .await
        .unwrap();
    let on_source = Viewer::open(&mut source, &id).await;
    on_source.wait_for("MVIRT-GUEST-BOOTED", BOOT_TIMEOUT).await;
    let suffix = mvirt_testsupport::unique_suffix();
    // Typed with `""` inside, so the echo of the typed line never matches what is waited for.
    let marker = format!("MARKER-{suffix}");
    on_source
        .send(&format!(
            "echo MARK\"\"ER-{suffix} | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null; \
             (i=0; while true; do i=$((i+1)); echo COUNT-$i; sleep 1; done) &\n"
        ))
        .await;
    on_source.wait_for("COUNT-3", BOOT_TIMEOUT).await;
    on_source
        .send("echo UP\"\"BEFORE $(cut -d' ' -f1 /proc/uptime)\n")
        .await;
    on_source.wait_for("UPBEFORE ", BOOT_TIMEOUT).await;

    // 1. A migration whose target dies midway: the guest runs on on the source.
    let mut target_config = config.clone();
    target_config.disks[0].path = target_disk.display().to_string();
    let prepared = target
        .prepare_incoming_migration(proto::PrepareIncomingMigrationRequest {
            id: id.clone(),
            config: Some(target_config.clone()),
        })
        .await
        .expect("PrepareIncomingMigration")
        .into_inner();
    assert_eq!(
        state(prepared.vm.as_ref().unwrap()),
        proto::VmState::Starting
    );
    let target_pid = prepared.vm.as_ref().unwrap().pid as i32;
    let out = source_dir.path().join("migrate-out-1.sock");
    assert!(target_pid > 0, "{prepared:?}");
    let killer = relay_killing(
        &out,
        PathBuf::from(&prepared.socket_path),
        target_pid,
        4 * 1024 * 1024,
    );
    let (_, last) = migrate_to_end(&mut source, &id, &out).await;
    assert!(killer.await.unwrap(), "the target was killed midway");
    assert_ne!(
        last.status,
        proto::MigrationStatus::Completed as i32,
        "the target died: {last:?}"
    );
    let vm = get_vm(&mut source, &id).await;
    assert_eq!(state(&vm), proto::VmState::Running, "{vm:?}");
    let count_now = on_source.text().matches("COUNT-").count();
    on_source
        .wait_for(&format!("COUNT-{}", count_now + 2), BOOT_TIMEOUT)
        .await;
    // The dead target's VM is failed there; delete it for the second attempt.
    mvirt_testsupport::process::wait_until_async(
        "the killed target VM is no longer active",
        Duration::from_secs(20),
        || {
            let mut target = target.clone();
            let id = id.clone();
            async move {
                let vm = get_vm(&mut target, &id).await;
                (!matches!(
                    state(&vm),
                    proto::VmState::Starting | proto::VmState::Running
                ))
                .then_some(())
            }
        },
    )
    .await;
    target
        .delete_vm(proto::DeleteVmRequest {
            id: id.clone(),
            force: true,
        })
        .await
        .unwrap();

    // 2. The migration that works. The target's daemon restarts while its VM waits: the VM is
    // adopted as still waiting (not as running).
    let prepared = target
        .prepare_incoming_migration(proto::PrepareIncomingMigrationRequest {
            id: id.clone(),
            config: Some(target_config),
        })
        .await
        .expect("PrepareIncomingMigration")
        .into_inner();
    _target.stop().await.expect("stop the target's mvirt-vmm");
    let (_target, mut target) =
        start_daemon(common::config(target_dir.path(), &[disks.path()])).await;
    let vm = get_vm(&mut target, &id).await;
    assert_eq!(state(&vm), proto::VmState::Starting, "{vm:?}");
    assert_eq!(vm.state_reason, "waiting for an incoming migration");
    let out = source_dir.path().join("migrate-out-2.sock");
    let _relay = relay(&out, PathBuf::from(&prepared.socket_path));
    let (seen, last) = migrate_to_end(&mut source, &id, &out).await;
    assert_eq!(
        last.status,
        proto::MigrationStatus::Completed as i32,
        "{last:?}"
    );
    assert!(last.transferred_bytes > 0, "{last:?}");
    assert!(last.downtime_ms > 0, "downtime is reported: {last:?}");
    assert!(seen.len() >= 2, "progress while it ran: {seen:?}");
    // The source is paused until stopped; the target has the state but does not run yet.
    let vm = get_vm(&mut source, &id).await;
    assert_eq!(state(&vm), proto::VmState::Stopping, "{vm:?}");
    let vm = target
        .complete_incoming_migration(proto::CompleteIncomingMigrationRequest { id: id.clone() })
        .await
        .expect("CompleteIncomingMigration")
        .into_inner();
    assert_eq!(state(&vm), proto::VmState::Running, "{vm:?}");
    source
        .kill_vm(proto::KillVmRequest { id: id.clone() })
        .await
        .unwrap();

    // The count goes on on the target, without a second boot; uptime continued; the disk came.
    let on_target = Viewer::open(&mut target, &id).await;
    let last_source_count = on_source
        .text()
        .rsplit("COUNT-")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("a count on the source");
    on_target
        .wait_for(&format!("COUNT-{}", last_source_count + 2), BOOT_TIMEOUT)
        .await;
    on_target
        .send("echo UP\"\"AFTER $(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 40; echo\n")
        .await;
    let after = on_target.wait_for(&marker, BOOT_TIMEOUT).await;
    assert!(
        !after.contains("MVIRT-GUEST-BOOTED"),
        "the guest rebooted: {after}"
    );
    let up_before = uptime_of(&on_source.text(), "UPBEFORE ");
    let up_after = uptime_of(&after, "UPAFTER ");
    assert!(
        up_after > up_before,
        "uptime went on: {up_before} → {up_after}"
    );
    let head = std::fs::read(&target_disk).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..512]).contains(&marker),
        "the target image holds what the guest wrote on the source"
    );
    target
        .delete_vm(proto::DeleteVmRequest {
            id: id.clone(),
            force: true,
        })
        .await
        .unwrap();
}
