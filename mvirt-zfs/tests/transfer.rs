//! Moving a volume between two pools (two daemons, as on two nodes): SendVolume streamed into
//! ReceiveVolume (full, then incremental), replicas (marked, left out of ListVolumes, read-only,
//! promoted), replication snapshots (listed, pruned), and streams that must be refused
//! (corrupted, truncated, without trailer, wrong base, taken id or name) leaving nothing behind.

mod common;

use std::io::Write;

use common::{new_id, Client, Fixture};
use mvirt_testsupport::zfs::TestPool;
use mvirt_zfs::proto;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::Code;

const MIB: u64 = 1 << 20;

async fn repl_snapshot(c: &mut Client, volume_id: &str) -> String {
    let id = new_id();
    let s = c
        .create_replication_snapshot(proto::CreateReplicationSnapshotRequest {
            volume_id: volume_id.into(),
            snapshot_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.id, id);
    assert!(s.created_at > 0);
    id
}

/// The whole SendVolume stream (small volumes only: the test keeps it to tamper with it).
async fn send_all(
    c: &mut Client,
    volume_id: &str,
    snapshot_id: &str,
    base: &str,
) -> Vec<proto::VolumeStreamChunk> {
    let mut stream = c
        .send_volume(proto::SendVolumeRequest {
            volume_id: volume_id.into(),
            snapshot_id: snapshot_id.into(),
            base_snapshot_id: base.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.unwrap());
    }
    let last = chunks.last().expect("a stream has a trailer");
    assert_eq!(last.sha256.len(), 64, "{last:?}");
    assert!(last.data.is_empty());
    for chunk in &chunks[..chunks.len() - 1] {
        assert!(chunk.sha256.is_empty() && !chunk.data.is_empty());
        assert!(chunk.data.len() as u64 <= MIB);
    }
    let total: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
    assert_eq!(total, last.byte_count);
    let mut h = Sha256::new();
    for chunk in &chunks {
        h.update(&chunk.data);
    }
    assert_eq!(hex::encode(h.finalize()), last.sha256);
    chunks
}

fn header(volume_id: &str, name: &str, base: &str) -> proto::ReceiveVolumeHeader {
    proto::ReceiveVolumeHeader {
        volume_id: volume_id.into(),
        name: name.into(),
        base_snapshot_id: base.into(),
        source: "node-a".into(),
    }
}

/// ReceiveVolume of `chunks` (as SendVolume produced them, or tampered with).
async fn receive(
    c: &mut Client,
    header: proto::ReceiveVolumeHeader,
    chunks: Vec<proto::VolumeStreamChunk>,
) -> Result<proto::ReceiveVolumeResponse, tonic::Status> {
    let mut messages = vec![proto::ReceiveVolumeRequest {
        header: Some(header),
        ..Default::default()
    }];
    messages.extend(chunks.into_iter().map(|c| proto::ReceiveVolumeRequest {
        header: None,
        data: c.data,
        sha256: c.sha256,
        byte_count: c.byte_count,
    }));
    c.receive_volume(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_moves_to_another_pool_full_then_incrementally_and_bad_streams_leave_nothing() {
    let a = Fixture::start().await;
    let b = Fixture::start().await;
    let mut ca = a.client();
    let mut cb = b.client();
    let vid = new_id();
    let v = ca
        .create_volume(proto::CreateVolumeRequest {
            id: vid.clone(),
            name: "data".into(),
            size_bytes: 64 * MIB,
        })
        .await
        .unwrap()
        .into_inner();
    common::write_pattern(&v.path, MIB, 3 * MIB as usize, 1);
    let s1 = repl_snapshot(&mut ca, &vid).await;
    let at_s1 = common::sha256_file(&v.path);

    // Full: SendVolume relayed chunk by chunk into ReceiveVolume (nothing held in the test).
    let sent = ca
        .send_volume(proto::SendVolumeRequest {
            volume_id: vid.clone(),
            snapshot_id: s1.clone(),
            base_snapshot_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = proto::ReceiveVolumeRequest {
        header: Some(header(&vid, "data", "")),
        ..Default::default()
    };
    let relayed = tokio_stream::once(first).chain(sent.map(|chunk| {
        let chunk = chunk.unwrap();
        proto::ReceiveVolumeRequest {
            header: None,
            data: chunk.data,
            sha256: chunk.sha256,
            byte_count: chunk.byte_count,
        }
    }));
    let got = cb.receive_volume(relayed).await.unwrap().into_inner();
    assert_eq!(got.snapshot_id, s1);
    assert!(got.byte_count > 3 * MIB, "{}", got.byte_count);
    let replica = got.volume.unwrap();
    assert!(replica.replica);
    assert_eq!(replica.replica_source, "node-a");
    assert_eq!(replica.size_bytes, 64 * MIB);
    assert_eq!(replica.id, vid);
    assert_eq!(common::sha256_file(&replica.path), at_s1);
    assert_eq!(
        common::run(
            "zfs",
            &[
                "get",
                "-H",
                "-o",
                "value",
                "mvirt:replica,mvirt:id",
                &replica.dataset
            ]
        )
        .lines()
        .collect::<Vec<_>>(),
        vec!["node-a", vid.as_str()]
    );
    // A replica has readonly=on. zfs-fuse still lets an existing file be written (kernel ZFS
    // refuses it); whatever is written is discarded by the next increment (checked below).
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&replica.path) {
        f.write_all(b"written into the replica").unwrap();
        f.sync_all().unwrap();
    }
    // Not a normal volume: left out of ListVolumes, refuses changes until promoted.
    let listed = cb
        .list_volumes(proto::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.volumes.is_empty(), "{listed:?}");
    let replicas = cb
        .list_replicas(proto::ListReplicasRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replicas.volumes.len(), 1);
    assert!(replicas.volumes[0].replica);
    let err = cb
        .resize_volume(proto::ResizeVolumeRequest {
            id: vid.clone(),
            size_bytes: 128 * MIB,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("replica"), "{}", err.message());
    let err = cb
        .create_replication_snapshot(proto::CreateReplicationSnapshotRequest {
            volume_id: vid.clone(),
            snapshot_id: new_id(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let drift = cb
        .check_drift(proto::CheckDriftRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(drift.items.is_empty(), "{drift:?}");

    // Taken id or name: ALREADY_EXISTS, nothing changes.
    let full = send_all(&mut ca, &vid, &s1, "").await;
    let err = receive(&mut cb, header(&vid, "other", ""), full.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    let err = receive(&mut cb, header(&new_id(), "data", ""), full.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert!(err.message().contains("data"), "{}", err.message());
    // Bad input.
    let err = receive(&mut cb, header("../x", "x", ""), full.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = receive(&mut cb, header(&new_id(), "Bad Name", ""), full.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = cb
        .receive_volume(tokio_stream::iter(vec![proto::ReceiveVolumeRequest {
            data: full[0].data.clone(),
            ..Default::default()
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("header"), "{}", err.message());
    let err = ca
        .send_volume(proto::SendVolumeRequest {
            volume_id: vid.clone(),
            snapshot_id: new_id(),
            base_snapshot_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = ca
        .send_volume(proto::SendVolumeRequest {
            volume_id: vid.clone(),
            snapshot_id: "nope".into(),
            base_snapshot_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A corrupted full stream into a new volume: DATA_LOSS, no dataset, nothing in staging.
    let fresh = new_id();
    let mut corrupted = full.clone();
    let mut data = corrupted[1].data.to_vec();
    data[1000] ^= 0xff;
    corrupted[1].data = data;
    let err = receive(&mut cb, header(&fresh, "fresh", ""), corrupted)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{}", err.message());
    assert!(err.message().contains("checksum"), "{}", err.message());
    assert!(!b.dataset_exists(&format!("mvirt/volumes/{fresh}")));
    assert!(staging_is_empty(&b.pool));
    let err = cb
        .get_volume(proto::GetVolumeRequest { id: fresh.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Truncated (a data chunk missing, trailer kept) and without its trailer.
    let mut truncated = full.clone();
    truncated.remove(1);
    let err = receive(&mut cb, header(&fresh, "fresh", ""), truncated)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{}", err.message());
    let mut no_trailer = full.clone();
    no_trailer.pop();
    let err = receive(&mut cb, header(&fresh, "fresh", ""), no_trailer)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("trailer"), "{}", err.message());
    assert!(!b.dataset_exists(&format!("mvirt/volumes/{fresh}")));
    assert!(staging_is_empty(&b.pool));

    // Incremental after more writes.
    common::write_pattern(&v.path, 20 * MIB, 2 * MIB as usize, 2);
    let s2 = repl_snapshot(&mut ca, &vid).await;
    let at_s2 = common::sha256_file(&v.path);
    assert_ne!(at_s1, at_s2);
    let inc = send_all(&mut ca, &vid, &s2, &s1).await;
    assert!(
        inc.last().unwrap().byte_count < full.last().unwrap().byte_count + 2 * MIB,
        "an increment carries the new blocks only"
    );
    let got = receive(&mut cb, header(&vid, "", &s1), inc.clone())
        .await
        .unwrap();
    assert_eq!(got.snapshot_id, s2);
    assert_eq!(common::sha256_file(&replica.path), at_s2);
    // The same increment again: its base is no longer the replica's newest snapshot.
    let err = receive(&mut cb, header(&vid, "", &s1), inc)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    // Incremental onto a volume that is no replica.
    let err = receive(&mut ca, header(&vid, "", &s1), Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());

    // A corrupted increment: DATA_LOSS, the replica keeps s2 and its data.
    common::write_pattern(&v.path, 40 * MIB, 2 * MIB as usize, 3);
    let s3 = repl_snapshot(&mut ca, &vid).await;
    let inc3 = send_all(&mut ca, &vid, &s3, &s2).await;
    let mut corrupted = inc3.clone();
    let last_data = corrupted.len() - 2;
    let mut data = corrupted[last_data].data.to_vec();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    corrupted[last_data].data = data;
    let err = receive(&mut cb, header(&vid, "", &s2), corrupted)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{}", err.message());
    assert_eq!(
        snapshots_of(&b.pool, &vid),
        vec![format!("repl-{s1}"), format!("repl-{s2}")]
    );
    assert_eq!(common::sha256_file(&replica.path), at_s2);
    // The intact stream is then taken.
    receive(&mut cb, header(&vid, "", &s2), inc3).await.unwrap();
    let at_s3 = common::sha256_file(&v.path);
    assert_eq!(common::sha256_file(&replica.path), at_s3);

    // Replication snapshots, oldest first, with their creation time; pruning keeps the newest.
    let listed = ca
        .list_replication_snapshots(proto::ListReplicationSnapshotsRequest {
            volume_id: vid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(
        listed.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![s1.clone(), s2.clone(), s3.clone()]
    );
    assert!(listed.iter().all(|s| s.created_at > 1_600_000_000));
    assert!(listed
        .windows(2)
        .all(|w| w[0].created_at <= w[1].created_at));
    // Replication snapshots are not user snapshots.
    let user = ca
        .list_snapshots(proto::ListSnapshotsRequest {
            volume_id: vid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(user.snapshots.is_empty());
    let err = ca
        .prune_replication_snapshots(proto::PruneReplicationSnapshotsRequest {
            volume_id: vid.clone(),
            keep_last: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let pruned = ca
        .prune_replication_snapshots(proto::PruneReplicationSnapshotsRequest {
            volume_id: vid.clone(),
            keep_last: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.deleted_snapshot_ids, vec![s1.clone(), s2.clone()]);
    assert_eq!(snapshots_of(&a.pool, &vid), vec![format!("repl-{s3}")]);
    let pruned = cb
        .prune_replication_snapshots(proto::PruneReplicationSnapshotsRequest {
            volume_id: vid.clone(),
            keep_last: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.deleted_snapshot_ids, vec![s1.clone()]);

    // Promotion: a normal, writable volume of B with its snapshots; asking again is a no-op.
    let promoted = cb
        .promote_replica(proto::PromoteReplicaRequest {
            volume_id: vid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!promoted.replica);
    assert!(promoted.replica_source.is_empty());
    assert_eq!(
        common::run(
            "zfs",
            &[
                "get",
                "-H",
                "-o",
                "value,source",
                "mvirt:replica",
                &promoted.dataset
            ]
        )
        .trim(),
        "-\t-"
    );
    common::write_pattern(&promoted.path, 0, 4096, 9);
    assert_eq!(
        snapshots_of(&b.pool, &vid),
        vec![format!("repl-{s2}"), format!("repl-{s3}")]
    );
    let again = cb
        .promote_replica(proto::PromoteReplicaRequest {
            volume_id: vid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.replica);
    let listed = cb
        .list_volumes(proto::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.volumes.len(), 1);
    assert!(cb
        .list_replicas(proto::ListReplicasRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes
        .is_empty());
    let resized = cb
        .resize_volume(proto::ResizeVolumeRequest {
            id: vid.clone(),
            size_bytes: 128 * MIB,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resized.size_bytes, 128 * MIB);
    let drift = cb
        .check_drift(proto::CheckDriftRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(drift.items.is_empty(), "{drift:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_interrupted_by_a_restart_is_removed_at_the_next_start() {
    let a = Fixture::start().await;
    let mut ca = a.client();
    let vid = new_id();
    let v = ca
        .create_volume(proto::CreateVolumeRequest {
            id: vid.clone(),
            name: "data".into(),
            size_bytes: 16 * MIB,
        })
        .await
        .unwrap()
        .into_inner();
    common::write_pattern(&v.path, 0, MIB as usize, 4);
    let s1 = repl_snapshot(&mut ca, &vid).await;
    // What a daemon killed after `zfs receive` finished but before the rename leaves.
    let leftover = new_id();
    let staged = a.pool.dataset(&format!("mvirt/staging/{leftover}.recv"));
    let mut send = std::process::Command::new("zfs")
        .args([
            "send",
            &a.pool.dataset(&format!("mvirt/volumes/{vid}@repl-{s1}")),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let recv = std::process::Command::new("zfs")
        .args(["receive", &staged])
        .stdin(send.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(send.wait().unwrap().success());
    assert!(recv.success());
    assert!(!staging_is_empty(&a.pool));
    let config = a.daemon.stop().await;
    let restarted = common::Daemon::start(config).await;
    assert!(staging_is_empty(&a.pool));
    let mut c = restarted.client.clone();
    let err = c
        .get_volume(proto::GetVolumeRequest { id: leftover })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let drift = c
        .check_drift(proto::CheckDriftRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(drift.items.is_empty(), "{drift:?}");
}
