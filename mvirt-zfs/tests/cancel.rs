//! Cancelling an import in each phase it goes through: the download (also of a compressed
//! source, with its decompressor running, and of the kernel after the image), the qcow2
//! conversion (staged download and in place, checksum computed alongside), and finalizing.
//! Every cancel ends CANCELLED with no dataset, no template and no child process left.
//!
//! Each phase is held long enough to be seen through `WatchImport` by the inputs, never by hooks
//! in the daemon: a source the test's HTTP server stalls, a qcow2 with hundreds of MiB of
//! incompressible data, and for the sub-second finalize phase, its `zfs snapshot` child stopped
//! with SIGSTOP by the test as soon as it appears.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{import_request, new_id, phase, Client, Fixture, HttpServer};
use mvirt_testsupport::process::wait_until;
use mvirt_zfs::proto::{self, ImportPhase};
use tokio_stream::StreamExt;
use tonic::Code;

const MIB: u64 = 1 << 20;

/// Children of this process (the daemon runs in it): pid, argv, and whether it is a zombie.
fn children() -> Vec<(i32, Vec<String>, bool)> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids.into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            Some((pid, argv, zombie))
        })
        .collect()
}

fn running(program: &str) -> Vec<i32> {
    children()
        .into_iter()
        .filter(|(_, argv, zombie)| !zombie && argv.first().is_some_and(|a| a.ends_with(program)))
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Waits until no child `program` is left (not even a zombie: killed and reaped).
fn assert_no_child(program: &str) {
    wait_until(
        &format!("no {program} child left"),
        Duration::from_secs(15),
        || {
            children()
                .iter()
                .all(|(_, argv, _)| !argv.first().is_some_and(|a| a.ends_with(program)))
                .then_some(())
        },
    );
}

/// Follows `WatchImport` until `reached` holds, then cancels; checks the job ends CANCELLED and
/// nothing of the template is left.
async fn cancel_when(
    fx: &Fixture,
    c: &mut Client,
    job: &proto::ImportJob,
    what: &str,
    mut reached: impl FnMut(&proto::ImportJob) -> bool,
) -> proto::ImportJob {
    let seen = tokio::time::timeout(
        Duration::from_secs(120),
        watch_until(c, &job.id, |j| {
            assert!(
                !matches!(
                    phase(j),
                    ImportPhase::Completed | ImportPhase::Failed | ImportPhase::Cancelled
                ),
                "the import ended before {what}: {j:?}"
            );
            reached(j)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("no {what} within 120 s"));
    let cancelled = c
        .cancel_import_job(proto::CancelImportJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        phase(&cancelled),
        ImportPhase::Cancelled,
        "{what}: {cancelled:?}"
    );
    assert_eq!(cancelled.error, "cancelled");
    let tid = &job.template_id;
    assert!(
        !fx.dataset_exists(&format!("mvirt/templates/{tid}")),
        "{what}: dataset left"
    );
    let err = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let stored = c
        .get_import_job(proto::GetImportJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&stored), ImportPhase::Cancelled);
    seen
}

/// Follows `WatchImport` until `reached` holds for the latest state (re-checked every 50 ms
/// too, as it may also depend on things outside the job) or the job ends; returns that state.
async fn watch_until(
    c: &mut Client,
    job_id: &str,
    mut reached: impl FnMut(&proto::ImportJob) -> bool,
) -> proto::ImportJob {
    let mut watch = c
        .watch_import(proto::WatchImportRequest {
            job_id: job_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = watch.next().await.unwrap().unwrap();
    let mut ended = false;
    loop {
        if reached(&last) || ended {
            return last;
        }
        tokio::select! {
            item = watch.next(), if !ended => match item {
                Some(state) => last = state.unwrap(),
                None => ended = true,
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// A raw image of `size` bytes of incompressible data (MBR signature first), written in pieces.
fn random_image(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; MIB as usize];
    let mut x = seed | 1;
    for i in 0..size / MIB {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        if i == 0 {
            block[510] = 0x55;
            block[511] = 0xaa;
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_a_compressed_source_is_downloaded_and_decompressed() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    let raw = fx.import_dir.join("disk.raw");
    random_image(&raw, 16 * MIB, 3);
    common::run("xz", &["-0", "-T1", raw.to_str().unwrap()]);
    let job = c
        .import_template(import_request(
            &new_id(),
            "xz",
            &http.url("stall/disk.raw.xz"),
        ))
        .await
        .unwrap()
        .into_inner();
    // The first MiB of the .xz arrived and xz is decompressing it; then the source stalls.
    cancel_when(&fx, &mut c, &job, "the download with xz running", |j| {
        phase(j) == ImportPhase::Downloading && j.bytes_done >= MIB && !running("xz").is_empty()
    })
    .await;
    assert_no_child("xz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_the_kernel_is_fetched_after_the_image() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    let image = fx.import_dir.join("disk.img");
    common::make_disk_image(&image, 8 * MIB, 4);
    std::fs::write(fx.import_dir.join("vmlinuz"), vec![0x5au8; 8 << 20]).unwrap();
    let mut request = import_request(&new_id(), "kernel", &http.url("disk.img"));
    request.sha256 = common::sha256_file(&image);
    request.kernel_url = http.url("stall/vmlinuz");
    let job = c.import_template(request).await.unwrap().into_inner();
    // The image is complete (and its checksum checked); the kernel download is stalled after
    // its first MiB, which counts after the image's bytes.
    assert_eq!(job.bytes_total, 16 * MIB);
    cancel_when(&fx, &mut c, &job, "the kernel fetch", |j| {
        phase(j) == ImportPhase::Downloading
            && j.bytes_done == 9 * MIB
            && http.requested("stall/vmlinuz")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_qemu_img_converts_a_staged_download_or_a_local_file() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let http = HttpServer::start(&fx.import_dir).await;
    // Incompressible data, so that the conversion takes seconds even on an idle machine.
    let raw = fx.dirs.path().join("big.raw");
    random_image(&raw, 384 * MIB, 9);
    let qcow2 = fx.import_dir.join("big.qcow2");
    common::raw_to_qcow2(&raw, &qcow2);
    std::fs::remove_file(&raw).unwrap();
    let sha = common::sha256_file(&qcow2);

    for (name, url) in [
        ("staged", http.url("big.qcow2")),
        ("in-place", format!("file://{}", qcow2.display())),
    ] {
        let mut request = import_request(&new_id(), name, &url);
        request.sha256 = sha.clone();
        let job = c.import_template(request).await.unwrap().into_inner();
        let seen = cancel_when(&fx, &mut c, &job, "the conversion", |j| {
            phase(j) == ImportPhase::Converting
                && j.bytes_total == 384 * MIB
                && !running("qemu-img").is_empty()
        })
        .await;
        assert!(seen.bytes_done < seen.bytes_total, "{name}: {seen:?}");
        assert_no_child("qemu-img");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_finalizing() {
    let fx = Fixture::start().await;
    let mut c = fx.client();
    let image = fx.import_dir.join("disk.img");
    common::make_disk_image(&image, 8 * MIB, 6);
    let url = format!("file://{}", image.display());
    // The finalize phase is one `zfs snapshot` (tens of ms): stop that child as soon as it
    // appears so the phase lasts until the cancel. A run where it finished before it was caught
    // completes instead; then try again with a new template.
    for attempt in 0..10 {
        let stopper = std::thread::spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                for (pid, argv, zombie) in children() {
                    let snapshot = argv.first().is_some_and(|a| a.ends_with("zfs"))
                        && argv.get(1).is_some_and(|a| a == "snapshot")
                        && argv.get(2).is_some_and(|a| a.ends_with("@base"));
                    if snapshot && !zombie {
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
        let tid = new_id();
        let job = c
            .import_template(import_request(&tid, &format!("fin{attempt}"), &url))
            .await
            .unwrap()
            .into_inner();
        let stopped = tokio::task::spawn_blocking(move || stopper.join().unwrap())
            .await
            .unwrap()
            .expect("no zfs snapshot child seen within 60 s");
        let state = watch_until(&mut c, &job.id, |j| {
            matches!(
                phase(j),
                ImportPhase::Finalizing | ImportPhase::Completed | ImportPhase::Failed
            )
        })
        .await;
        if phase(&state) == ImportPhase::Completed {
            // The snapshot had finished before it was stopped.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(stopped),
                nix::sys::signal::Signal::SIGCONT,
            );
            c.delete_template(proto::DeleteTemplateRequest {
                id: tid,
                detach_clones: false,
            })
            .await
            .unwrap();
            continue;
        }
        eprintln!("finalize phase held on attempt {}", attempt + 1);
        cancel_when(&fx, &mut c, &job, "finalizing", |j| {
            phase(j) == ImportPhase::Finalizing
        })
        .await;
        assert_no_child("zfs");
        // The stopped snapshot was killed, and the pool still answers normally.
        let t = new_id();
        common::import_ok(&mut c, import_request(&t, "after", &url)).await;
        return;
    }
    panic!("the finalize phase was never caught in 10 attempts");
}
