//! Template imports (file and HTTP, raw and qcow2, compressed), clones, promotion and the
//! bad-input cases, on a real zfs-fuse pool.

mod common;

use std::time::Duration;

use common::{import_ok, import_request, new_id, phase, watch_to_end, Fixture, HttpServer};
use mvirt_zfs::proto::{self, ImageFormat, ImportPhase, TemplateState};
use tokio_stream::StreamExt;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn sha256_prefix(path: &str, len: u64) -> String {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(path).unwrap();
    hex::encode(Sha256::digest(&data[..len as usize]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_import_over_http_streams_progress_and_clones_carry_data_and_boot_files() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    let image = fx.import_dir.join("disk.img");
    common::make_disk_image(&image, 64 * MIB, 7);
    std::fs::write(fx.import_dir.join("vmlinuz"), vec![0xabu8; 300_000]).unwrap();
    std::fs::write(fx.import_dir.join("initrd"), vec![0xcdu8; 200_000]).unwrap();
    let sha = common::sha256_file(&image);

    let tid = new_id();
    let mut request = import_request(&tid, "debian", &http.url("disk.img"));
    request.sha256 = sha.clone();
    request.kernel_url = http.url("vmlinuz");
    request.initramfs_url = http.url("initrd");
    request.kernel_sha256 = common::sha256_file(fx.import_dir.join("vmlinuz"));
    // Any case is accepted (and normalised).
    request.initramfs_sha256 = common::sha256_file(fx.import_dir.join("initrd")).to_uppercase();
    request.cmdline = "console=ttyS0 root=/dev/vda".into();
    let job = c
        .import_template(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.template_id, tid);
    assert_eq!(job.detected_format, ImageFormat::Raw as i32);
    // The same request again is the same job, not a second import.
    let again = c
        .import_template(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, job.id);
    let mut different = request.clone();
    different.source_url = http.url("other.img");
    let err = c.import_template(different).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // The same import with other boot-file checksums is a different spec.
    let mut other_sum = request.clone();
    other_sum.kernel_sha256 = "00".repeat(32);
    let err = c.import_template(other_sum).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // The download counts image, kernel and initramfs, from the job's first state on.
    let all = 64 * MIB + 300_000 + 200_000;
    assert_eq!(job.bytes_total, all);
    let seen = watch_to_end(&mut c, &job.id).await;
    let last = seen.last().unwrap();
    assert_eq!(phase(last), ImportPhase::Completed, "{}", last.error);
    assert_eq!(last.bytes_done, all);
    assert_eq!(last.bytes_total, all);
    assert!(seen.iter().all(|j| j.bytes_done <= j.bytes_total));
    assert!(seen
        .iter()
        .filter(|j| phase(j) == ImportPhase::Downloading)
        .all(|j| j.bytes_total == all));

    let t = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        TemplateState::try_from(t.state).unwrap(),
        TemplateState::Ready
    );
    assert_eq!(t.size_bytes, 64 * MIB);
    assert_eq!(common::sha256_file(&t.path), sha);
    assert!(!t.kernel_path.is_empty() && !t.initramfs_path.is_empty());
    assert_eq!(t.cmdline, "console=ttyS0 root=/dev/vda");
    assert!(fx.dataset_exists(&format!("mvirt/templates/{tid}@base")));

    // Clones: O(1) (nothing copied), same bytes, boot files carried along, optionally larger.
    let v1 = new_id();
    let clone = c
        .clone_from_template(proto::CloneFromTemplateRequest {
            template_id: tid.clone(),
            volume_id: v1.clone(),
            name: "web-1".into(),
            size_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clone.size_bytes, 64 * MIB);
    assert_eq!(clone.template_id, tid);
    assert!(
        clone.used_bytes < MIB,
        "a clone shares its data: used {}",
        clone.used_bytes
    );
    assert_eq!(common::sha256_file(&clone.path), sha);
    assert!(clone.kernel_path.contains(&v1), "{}", clone.kernel_path);
    assert_eq!(
        std::fs::read(&clone.kernel_path).unwrap(),
        vec![0xabu8; 300_000]
    );
    assert_eq!(
        std::fs::read(&clone.initramfs_path).unwrap(),
        vec![0xcdu8; 200_000]
    );
    assert_eq!(clone.cmdline, "console=ttyS0 root=/dev/vda");

    let v2 = new_id();
    let big = c
        .clone_from_template(proto::CloneFromTemplateRequest {
            template_id: tid.clone(),
            volume_id: v2.clone(),
            name: "web-2".into(),
            size_bytes: 128 * MIB,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::fs::metadata(&big.path).unwrap().len(), 128 * MIB);
    assert_eq!(sha256_prefix(&big.path, 64 * MIB), sha);
    // Writing to a clone leaves the template alone.
    std::fs::write(&big.path, b"overwritten").unwrap();
    assert_eq!(common::sha256_file(&t.path), sha);

    let err = c
        .clone_from_template(proto::CloneFromTemplateRequest {
            template_id: tid.clone(),
            volume_id: new_id(),
            name: "too-small".into(),
            size_bytes: 32 * MIB,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A template with clones is not deleted; the answer says how many depend on it.
    let t = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.clone_count, 2);
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

    for id in [v1, v2] {
        c.delete_volume(proto::DeleteVolumeRequest { id, force: false })
            .await
            .unwrap();
    }
    let deleted = c
        .delete_template(proto::DeleteTemplateRequest {
            id: tid.clone(),
            detach_clones: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.dependent_clones, 0);
    assert!(!fx.dataset_exists(&format!("mvirt/templates/{tid}")));
    let jobs = c
        .list_import_jobs(proto::ListImportJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jobs.jobs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_and_compressed_sources_are_detected_converted_and_equal_the_original() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    let raw = fx.import_dir.join("base.raw");
    common::make_disk_image(&raw, 8 * MIB, 11);
    let sha = common::sha256_file(&raw);
    let qcow2 = fx.import_dir.join("base.qcow2");
    common::raw_to_qcow2(&raw, &qcow2);
    common::run("xz", &["-0", "-k", "-T1", raw.to_str().unwrap()]);
    common::run("zstd", &["-q", "-k", qcow2.to_str().unwrap()]);
    common::run("gzip", &["-1", "-k", raw.to_str().unwrap()]);

    let cases = [
        (
            format!("file://{}", qcow2.display()),
            "base.qcow2",
            ImageFormat::Qcow2,
        ),
        (http.url("base.raw.xz"), "base.raw.xz", ImageFormat::Raw),
        (
            http.url("base.qcow2.zst"),
            "base.qcow2.zst",
            ImageFormat::Qcow2,
        ),
        (
            format!("file://{}", fx.import_dir.join("base.raw.gz").display()),
            "base.raw.gz",
            ImageFormat::Raw,
        ),
    ];
    for (i, (url, file, detected)) in cases.iter().enumerate() {
        let tid = new_id();
        // The checksum is that of the downloaded (compressed) bytes.
        let mut request = import_request(&tid, &format!("t{i}"), url);
        request.sha256 = common::sha256_file(fx.import_dir.join(file));
        let job = c.import_template(request).await.unwrap().into_inner();
        assert_eq!(job.detected_format, *detected as i32, "{url}");
        let seen = watch_to_end(&mut c, &job.id).await;
        let last = seen.last().unwrap();
        assert_eq!(phase(last), ImportPhase::Completed, "{url}: {}", last.error);
        if *detected == ImageFormat::Qcow2 {
            let converting = seen.iter().any(|j| phase(j) == ImportPhase::Converting);
            let finalizing = seen.iter().any(|j| phase(j) == ImportPhase::Finalizing);
            assert!(converting || finalizing, "{url}: {seen:?}");
        }
        let t = c
            .get_template(proto::GetTemplateRequest { id: tid.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.size_bytes, 8 * MIB, "{url}");
        assert_eq!(common::sha256_file(&t.path), sha, "{url}");
        // The staging file is gone: the template holds the raw image only.
        let files: Vec<_> = std::fs::read_dir(std::path::Path::new(&t.path).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, ["disk.raw"], "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_fails_the_job_and_leaves_nothing_behind() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let image = fx.import_dir.join("disk.img");
    common::make_disk_image(&image, 16 * MIB, 3);
    let url = format!("file://{}", image.display());
    let tid = new_id();
    let mut request = import_request(&tid, "sums", &url);
    request.sha256 = "00".repeat(32);
    let job = c
        .import_template(request.clone())
        .await
        .unwrap()
        .into_inner();
    let last = watch_to_end(&mut c, &job.id).await.pop().unwrap();
    assert_eq!(phase(&last), ImportPhase::Failed);
    assert!(last.error.contains("checksum mismatch"), "{}", last.error);
    let err = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!fx.dataset_exists(&format!("mvirt/templates/{tid}")));
    // The job keeps its reason.
    let stored = c
        .get_import_job(proto::GetImportJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&stored), ImportPhase::Failed);

    // Retrying the same id with the right checksum works.
    request.sha256 = common::sha256_file(&image).to_uppercase();
    import_ok(&mut c, request).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_checksum_mismatch_fails_the_import_naming_the_kernel() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    let image = fx.import_dir.join("disk.img");
    common::make_disk_image(&image, 8 * MIB, 5);
    std::fs::write(
        fx.import_dir.join("vmlinuz"),
        vec![0x11u8; 3 * MIB as usize],
    )
    .unwrap();
    std::fs::write(fx.import_dir.join("initrd"), vec![0x22u8; 1_000_000]).unwrap();
    let kernel_sha = common::sha256_file(fx.import_dir.join("vmlinuz"));
    let initrd_sha = common::sha256_file(fx.import_dir.join("initrd"));
    let tid = new_id();
    let mut request = import_request(&tid, "boot-sums", &http.url("disk.img"));
    request.sha256 = common::sha256_file(&image);
    request.kernel_url = http.url("vmlinuz");
    request.initramfs_url = http.url("initrd");
    let wrong = "ab".repeat(32);
    request.kernel_sha256 = wrong.clone();
    request.initramfs_sha256 = initrd_sha.clone();
    let job = c
        .import_template(request.clone())
        .await
        .unwrap()
        .into_inner();
    let last = watch_to_end(&mut c, &job.id).await.pop().unwrap();
    assert_eq!(phase(&last), ImportPhase::Failed);
    assert!(
        last.error.contains(&format!(
            "kernel checksum mismatch: expected sha256 {wrong}, the downloaded kernel has {kernel_sha}"
        )),
        "{}",
        last.error
    );
    let err = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!fx.dataset_exists(&format!("mvirt/templates/{tid}")));

    // A wrong initramfs checksum names the initramfs.
    request.kernel_sha256 = kernel_sha.clone();
    request.initramfs_sha256 = "cd".repeat(32);
    let job = c
        .import_template(request.clone())
        .await
        .unwrap()
        .into_inner();
    let last = watch_to_end(&mut c, &job.id).await.pop().unwrap();
    assert_eq!(phase(&last), ImportPhase::Failed);
    assert!(
        last.error.contains("initramfs checksum mismatch"),
        "{}",
        last.error
    );

    // Bad checksums and a checksum without its file are refused before anything starts.
    let mut bad = request.clone();
    bad.kernel_sha256 = "xyz".into();
    let err = c.import_template(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kernel_sha256"), "{}", err.message());
    let mut orphan_sum = request.clone();
    orphan_sum.initramfs_url = String::new();
    let err = c.import_template(orphan_sum).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("initramfs_url"), "{}", err.message());

    // With the right checksums the same id imports, and the kernel is the file served.
    request.initramfs_sha256 = initrd_sha;
    let done = import_ok(&mut c, request).await;
    assert_eq!(done.bytes_total, 8 * MIB + 3 * MIB + 1_000_000);
    let t = c
        .get_template(proto::GetTemplateRequest { id: tid })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(common::sha256_file(&t.kernel_path), kernel_sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_during_the_download_removes_the_partial_template() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    common::make_disk_image(&fx.import_dir.join("big.img"), 64 * MIB, 5);
    let tid = new_id();
    let job = c
        .import_template(import_request(&tid, "stalled", &http.url("stall/big.img")))
        .await
        .unwrap()
        .into_inner();
    // The first MiB arrives, then the server stalls: the job is in the middle of its download.
    mvirt_testsupport::process::wait_until_async(
        "the download to start",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            let id = job.id.clone();
            async move {
                let j = c
                    .get_import_job(proto::GetImportJobRequest { job_id: id })
                    .await
                    .unwrap()
                    .into_inner();
                (phase(&j) == ImportPhase::Downloading && j.bytes_done >= MIB).then_some(())
            }
        },
    )
    .await;
    assert!(fx.dataset_exists(&format!("mvirt/templates/{tid}")));
    let t = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        TemplateState::try_from(t.state).unwrap(),
        TemplateState::Importing
    );
    let err = c
        .delete_template(proto::DeleteTemplateRequest {
            id: tid.clone(),
            detach_clones: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A watcher sees the download in progress, then the cancellation.
    let mut watch = c
        .watch_import(proto::WatchImportRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(phase(&first), ImportPhase::Downloading);
    assert!(
        first.bytes_done >= MIB && first.bytes_total == 64 * MIB,
        "{first:?}"
    );

    let cancelled = c
        .cancel_import_job(proto::CancelImportJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&cancelled), ImportPhase::Cancelled);
    assert!(!fx.dataset_exists(&format!("mvirt/templates/{tid}")));
    let err = c
        .get_template(proto::GetTemplateRequest { id: tid })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut rest = Vec::new();
    while let Some(item) = watch.next().await {
        rest.push(item.unwrap());
    }
    assert_eq!(phase(rest.last().unwrap()), ImportPhase::Cancelled);
    // Watching a finished job yields its final state once.
    let seen = watch_to_end(&mut c, &job.id).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(phase(&seen[0]), ImportPhase::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_are_refused_with_clear_codes_and_leave_nothing_behind() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    std::fs::write(
        fx.import_dir.join("notes.txt"),
        "this is not a disk\n".repeat(100),
    )
    .unwrap();
    let closed = format!(
        "http://127.0.0.1:{}/x.img",
        mvirt_testsupport::net::free_port()
    );
    let outside = tempfile::NamedTempFile::new().unwrap();
    let outside_url = format!("file://{}", outside.path().display());
    let missing_url = format!("file://{}", fx.import_dir.join("missing.img").display());
    let text_url = format!("file://{}", fx.import_dir.join("notes.txt").display());
    // A qcow2 naming a backing file (here a harmless one; it could name any host file).
    let backing = fx.import_dir.join("backing.raw");
    common::make_disk_image(&backing, MIB, 2);
    let overlay = fx.import_dir.join("overlay.qcow2");
    common::run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            backing.to_str().unwrap(),
            "-F",
            "raw",
            overlay.to_str().unwrap(),
        ],
    );
    let cases: Vec<(String, Code, &str)> = vec![
        (
            format!("file://{}", overlay.display()),
            Code::InvalidArgument,
            "backing file",
        ),
        (
            "ftp://example.org/disk.img".into(),
            Code::InvalidArgument,
            "scheme",
        ),
        (
            outside_url,
            Code::InvalidArgument,
            "outside the import directory",
        ),
        (missing_url, Code::NotFound, "cannot be opened"),
        (http.url("missing.img"), Code::InvalidArgument, "404"),
        (closed, Code::Unavailable, "cannot reach"),
        (
            text_url.clone(),
            Code::InvalidArgument,
            "not a recognised disk image",
        ),
    ];
    for (url, code, text) in cases {
        let err = c
            .import_template(import_request(&new_id(), "bad", &url))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{url}: {}", err.message());
        assert!(err.message().contains(text), "{url}: {}", err.message());
    }
    let mut bad_sum = import_request(&new_id(), "bad", &text_url);
    bad_sum.sha256 = "xyz".into();
    assert_eq!(
        c.import_template(bad_sum).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let bad_id = import_request("not-a-uuid", "bad", &text_url);
    assert_eq!(
        c.import_template(bad_id).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Forced raw: accepted at first, then refused because it is not whole sectors.
    let mut forced = import_request(&new_id(), "forced", &text_url);
    forced.format = ImageFormat::Raw as i32;
    let job = c.import_template(forced).await.unwrap().into_inner();
    let last = watch_to_end(&mut c, &job.id).await.pop().unwrap();
    assert_eq!(phase(&last), ImportPhase::Failed);
    assert!(last.error.contains("512"), "{}", last.error);

    let err = c
        .clone_from_template(proto::CloneFromTemplateRequest {
            template_id: new_id(),
            volume_id: new_id(),
            name: "orphan".into(),
            size_bytes: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let templates = c
        .list_templates(proto::ListTemplatesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(templates.templates.is_empty());
    let children = common::run(
        "zfs",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-r",
            &fx.pool.dataset("mvirt/templates"),
        ],
    );
    assert_eq!(children.lines().count(), 1, "{children}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_promoted_to_a_template_is_independent_of_its_volume() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let vid = new_id();
    let v = c
        .create_volume(proto::CreateVolumeRequest {
            id: vid.clone(),
            name: "golden".into(),
            size_bytes: 16 * MIB,
        })
        .await
        .unwrap()
        .into_inner();
    std::fs::write(&v.path, vec![0x5au8; 16 * MIB as usize]).unwrap();
    let sid = new_id();
    c.create_snapshot(proto::CreateSnapshotRequest {
        volume_id: vid.clone(),
        id: sid.clone(),
        name: "ready".into(),
    })
    .await
    .unwrap();
    let tid = new_id();
    let promote = proto::PromoteSnapshotToTemplateRequest {
        volume_id: vid.clone(),
        snapshot_id: sid.clone(),
        template_id: tid.clone(),
        name: "golden-image".into(),
    };
    let t = c
        .promote_snapshot_to_template(promote.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        TemplateState::try_from(t.state).unwrap(),
        TemplateState::Ready
    );
    assert_eq!(t.size_bytes, 16 * MIB);
    // Idempotent.
    c.promote_snapshot_to_template(promote).await.unwrap();

    // The volume goes away; the template and its clones stay.
    c.delete_volume(proto::DeleteVolumeRequest {
        id: vid,
        force: false,
    })
    .await
    .unwrap();
    let clone = c
        .clone_from_template(proto::CloneFromTemplateRequest {
            template_id: tid.clone(),
            volume_id: new_id(),
            name: "from-golden".into(),
            size_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        std::fs::read(&clone.path).unwrap(),
        vec![0x5au8; 16 * MIB as usize]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_import_streams_growing_byte_counts_and_a_rate_until_completion() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    common::make_disk_image(&fx.import_dir.join("slow.img"), 16 * MIB, 13);
    let job = c
        .import_template(import_request(
            &new_id(),
            "slow",
            &http.url("slow/slow.img"),
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = watch_to_end(&mut c, &job.id).await;
    let downloading: Vec<_> = seen
        .iter()
        .filter(|j| phase(j) == ImportPhase::Downloading)
        .collect();
    assert!(
        downloading.len() >= 3,
        "expected several progress updates: {seen:?}"
    );
    assert!(downloading
        .windows(2)
        .all(|w| w[0].bytes_done <= w[1].bytes_done));
    assert!(downloading
        .iter()
        .any(|j| j.bytes_done > MIB && j.bytes_done < 16 * MIB));
    assert!(downloading.iter().any(|j| j.rate_bytes_per_sec > 0));
    assert!(downloading.iter().all(|j| j.bytes_total == 16 * MIB));
    let last = seen.last().unwrap();
    assert_eq!(phase(last), ImportPhase::Completed, "{}", last.error);
    assert_eq!(last.bytes_done, 16 * MIB);
}
