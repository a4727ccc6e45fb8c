//! `DeleteTemplate` with `detach_clones`: dependent clones are copied into independent datasets
//! under their own names before the template goes, and a restart in the middle of that leaves
//! either the clone or the complete copy, never neither.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::process::{Command, Stdio};

use common::{import_ok, import_request, new_id, Client, Fixture};
use mvirt_zfs::proto;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn write_at(path: &str, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn zfs_value(dataset: &str, prop: &str) -> String {
    common::run("zfs", &["get", "-H", "-o", "value", prop, dataset])
        .trim()
        .to_string()
}

/// Names of everything (datasets and snapshots) under `dataset`, itself excluded.
fn descendants(dataset: &str) -> Vec<String> {
    common::run(
        "zfs",
        &["list", "-H", "-o", "name", "-t", "all", "-r", dataset],
    )
    .lines()
    .filter(|l| *l != dataset)
    .map(str::to_string)
    .collect()
}

/// `zfs send snapshot | zfs recv dataset`, piped here without a shell.
fn send_receive(snapshot: &str, dataset: &str) {
    let mut send = Command::new("zfs")
        .args(["send", snapshot])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let recv = Command::new("zfs")
        .args(["recv", dataset])
        .stdin(Stdio::from(send.stdout.take().unwrap()))
        .output()
        .unwrap();
    assert!(send.wait().unwrap().success());
    assert!(
        recv.status.success(),
        "{}",
        String::from_utf8_lossy(&recv.stderr)
    );
}

/// Renames like the daemon does on zfs-fuse: unmount, rename, mount.
fn rename(from: &str, to: &str) {
    common::run("zfs", &["unmount", from]);
    common::run("zfs", &["rename", from, to]);
    common::run("zfs", &["mount", to]);
}

async fn import_template(fx: &Fixture, c: &mut Client, name: &str) -> (String, String) {
    let image = fx.import_dir.join(format!("{name}.img"));
    common::make_disk_image(&image, 16 * MIB, 21);
    let tid = new_id();
    let url = format!("file://{}", image.display());
    import_ok(c, import_request(&tid, name, &url)).await;
    (tid, common::sha256_file(&image))
}

async fn clone(c: &mut Client, tid: &str, name: &str, size: u64) -> proto::Volume {
    c.clone_from_template(proto::CloneFromTemplateRequest {
        template_id: tid.to_string(),
        volume_id: new_id(),
        name: name.into(),
        size_bytes: size,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn drift(c: &mut Client) -> Vec<proto::DriftItem> {
    c.check_drift(proto::CheckDriftRequest {})
        .await
        .unwrap()
        .into_inner()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_template_with_detach_clones_copies_each_clone_and_keeps_its_data() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let (tid, template_sha) = import_template(&fx, &mut c, "golden").await;
    let plain = clone(&mut c, &tid, "plain", 0).await;
    let grown = clone(&mut c, &tid, "grown", 32 * MIB).await;
    assert_eq!(common::sha256_file(&plain.path), template_sha);

    // Writes after cloning, a snapshot between two of them, and a user property of our own.
    write_at(&plain.path, 3 * MIB, b"written to the clone after cloning");
    write_at(&grown.path, 20 * MIB, b"first write");
    let snap = new_id();
    c.create_snapshot(proto::CreateSnapshotRequest {
        volume_id: grown.id.clone(),
        id: snap.clone(),
        name: "before".into(),
    })
    .await
    .unwrap();
    let grown_at_snapshot = common::sha256_file(&grown.path);
    write_at(&grown.path, 20 * MIB, b"second write");
    let plain_ds = fx.pool.dataset(&format!("mvirt/volumes/{}", plain.id));
    common::run("zfs", &["set", "com.example:owner=team-a", &plain_ds]);
    let before: Vec<(String, String)> = [&plain, &grown]
        .iter()
        .map(|v| (v.path.clone(), common::sha256_file(&v.path)))
        .collect();
    assert_ne!(before[0].1, template_sha);

    // The default still refuses, with the count, and changes nothing.
    let err = c
        .delete_template(proto::DeleteTemplateRequest {
            id: tid.clone(),
            detach_clones: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("2 dependent clone"),
        "{}",
        err.message()
    );

    // A clone whose image is open (a running VM) is not copied behind its back.
    let holder = Command::new("sleep")
        .arg("60")
        .stdin(std::fs::File::open(&plain.path).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Kill(holder);
    let err = c
        .delete_template(proto::DeleteTemplateRequest {
            id: tid.clone(),
            detach_clones: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("in use"), "{}", err.message());
    drop(holder);
    assert!(fx.dataset_exists(&format!("mvirt/templates/{tid}")));
    assert_eq!(
        zfs_value(&plain_ds, "origin"),
        fx.pool.dataset(&format!("mvirt/templates/{tid}@base"))
    );
    let grown_ds = fx.pool.dataset(&format!("mvirt/volumes/{}", grown.id));
    let grown_copied_before = zfs_value(&grown_ds, "origin") == "-";
    if grown_copied_before {
        assert!(
            err.message().contains(&grown.id),
            "the refusal names the volume already copied: {}",
            err.message()
        );
    }

    let deleted = c
        .delete_template(proto::DeleteTemplateRequest {
            id: tid.clone(),
            detach_clones: true,
        })
        .await
        .unwrap()
        .into_inner();
    // The refused attempt may already have copied the grown clone (clones are taken in dataset
    // name order); a volume made independent stays so.
    let mut expected = vec![plain.id.clone()];
    if !grown_copied_before {
        expected.push(grown.id.clone());
    }
    expected.sort();
    let mut detached = deleted.detached_volume_ids.clone();
    detached.sort();
    assert_eq!(detached, expected);
    assert_eq!(deleted.dependent_clones as usize, expected.len());

    // The template is gone; the volumes depend on nothing and hold exactly what they held.
    assert!(!fx.dataset_exists(&format!("mvirt/templates/{tid}")));
    let err = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    for (volume, (path, sha)) in [&plain, &grown].into_iter().zip(&before) {
        let ds = fx.pool.dataset(&format!("mvirt/volumes/{}", volume.id));
        assert_eq!(zfs_value(&ds, "origin"), "-", "{ds}");
        assert_eq!(zfs_value(&ds, "mvirt:id"), volume.id);
        assert_eq!(zfs_value(&ds, "mvirt:kind"), "volume");
        assert_eq!(zfs_value(&ds, "mvirt:detach"), "-");
        let now = c
            .get_volume(proto::GetVolumeRequest {
                id: volume.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&now.path, path, "the image path does not change");
        assert_eq!(now.size_bytes, volume.size_bytes);
        assert_eq!(&common::sha256_file(&now.path), sha);
        // A full copy now: it no longer shares blocks with anything.
        assert!(now.used_bytes > 8 * MIB, "{now:?}");
    }
    assert_eq!(zfs_value(&plain_ds, "com.example:owner"), "team-a");
    // Snapshots came along: the grown volume rolls back to the state of its snapshot.
    let snaps = c
        .list_snapshots(proto::ListSnapshotsRequest {
            volume_id: grown.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(snaps.len(), 1);
    assert!(snaps[0].referenced_bytes > 0, "{snaps:?}");
    c.rollback_snapshot(proto::RollbackSnapshotRequest {
        volume_id: grown.id.clone(),
        id: snap,
    })
    .await
    .unwrap();
    assert_eq!(common::sha256_file(&grown.path), grown_at_snapshot);

    // Nothing left over: no staging datasets, no detach snapshots, no drift.
    assert!(descendants(&fx.pool.dataset("mvirt/staging")).is_empty());
    let leftovers: Vec<String> = descendants(&fx.pool.dataset("mvirt/volumes"))
        .into_iter()
        .filter(|n| n.contains("mvirt-detach"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(drift(&mut c).await.is_empty());

    // The volumes live on by themselves: deletable without anything else.
    for v in [plain, grown] {
        c.delete_volume(proto::DeleteVolumeRequest {
            id: v.id,
            force: false,
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_interrupted_by_a_restart_leaves_the_clone_or_the_copy_never_neither() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let (tid, _) = import_template(&fx, &mut c, "golden").await;
    let swapped = clone(&mut c, &tid, "swapped", 0).await;
    let partial = clone(&mut c, &tid, "partial", 0).await;
    write_at(&swapped.path, MIB, b"swapped volume data");
    write_at(&partial.path, MIB, b"partial volume data");
    let swapped_sha = common::sha256_file(&swapped.path);
    let partial_sha = common::sha256_file(&partial.path);
    let base = fx.pool.dataset(&format!("mvirt/templates/{tid}@base"));

    let common::Fixture {
        daemon,
        import_dir: _import_dir,
        data_dir: _data_dir,
        pool,
        dirs: _dirs,
    } = fx;
    let config = daemon.stop().await;

    // What a crash leaves, made by hand in the daemon's order (see Storage::detach_clone):
    // "swapped": complete copy marked ready, clone already renamed away, copy not yet in place.
    let ds = pool.dataset(&format!("mvirt/volumes/{}", swapped.id));
    let snapshot = format!("{ds}@mvirt-detach");
    let new = pool.dataset(&format!("mvirt/staging/{}.new", swapped.id));
    let old = pool.dataset(&format!("mvirt/staging/{}.old", swapped.id));
    common::run("zfs", &["snapshot", &snapshot]);
    send_receive(&snapshot, &new);
    common::run("zfs", &["set", &format!("mvirt:id={}", swapped.id), &new]);
    common::run("zfs", &["set", "mvirt:kind=volume", &new]);
    common::run("zfs", &["set", "mvirt:detach=ready", &new]);
    rename(&ds, &old);
    // "partial": a copy received but never marked ready; the clone still has its name.
    let pds = pool.dataset(&format!("mvirt/volumes/{}", partial.id));
    let psnapshot = format!("{pds}@mvirt-detach");
    common::run("zfs", &["snapshot", &psnapshot]);
    send_receive(
        &psnapshot,
        &pool.dataset(&format!("mvirt/staging/{}.new", partial.id)),
    );

    let daemon = common::Daemon::start(config).await;
    let mut c = daemon.client.clone();
    // The swap was completed: the volume is the independent copy with its data.
    assert_eq!(zfs_value(&ds, "origin"), "-");
    assert_eq!(zfs_value(&ds, "mvirt:id"), swapped.id);
    assert_eq!(zfs_value(&ds, "mvirt:detach"), "-");
    assert_eq!(common::sha256_file(&swapped.path), swapped_sha);
    // The incomplete copy was dropped: the volume is still the clone, data unchanged.
    assert_eq!(zfs_value(&pds, "origin"), base);
    assert_eq!(common::sha256_file(&partial.path), partial_sha);
    assert!(descendants(&pool.dataset("mvirt/staging")).is_empty());
    let leftovers: Vec<String> = descendants(&pool.dataset("mvirt/volumes"))
        .into_iter()
        .filter(|n| n.contains("mvirt-detach"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(drift(&mut c).await.is_empty());
    let t = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.clone_count, 1);

    // And the interrupted operation can simply be asked for again.
    let deleted = c
        .delete_template(proto::DeleteTemplateRequest {
            id: tid,
            detach_clones: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.detached_volume_ids, vec![partial.id.clone()]);
    assert_eq!(zfs_value(&pds, "origin"), "-");
    assert_eq!(common::sha256_file(&partial.path), partial_sha);
    daemon.stop().await;
    drop(pool);
}
