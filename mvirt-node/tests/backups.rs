//! Backups through the API on one host: a running VM's volume holds data its guest wrote; a
//! backup of the VM (`POST /v1/vms/{id}/backups`) is written by the node's mvirt-zfs; restored
//! into a new volume (`POST /v1/backups/{id}/restore`) it holds the same bytes, and a new VM
//! booted from it reads the guest's data back. A backup whose stream file was corrupted on disk
//! fails its restore with mvirt-zfs's reason in the new volume's status; deleting a backup
//! removes its files from the node.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::*;
use mvirt_testsupport::process::wait_until_async;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(120);
/// Where the guest writes its data on its disk (1 MiB in: clear of anything at the start).
const OFFSET: u64 = 1 << 20;

/// Waits until object `path`'s `status.phase` is `phase` (failing early on `failed` unless
/// that is what is awaited); returns the object. On timeout the panic shows it as last seen.
async fn wait_phase(rest: &Rest, path: &str, phase: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let object = rest.get(path).await;
        let now = object["status"]["phase"].as_str().unwrap_or_default();
        if now == phase {
            return object;
        }
        if now == "failed" || tokio::time::Instant::now() > deadline {
            panic!("{path} is not {phase} (after up to {timeout:?}): {object:#}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `len` bytes of the file at `offset`.
fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// The image file of a volume, as its node's mvirt-zfs reports it.
async fn volume_path(zfs_endpoint: &str, id: &str) -> std::path::PathBuf {
    use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
    let mut zfs = ZfsServiceClient::connect(zfs_endpoint.to_string())
        .await
        .expect("connect mvirt-zfs");
    let volume = zfs
        .get_volume(mvirt_zfs::proto::GetVolumeRequest { id: id.to_string() })
        .await
        .expect("the volume exists in mvirt-zfs")
        .into_inner();
    volume.path.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_backup_restored_into_a_new_vm_boots_with_the_data_and_a_corrupt_backup_is_refused() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let OneNode {
        log_shutdown,
        host,
        // Bound (not `..`): the member must outlive the test body.
        api: _api,
        rest,
        agent,
        ..
    } = OneNode::start(root, "node-a").await;

    let template_id = rest.create_template("tiny", &host.images).await;
    let vm = rest
        .post(
            "/v1/vms",
            json!({"name": "source", "spec": {
                "vcpus": 1,
                "memory_bytes": 256u64 << 20,
                "root_volume": {"template_id": template_id, "size_bytes": 64u64 << 20},
            }}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let volume_id = rest.wait_vm_phase(&vm_id, "running", BOOT).await["spec"]["volume_ids"][0]
        .as_str()
        .unwrap()
        .to_string();

    // The guest writes a line to its disk (the shell's arithmetic makes the done-marker differ
    // from the echoed command line).
    let data = format!("MVIRT-BACKUP-DATA-{}", mvirt_testsupport::unique_suffix());
    let write = format!(
        "echo {data} | dd of=/dev/vda bs=512 seek={} conv=fsync,notrunc 2>/dev/null; sync; echo WROTE-$((40+2))\n",
        OFFSET / 512
    );
    console_until(&host.endpoints.vmm, &vm_id, b"", "MVIRT-GUEST-BOOTED", BOOT).await;
    console_until(
        &host.endpoints.vmm,
        &vm_id,
        write.as_bytes(),
        "WROTE-42",
        Duration::from_secs(30),
    )
    .await;
    let source_path = volume_path(&host.endpoints.zfs, &volume_id).await;
    assert_eq!(
        read_at(&source_path, OFFSET, data.len()),
        data.as_bytes(),
        "the guest's write reached the volume"
    );

    // A backup of the running VM: one per volume, written by the node.
    let taken = rest
        .post(
            &format!("/v1/vms/{vm_id}/backups"),
            json!({"name": "nightly"}),
        )
        .await;
    let items = taken["items"].as_array().expect("one backup per volume");
    assert_eq!(items.len(), 1, "{taken:#}");
    assert_eq!(items[0]["spec"]["volume_id"], volume_id.as_str());
    assert_eq!(items[0]["vm_id"], vm_id.as_str());
    let backup_id = items[0]["id"].as_str().unwrap().to_string();
    let backup = wait_phase(
        &rest,
        &format!("/v1/backups/{backup_id}"),
        "ready",
        Duration::from_secs(60),
    )
    .await;
    let report = &backup["status"]["backup"];
    let stream = host
        .dir
        .join("zfs-backups")
        .join(&volume_id)
        .join(format!("{backup_id}.zstream"));
    assert_eq!(report["sha256"], sha256_of(&stream), "{backup:#}");
    assert_eq!(
        report["size_bytes"],
        std::fs::metadata(&stream).unwrap().len(),
        "{backup:#}"
    );
    assert_eq!(report["volume_size_bytes"], 64u64 << 20);
    let listed = rest.get("/v1/backups").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed:#}");

    // Restored into a new volume: the guest's bytes are there.
    let restored = rest
        .post(
            &format!("/v1/backups/{backup_id}/restore"),
            json!({"name": "restored"}),
        )
        .await;
    let restored_id = restored["id"].as_str().unwrap().to_string();
    assert_eq!(restored["spec"]["backup_id"], backup_id.as_str());
    wait_phase(
        &rest,
        &format!("/v1/volumes/{restored_id}"),
        "ready",
        Duration::from_secs(60),
    )
    .await;
    let restored_path = volume_path(&host.endpoints.zfs, &restored_id).await;
    assert_eq!(
        read_at(&restored_path, OFFSET, data.len()),
        data.as_bytes(),
        "the restored volume holds the guest's data"
    );

    // A new VM on the restored volume boots and its guest reads the data back.
    let copy = rest
        .post(
            "/v1/vms",
            json!({"name": "copy", "spec": {
                "vcpus": 1,
                "memory_bytes": 256u64 << 20,
                "volume_ids": [restored_id],
            }}),
        )
        .await;
    let copy_id = copy["id"].as_str().unwrap().to_string();
    rest.wait_vm_phase(&copy_id, "running", BOOT).await;
    console_until(
        &host.endpoints.vmm,
        &copy_id,
        b"",
        "MVIRT-GUEST-BOOTED",
        BOOT,
    )
    .await;
    let read = format!(
        "dd if=/dev/vda bs=512 skip={} count=1 2>/dev/null | head -n 1; echo READ-$((40+2))\n",
        OFFSET / 512
    );
    let seen = console_until(
        &host.endpoints.vmm,
        &copy_id,
        read.as_bytes(),
        "READ-42",
        Duration::from_secs(30),
    )
    .await;
    let echoed = seen.find(&read[..20]).unwrap_or(0);
    assert!(
        seen[echoed..].lines().any(|l| l.trim() == data),
        "the new VM's guest reads {data} from its disk; console:\n{seen}"
    );

    // A second, full backup of the volume; its stream file is then corrupted on disk.
    let second = rest
        .post(
            &format!("/v1/volumes/{volume_id}/backups"),
            json!({"name": "second"}),
        )
        .await;
    let second_id = second["id"].as_str().unwrap().to_string();
    wait_phase(
        &rest,
        &format!("/v1/backups/{second_id}"),
        "ready",
        Duration::from_secs(60),
    )
    .await;
    let second_stream = host
        .dir
        .join("zfs-backups")
        .join(&volume_id)
        .join(format!("{second_id}.zstream"));
    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&second_stream)
            .unwrap();
        let len = f.metadata().unwrap().len();
        let at = len / 2;
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut byte = [0u8; 1];
        f.read_exact(&mut byte).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[byte[0] ^ 0xff]).unwrap();
        f.sync_all().unwrap();
    }
    let broken = rest
        .post(
            &format!("/v1/backups/{second_id}/restore"),
            json!({"name": "from-corrupt"}),
        )
        .await;
    let broken_id = broken["id"].as_str().unwrap().to_string();
    let failed = wait_phase(
        &rest,
        &format!("/v1/volumes/{broken_id}"),
        "failed",
        Duration::from_secs(60),
    )
    .await;
    let reason = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("restore backup: ")
            && reason.contains(&format!("{second_id}.zstream"))
            && reason.contains("corrupt"),
        "{failed:#}"
    );
    rest.delete(&format!("/v1/volumes/{broken_id}")).await;

    // Deleting a backup removes its files from the node.
    rest.delete(&format!("/v1/backups/{second_id}")).await;
    wait_until_async(
        "the deleted backup's stream file to go",
        Duration::from_secs(30),
        || {
            let gone = !second_stream.exists();
            async move { gone.then_some(()) }
        },
    )
    .await;
    assert!(stream.exists(), "the other backup stays");

    for id in [&vm_id, &copy_id] {
        rest.delete(&format!("/v1/vms/{id}")).await;
    }
    agent.stop().await;
    log_shutdown.trigger();
}
