//! Volumes and snapshots on a real zfs-fuse pool.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};

use common::{new_id, Fixture};
use mvirt_zfs::proto::{self, drift_item::Kind as DriftKind};
use tonic::Code;

const MIB: u64 = 1 << 20;

fn create(id: &str, name: &str, size: u64) -> proto::CreateVolumeRequest {
    proto::CreateVolumeRequest {
        id: id.into(),
        name: name.into(),
        size_bytes: size,
    }
}

fn write_at(path: &str, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_at(path: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_lifecycle_is_idempotent_grows_only_and_leaves_nothing_behind() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let id = new_id();

    let v = c
        .create_volume(create(&id, "data", 64 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.size_bytes, 64 * MIB);
    assert!(
        v.path.ends_with(&format!("volumes/{id}/disk.raw")),
        "{}",
        v.path
    );
    assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 64 * MIB);
    assert!(fx.dataset_exists(&format!("mvirt/volumes/{id}")));
    let props = common::run("zfs", &["get", "-H", "-o", "value", "mvirt:id", &v.dataset]);
    assert_eq!(props.trim(), id);

    // Same id, same spec: the existing volume. Different spec or taken name: ALREADY_EXISTS.
    let again = c
        .create_volume(create(&id, "data", 64 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.path, v.path);
    let err = c
        .create_volume(create(&id, "data", 128 * MIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = c
        .create_volume(create(&new_id(), "data", 64 * MIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert!(err.message().contains("data"));

    // Bad input.
    let err = c
        .create_volume(create(&new_id(), "zero", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .create_volume(create("../../etc", "evil", MIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .create_volume(create(&new_id(), "Bad Name", MIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Grow; shrinking is refused.
    let grown = c
        .resize_volume(proto::ResizeVolumeRequest {
            id: id.clone(),
            size_bytes: 96 * MIB,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.size_bytes, 96 * MIB);
    assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 96 * MIB);
    let err = c
        .resize_volume(proto::ResizeVolumeRequest {
            id: id.clone(),
            size_bytes: 32 * MIB,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("shrink"), "{}", err.message());

    let list = c
        .list_volumes(proto::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.volumes.len(), 1);
    assert_eq!(list.volumes[0].id, id);

    c.delete_volume(proto::DeleteVolumeRequest {
        id: id.clone(),
        force: false,
    })
    .await
    .unwrap();
    assert!(!fx.dataset_exists(&format!("mvirt/volumes/{id}")));
    let err = c
        .get_volume(proto::GetVolumeRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The name is free again.
    c.create_volume(create(&new_id(), "data", MIB))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_data_of_the_snapshot_and_drops_newer_snapshots() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let vid = new_id();
    let v = c
        .create_volume(create(&vid, "db", 16 * MIB))
        .await
        .unwrap()
        .into_inner();
    write_at(&v.path, MIB, b"version one");

    let s1 = new_id();
    let snap = c
        .create_snapshot(proto::CreateSnapshotRequest {
            volume_id: vid.clone(),
            id: s1.clone(),
            name: "before-upgrade".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.name, "before-upgrade");
    // Idempotent; a second snapshot with the same name is ALREADY_EXISTS.
    c.create_snapshot(proto::CreateSnapshotRequest {
        volume_id: vid.clone(),
        id: s1.clone(),
        name: "before-upgrade".into(),
    })
    .await
    .unwrap();
    let err = c
        .create_snapshot(proto::CreateSnapshotRequest {
            volume_id: vid.clone(),
            id: new_id(),
            name: "before-upgrade".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    write_at(&v.path, MIB, b"version two");
    let s2 = new_id();
    c.create_snapshot(proto::CreateSnapshotRequest {
        volume_id: vid.clone(),
        id: s2.clone(),
        name: "after-upgrade".into(),
    })
    .await
    .unwrap();
    write_at(&v.path, MIB, b"version tri");

    let snaps = c
        .list_snapshots(proto::ListSnapshotsRequest {
            volume_id: vid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(
        snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["before-upgrade", "after-upgrade"]
    );

    c.rollback_snapshot(proto::RollbackSnapshotRequest {
        volume_id: vid.clone(),
        id: s1.clone(),
    })
    .await
    .unwrap();
    assert_eq!(read_at(&v.path, MIB, 11), b"version one");
    let snaps = c
        .list_snapshots(proto::ListSnapshotsRequest {
            volume_id: vid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(
        snaps.len(),
        1,
        "the newer snapshot is gone with the rollback"
    );

    let err = c
        .rollback_snapshot(proto::RollbackSnapshotRequest {
            volume_id: vid.clone(),
            id: s2.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .rollback_snapshot(proto::RollbackSnapshotRequest {
            volume_id: new_id(),
            id: s1.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    c.delete_snapshot(proto::DeleteSnapshotRequest {
        volume_id: vid.clone(),
        id: s1.clone(),
    })
    .await
    .unwrap();
    assert!(!fx.dataset_exists(&format!("mvirt/volumes/{vid}@{s1}")));
    c.delete_volume(proto::DeleteVolumeRequest {
        id: vid,
        force: false,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_held_open_by_a_process_is_only_deleted_with_force() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let vid = new_id();
    let v = c
        .create_volume(create(&vid, "attached", 8 * MIB))
        .await
        .unwrap()
        .into_inner();
    // Stands in for the hypervisor: a process with the image open.
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .stdin(std::fs::File::open(&v.path).unwrap())
        .spawn()
        .unwrap();
    let seen = c
        .get_volume(proto::GetVolumeRequest { id: vid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.in_use_by, vec![holder.id()]);
    let err = c
        .delete_volume(proto::DeleteVolumeRequest {
            id: vid.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("in use"), "{}", err.message());
    let _ = holder.kill();
    let _ = holder.wait();
    c.delete_volume(proto::DeleteVolumeRequest {
        id: vid.clone(),
        force: true,
    })
    .await
    .unwrap();
    assert!(!fx.dataset_exists(&format!("mvirt/volumes/{vid}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_stats_count_provisioned_bytes_and_compression() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let v = c
        .create_volume(create(&new_id(), "a", 512 * MIB))
        .await
        .unwrap()
        .into_inner();
    c.create_volume(create(&new_id(), "b", 256 * MIB))
        .await
        .unwrap();
    // Compressible data: the ratio must move above 1.
    write_at(&v.path, 0, &vec![b'm'; 8 * MIB as usize]);
    // ZFS accounts written data when its transaction group commits; a snapshot commits it.
    c.create_snapshot(proto::CreateSnapshotRequest {
        volume_id: v.id.clone(),
        id: new_id(),
        name: "sync".into(),
    })
    .await
    .unwrap();
    let stats = mvirt_testsupport::process::wait_until_async(
        "the compression ratio to reflect the written data",
        std::time::Duration::from_secs(60),
        || {
            let mut c = c.clone();
            async move {
                let stats = c
                    .get_pool_stats(proto::GetPoolStatsRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                (stats.compression_ratio > 1.0).then_some(stats)
            }
        },
    )
    .await;
    assert_eq!(stats.pool, fx.pool.name);
    assert_eq!(stats.provisioned_bytes, 768 * MIB);
    assert_eq!(stats.volume_count, 2);
    assert!(stats.size_bytes > 3 * 1024 * MIB, "{stats:?}");
    assert!(stats.free_bytes <= stats.size_bytes);
    assert!(stats.compression_ratio > 1.0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_between_metadata_and_pool_is_reported_at_start_and_on_request() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let kept = new_id();
    let lost = new_id();
    c.create_volume(create(&kept, "kept", MIB)).await.unwrap();
    c.create_volume(create(&lost, "lost", MIB)).await.unwrap();
    let report = c
        .check_drift(proto::CheckDriftRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(report.items.is_empty(), "{report:?}");

    // Behind the daemon's back: one dataset destroyed, one foreign dataset labelled as mvirt's.
    common::run(
        "zfs",
        &[
            "destroy",
            "-r",
            &fx.pool.dataset(&format!("mvirt/volumes/{lost}")),
        ],
    );
    let stranger = new_id();
    common::run(
        "zfs",
        &[
            "create",
            "-o",
            &format!("mvirt:id={stranger}"),
            &fx.pool.dataset(&format!("mvirt/volumes/{stranger}")),
        ],
    );

    // A restart sees it too (and still starts).
    let Fixture {
        daemon,
        import_dir,
        data_dir,
        pool,
        dirs,
    } = fx;
    let config = daemon.stop().await;
    let daemon = common::Daemon::start(config).await;
    let mut c = daemon.client.clone();
    let report = c
        .check_drift(proto::CheckDriftRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut found: Vec<(DriftKind, String)> = report
        .items
        .iter()
        .map(|i| (DriftKind::try_from(i.kind).unwrap(), i.object_id.clone()))
        .collect();
    found.sort();
    let mut expected = vec![
        (DriftKind::MissingDataset, lost.clone()),
        (DriftKind::UnknownDataset, stranger),
    ];
    expected.sort();
    assert_eq!(found, expected, "{report:?}");
    // The volume that is still there is fine.
    c.get_volume(proto::GetVolumeRequest { id: kept })
        .await
        .unwrap();
    drop((daemon, import_dir, data_dir, pool, dirs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_creates_make_one_volume_and_different_volumes_proceed_together() {
    let fx = Fixture::start().await;
    let id = new_id();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut c = fx.client();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            c.create_volume(create(&id, "racy", 4 * MIB))
                .await
                .map(|r| r.into_inner())
        }));
    }
    for (i, name) in ["p", "q", "r"].iter().enumerate() {
        let mut c = fx.client();
        let name = format!("{name}{i}");
        tasks.push(tokio::spawn(async move {
            c.create_volume(create(&new_id(), &name, 4 * MIB))
                .await
                .map(|r| r.into_inner())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut c = fx.client();
    let volumes = c
        .list_volumes(proto::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes;
    assert_eq!(volumes.len(), 4);
    assert_eq!(volumes.iter().filter(|v| v.id == id).count(), 1);
}
