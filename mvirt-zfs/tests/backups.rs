//! Backups to a directory on a real zfs-fuse pool: a full and two incremental backups restored
//! point by point into new volumes, retention that never breaks a chain, deletes refused while
//! an incremental depends on a backup, corrupted files detected before anything is created, and
//! the real binary killed in the middle of writing a backup.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{new_id, Client, Fixture};
use mvirt_testsupport::process::{wait_until, wait_until_async, ChildGuard};
use mvirt_testsupport::zfs::TestPool;
use mvirt_zfs::proto;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
use tonic::Code;

const MIB: u64 = 1 << 20;

async fn create_volume(c: &mut Client, name: &str, size: u64) -> proto::Volume {
    c.create_volume(proto::CreateVolumeRequest {
        id: new_id(),
        name: name.into(),
        size_bytes: size,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn backup(c: &mut Client, volume_id: &str, incremental: bool) -> proto::Backup {
    c.create_backup(proto::CreateBackupRequest {
        id: new_id(),
        volume_id: volume_id.into(),
        incremental,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn restore(
    c: &mut Client,
    backup_id: &str,
    name: &str,
) -> Result<proto::Volume, tonic::Status> {
    c.restore_backup(proto::RestoreBackupRequest {
        backup_id: backup_id.into(),
        volume_id: new_id(),
        name: name.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn list(c: &mut Client, volume_id: &str) -> Vec<String> {
    c.list_backups(proto::ListBackupsRequest {
        volume_id: volume_id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .backups
    .into_iter()
    .map(|b| b.id)
    .collect()
}

fn snapshots_of(pool: &TestPool, volume_id: &str) -> Vec<String> {
    let dataset = pool.dataset(&format!("mvirt/volumes/{volume_id}"));
    common::run(
        "zfs",
        &["list", "-H", "-o", "name", "-t", "snapshot", "-r", &dataset],
    )
    .lines()
    .filter_map(|l| l.split_once('@').map(|(_, s)| s.to_string()))
    .collect()
}

fn staging_is_empty(pool: &TestPool) -> bool {
    let out = common::run(
        "zfs",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-r",
            "-t",
            "all",
            &pool.dataset("mvirt/staging"),
        ],
    );
    out.lines().count() == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_backups_restore_every_point_and_retention_keeps_chains() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let v = create_volume(&mut c, "data", 64 * MIB).await;
    common::write_pattern(&v.path, 0, 2 * MIB as usize, 1);
    let b1 = backup(&mut c, &v.id, false).await;
    let at_b1 = common::sha256_file(&v.path);
    common::write_pattern(&v.path, 10 * MIB, MIB as usize, 2);
    let b2 = backup(&mut c, &v.id, true).await;
    let at_b2 = common::sha256_file(&v.path);
    common::write_pattern(&v.path, 30 * MIB, MIB as usize, 3);
    // The volume grows between backups: the restore has the new size.
    c.resize_volume(proto::ResizeVolumeRequest {
        id: v.id.clone(),
        size_bytes: 96 * MIB,
    })
    .await
    .unwrap();
    common::write_pattern(&v.path, 90 * MIB, MIB as usize, 4);
    let b3 = backup(&mut c, &v.id, true).await;
    let at_b3 = common::sha256_file(&v.path);
    assert_ne!(at_b1, at_b2);
    assert_ne!(at_b2, at_b3);

    // Manifests and files.
    assert!(b1.base_backup_id.is_empty());
    assert_eq!(b2.base_backup_id, b1.id);
    assert_eq!(b3.base_backup_id, b2.id);
    assert_eq!(b3.volume_size_bytes, 96 * MIB);
    assert_eq!(b1.volume_name, "data");
    let backup_dir = fx.data_dir.join("backups").join(&v.id);
    for b in [&b1, &b2, &b3] {
        assert_eq!(
            Path::new(&b.path),
            backup_dir.join(format!("{}.zstream", b.id))
        );
        assert_eq!(std::fs::metadata(&b.path).unwrap().len(), b.size_bytes);
        assert_eq!(common::sha256_file(&b.path), b.sha256);
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(backup_dir.join(format!("{}.json", b.id))).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["id"], b.id.as_str());
        assert_eq!(manifest["volume_id"], v.id.as_str());
        assert_eq!(manifest["sha256"], b.sha256.as_str());
        assert_eq!(manifest["size_bytes"], b.size_bytes);
        assert_eq!(manifest["snapshot"], format!("backup-{}", b.id));
        assert!(manifest["created_at"].as_i64().unwrap() > 1_600_000_000);
    }
    assert_eq!(manifest_base(&backup_dir, &b1.id), serde_json::Value::Null);
    assert_eq!(manifest_base(&backup_dir, &b3.id), b2.id.as_str());
    assert!(
        b2.size_bytes < b1.size_bytes,
        "an incremental holds the changes only"
    );
    // Only the newest backup's snapshot stays on the volume (the next incremental's base).
    assert_eq!(
        snapshots_of(&fx.pool, &v.id),
        vec![format!("backup-{}", b3.id)]
    );
    assert_eq!(
        list(&mut c, &v.id).await,
        vec![b1.id.clone(), b2.id.clone(), b3.id.clone()]
    );
    assert_eq!(list(&mut c, "").await.len(), 3);

    // Idempotent by id; the same id for something else is ALREADY_EXISTS.
    let again = c
        .create_backup(proto::CreateBackupRequest {
            id: b3.id.clone(),
            volume_id: v.id.clone(),
            incremental: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, b3);
    let err = c
        .create_backup(proto::CreateBackupRequest {
            id: b3.id.clone(),
            volume_id: v.id.clone(),
            incremental: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Bad input; an incremental without a full before it.
    let other = create_volume(&mut c, "other", 16 * MIB).await;
    let err = c
        .create_backup(proto::CreateBackupRequest {
            id: new_id(),
            volume_id: other.id.clone(),
            incremental: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("full backup"), "{}", err.message());
    let err = c
        .create_backup(proto::CreateBackupRequest {
            id: "x".into(),
            volume_id: v.id.clone(),
            incremental: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .create_backup(proto::CreateBackupRequest {
            id: new_id(),
            volume_id: new_id(),
            incremental: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Every point restores into a new volume with the data of that moment.
    for (b, sha, size, name) in [
        (&b1, &at_b1, 64 * MIB, "r1"),
        (&b2, &at_b2, 64 * MIB, "r2"),
        (&b3, &at_b3, 96 * MIB, "r3"),
    ] {
        let r = restore(&mut c, &b.id, name).await.unwrap();
        assert_eq!(r.size_bytes, size);
        assert_eq!(&common::sha256_file(&r.path), sha, "restore of {name}");
        assert!(!r.replica);
        assert!(snapshots_of(&fx.pool, &r.id).is_empty());
        assert_eq!(
            common::run("zfs", &["get", "-H", "-o", "value", "mvirt:id", &r.dataset]).trim(),
            r.id
        );
    }
    assert!(staging_is_empty(&fx.pool));
    // Into a taken name, or a taken id: ALREADY_EXISTS.
    let err = restore(&mut c, &b1.id, "r1").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    let err = c
        .restore_backup(proto::RestoreBackupRequest {
            backup_id: b1.id.clone(),
            volume_id: v.id.clone(),
            name: "fresh".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    let err = restore(&mut c, &new_id(), "r9").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A base with dependents is not deleted alone.
    let err = c
        .delete_backup(proto::DeleteBackupRequest {
            id: b2.id.clone(),
            with_dependents: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&b3.id), "{}", err.message());

    // Retention never breaks a chain: the newest is incremental, so all three stay.
    let pruned = c
        .prune_backups(proto::PruneBackupsRequest {
            volume_id: v.id.clone(),
            keep_last: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pruned.deleted_backup_ids.is_empty());
    let err = c
        .prune_backups(proto::PruneBackupsRequest {
            volume_id: v.id.clone(),
            keep_last: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A new chain: keeping the newest 1 keeps it and its full, the old chain goes.
    common::write_pattern(&v.path, 50 * MIB, MIB as usize, 5);
    let b4 = backup(&mut c, &v.id, false).await;
    common::write_pattern(&v.path, 51 * MIB, MIB as usize, 6);
    let b5 = backup(&mut c, &v.id, true).await;
    let at_b5 = common::sha256_file(&v.path);
    assert_eq!(b5.base_backup_id, b4.id);
    let pruned = c
        .prune_backups(proto::PruneBackupsRequest {
            volume_id: v.id.clone(),
            keep_last: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pruned.deleted_backup_ids,
        vec![b3.id.clone(), b2.id.clone(), b1.id.clone()]
    );
    assert_eq!(
        list(&mut c, &v.id).await,
        vec![b4.id.clone(), b5.id.clone()]
    );
    for b in [&b1, &b2, &b3] {
        assert!(!Path::new(&b.path).exists());
        assert!(!backup_dir.join(format!("{}.json", b.id)).exists());
    }
    let r = restore(&mut c, &b5.id, "r5").await.unwrap();
    assert_eq!(common::sha256_file(&r.path), at_b5);

    // The whole chain goes with with_dependents (newest first).
    let deleted = c
        .delete_backup(proto::DeleteBackupRequest {
            id: b4.id.clone(),
            with_dependents: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deleted.deleted_backup_ids,
        vec![b5.id.clone(), b4.id.clone()]
    );
    assert!(list(&mut c, &v.id).await.is_empty());
    assert!(snapshots_of(&fx.pool, &v.id).is_empty());
    assert_eq!(std::fs::read_dir(&backup_dir).unwrap().count(), 0);
    // With no backup left an incremental is refused, a full one works.
    let err = c
        .create_backup(proto::CreateBackupRequest {
            id: new_id(),
            volume_id: v.id.clone(),
            incremental: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    backup(&mut c, &v.id, false).await;
    let drift = c
        .check_drift(proto::CheckDriftRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(drift.items.is_empty(), "{drift:?}");
}

fn manifest_base(dir: &Path, id: &str) -> serde_json::Value {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{id}.json"))).unwrap()).unwrap();
    manifest["base_backup_id"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_truncated_backup_file_is_named_and_nothing_is_created() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let v = create_volume(&mut c, "data", 32 * MIB).await;
    common::write_pattern(&v.path, 0, 2 * MIB as usize, 7);
    let b1 = backup(&mut c, &v.id, false).await;
    let at_b1 = common::sha256_file(&v.path);
    common::write_pattern(&v.path, 8 * MIB, 2 * MIB as usize, 8);
    let b2 = backup(&mut c, &v.id, true).await;

    // One flipped byte in the middle of the incremental's file.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&b2.path)
        .unwrap();
    let mid = b2.size_bytes / 2;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.write_all(&[byte[0] ^ 0x10]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let target = new_id();
    let err = c
        .restore_backup(proto::RestoreBackupRequest {
            backup_id: b2.id.clone(),
            volume_id: target.clone(),
            name: "restored".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{}", err.message());
    assert!(err.message().contains(&b2.path), "{}", err.message());
    assert!(!fx.dataset_exists(&format!("mvirt/volumes/{target}")));
    assert!(staging_is_empty(&fx.pool));
    let err = c
        .get_volume(proto::GetVolumeRequest { id: target.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The full backup before it still restores, under the name the failed restore wanted.
    let r = c
        .restore_backup(proto::RestoreBackupRequest {
            backup_id: b1.id.clone(),
            volume_id: target.clone(),
            name: "restored".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(common::sha256_file(&r.path), at_b1);

    // A truncated full backup: restoring either point names the full's file.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&b1.path)
        .unwrap();
    f.set_len(b1.size_bytes - 100).unwrap();
    drop(f);
    let err = restore(&mut c, &b2.id, "again").await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{}", err.message());
    assert!(err.message().contains(&b1.path), "{}", err.message());
    assert!(staging_is_empty(&fx.pool));

    // A backup directory that is not absolute, or not a directory, stops the start.
    let dirs = tempfile::tempdir().unwrap();
    let mut config = common::config_for(&fx.pool, &dirs.path().join("d1"), dirs.path());
    config.backup_dir = "relative/backups".into();
    let shutdown = mvirt_common::Shutdown::new();
    let err = mvirt_zfs::Daemon::prepare(&config, &shutdown)
        .await
        .err()
        .expect("a relative backup dir is refused");
    assert!(err.to_string().contains("absolute"), "{err}");
    let file = dirs.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    config.backup_dir = file;
    let err = mvirt_zfs::Daemon::prepare(&config, &shutdown)
        .await
        .err()
        .expect("a file as backup dir is refused");
    assert!(err.to_string().contains("not a directory"), "{err}");
}

fn start_daemon(pool: &TestPool, data_dir: &Path, socket: &Path) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvirt-zfs"));
    cmd.arg("--listen")
        .arg(socket)
        .args(["--pool", &pool.name, "--parent-dataset", "mvirt"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--log-endpoint", "", "--log-format", "text"]);
    ChildGuard::spawn("mvirt-zfs", &mut cmd)
}

async fn connect(socket: &Path) -> Client {
    let endpoint = format!("unix:{}", socket.display());
    wait_until_async(
        "mvirt-zfs to accept connections",
        Duration::from_secs(30),
        || {
            let endpoint = endpoint.clone();
            async move { ZfsServiceClient::connect(endpoint).await.ok() }
        },
    )
    .await
}

/// Child processes of `pid` with their argv.
fn children_of(pid: u32) -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in list
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Ok(cmdline) = std::fs::read(format!("/proc/{child}/cmdline")) {
                let argv = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                out.push((child, argv));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_while_writing_a_backup_leaves_nothing_after_restart() {
    let pool = TestPool::create();
    let dirs = tempfile::tempdir().unwrap();
    let data_dir = dirs.path().join("data");
    let socket = dirs.path().join("zfs.sock");
    let mut daemon = start_daemon(&pool, &data_dir, &socket);
    let mut c = connect(&socket).await;
    let v = create_volume(&mut c, "data", 32 * MIB).await;
    common::write_pattern(&v.path, 0, 8 * MIB as usize, 11);
    let full = backup(&mut c, &v.id, false).await;
    common::write_pattern(&v.path, 16 * MIB, 8 * MIB as usize, 12);
    let backup_dir = data_dir.join("backups").join(&v.id);

    // The incremental's `zfs send` is stopped (SIGSTOP) as soon as it appears, so the daemon
    // is killed with the `.partial` file open; retried with a new id if the send was quicker.
    let daemon_pid = daemon.id();
    let mut interrupted = None;
    for _attempt in 0..5 {
        let id = new_id();
        let snapshot_arg = format!("@backup-{id}");
        let stopper = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                for (pid, argv) in children_of(daemon_pid) {
                    if argv.get(1).is_some_and(|a| a == "send")
                        && argv.last().is_some_and(|a| a.ends_with(&snapshot_arg))
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGSTOP,
                        );
                        return Some(pid);
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            None
        });
        let mut c2 = c.clone();
        let call_id = id.clone();
        let volume_id = v.id.clone();
        let call = tokio::spawn(async move {
            c2.create_backup(proto::CreateBackupRequest {
                id: call_id,
                volume_id,
                incremental: true,
            })
            .await
        });
        let Some(stopped) = tokio::task::spawn_blocking(move || stopper.join().unwrap())
            .await
            .unwrap()
        else {
            panic!(
                "the backup's zfs send was never seen; the call: {:?}",
                call.await
            );
        };
        // Finished before the stop took effect: try again with a new backup.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if call.is_finished() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(stopped),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = call.await;
            continue;
        }
        interrupted = Some((id, stopped, call));
        break;
    }
    let (id, send_pid, call) = interrupted.expect("no backup could be interrupted in 5 attempts");
    let partial = backup_dir.join(format!("{id}.zstream.partial"));
    assert!(
        partial.exists(),
        "the backup is being written to {partial:?}"
    );
    assert!(!backup_dir.join(format!("{id}.json")).exists());
    assert!(snapshots_of(&pool, &v.id).contains(&format!("backup-{id}")));
    daemon.kill();
    // The orphaned `zfs send` the test stopped: ended so the pool can be destroyed.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(send_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = call.await;
    wait_until(
        "the stopped zfs send to end",
        Duration::from_secs(10),
        || {
            (!Path::new(&format!("/proc/{send_pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{send_pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")))
            .then_some(())
        },
    );

    let _daemon = start_daemon(&pool, &data_dir, &socket);
    let mut c = connect(&socket).await;
    // Answered once the start (and its clean-up) is done.
    assert_eq!(list(&mut c, &v.id).await, vec![full.id.clone()]);
    assert!(!partial.exists());
    // The interrupted backup's snapshot is gone; the full's stays as the incremental base.
    assert_eq!(
        snapshots_of(&pool, &v.id),
        vec![format!("backup-{}", full.id)]
    );
    let names: Vec<String> = std::fs::read_dir(&backup_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // The same backup can be taken again, and restores.
    let again = c
        .create_backup(proto::CreateBackupRequest {
            id: id.clone(),
            volume_id: v.id.clone(),
            incremental: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.base_backup_id, full.id);
    let r = restore(&mut c, &id, "restored").await.unwrap();
    assert_eq!(common::sha256_file(&r.path), common::sha256_file(&v.path));
}
