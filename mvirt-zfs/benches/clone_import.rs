//! Benchmarks of mvirt-zfs against baselines, run side by side on one zfs-fuse pool:
//!
//! 1. clone time of a 1 GiB and an 8 GiB template (`CloneFromTemplate`, median of N);
//!    an O(1) clone gives a ratio near 1.
//! 2. import of a raw image over HTTP against `curl` writing the same file into the same pool;
//! 3. import of a qcow2 image against `qemu-img convert` of the same file into the same pool.
//!
//! Prints the numbers and the ratios (`cargo bench -p mvirt-zfs --bench clone_import`). Nothing
//! is asserted: results go to the crate README.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{import_ok, import_request, new_id, Daemon, HttpServer};
use mvirt_testsupport::zfs::TestPool;
use mvirt_zfs::proto;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const CLONES: usize = 41;

/// A sparse image of `size` with 1 MiB of data every 64 MiB (real blocks across the whole
/// range, little disk). Starts with an MBR signature.
fn sparse_image(path: &Path, size: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut block = vec![0u8; MIB as usize];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for offset in (0..size).step_by((64 * MIB) as usize) {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        if offset == 0 {
            block[510] = 0x55;
            block[511] = 0xaa;
        }
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pool = TestPool::create_with_size(32 * GIB);
    let dirs = tempfile::tempdir().unwrap();
    let import_dir = dirs.path().join("import");
    std::fs::create_dir_all(&import_dir).unwrap();
    let config = common::config_for(&pool, &dirs.path().join("data"), &import_dir);
    let daemon = Daemon::start(config).await;
    let mut c = daemon.client.clone();
    let http = HttpServer::start(&import_dir).await;

    // 1. Clone time, 1 GiB vs 8 GiB, clones of the two interleaved so that noise from other
    // load on the machine hits both alike.
    let mut templates = Vec::new();
    for size in [GIB, 8 * GIB] {
        let file = import_dir.join(format!("t{size}.img"));
        sparse_image(&file, size);
        let tid = new_id();
        let url = format!("file://{}", file.display());
        import_ok(
            &mut c,
            import_request(&tid, &format!("t{}", size / GIB), &url),
        )
        .await;
        std::fs::remove_file(&file).unwrap();
        templates.push((size, tid));
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    for i in 0..CLONES {
        for (slot, (size, tid)) in templates.iter().enumerate() {
            let start = Instant::now();
            c.clone_from_template(proto::CloneFromTemplateRequest {
                template_id: tid.clone(),
                volume_id: new_id(),
                name: format!("c{}-{i}", size / GIB),
                size_bytes: 0,
            })
            .await
            .unwrap();
            times[slot].push(start.elapsed());
        }
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    println!(
        "clone 1 GiB template: median {:?} over {CLONES}",
        medians[0]
    );
    println!(
        "clone 8 GiB template: median {:?} over {CLONES}",
        medians[1]
    );
    println!(
        "clone ratio 8 GiB / 1 GiB: {:.2} (target <= 1.2)",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );

    // 2. and 3.: the same 1 GiB image (random data in every other MiB, zeros between).
    let raw = import_dir.join("bench.raw");
    common::make_disk_image(&raw, GIB, 42);
    let qcow2 = import_dir.join("bench.qcow2");
    common::run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ],
    );
    // The baselines write into the same parent dataset (same compression) as the imports.
    let scratch = pool.dataset("mvirt/scratch");
    common::run("zfs", &["create", &scratch]);
    let scratch_dir = pool.mountpoint.join("mvirt/scratch");
    // Both sides read the sources from the page cache.
    for file in [&raw, &qcow2] {
        std::fs::read(file).unwrap();
    }

    // Two rounds, alternating baseline and import; the best of each. A baseline's time
    // includes `sync` of its output file: an import is durable when it completes (@base).
    let curl_out = scratch_dir.join("curl.raw");
    let conv_out = scratch_dir.join("conv.raw");
    let (mut curl, mut import_http, mut convert, mut import_qcow2) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..2 {
        let start = Instant::now();
        common::run(
            "curl",
            &[
                "-sSf",
                "-o",
                curl_out.to_str().unwrap(),
                &http.url("bench.raw"),
            ],
        );
        common::run("sync", &[curl_out.to_str().unwrap()]);
        curl.push(start.elapsed());
        std::fs::remove_file(&curl_out).unwrap();

        let start = Instant::now();
        import_ok(
            &mut c,
            import_request(
                &new_id(),
                &format!("http-raw-{round}"),
                &http.url("bench.raw"),
            ),
        )
        .await;
        import_http.push(start.elapsed());

        let start = Instant::now();
        common::run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                qcow2.to_str().unwrap(),
                conv_out.to_str().unwrap(),
            ],
        );
        common::run("sync", &[conv_out.to_str().unwrap()]);
        convert.push(start.elapsed());
        std::fs::remove_file(&conv_out).unwrap();

        let start = Instant::now();
        import_ok(
            &mut c,
            import_request(
                &new_id(),
                &format!("file-qcow2-{round}"),
                &format!("file://{}", qcow2.display()),
            ),
        )
        .await;
        import_qcow2.push(start.elapsed());
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (curl, import_http, convert, import_qcow2) = (
        best(&curl),
        best(&import_http),
        best(&convert),
        best(&import_qcow2),
    );
    println!(
        "raw over HTTP, 1 GiB: curl+sync {curl:?}, import {import_http:?}; import throughput = {:.2}x curl (target >= 0.9)",
        curl.as_secs_f64() / import_http.as_secs_f64()
    );
    println!(
        "qcow2 from file, 1 GiB: qemu-img convert+sync {convert:?}, import {import_qcow2:?}; import throughput = {:.2}x qemu-img (target >= 0.9)",
        convert.as_secs_f64() / import_qcow2.as_secs_f64()
    );
    daemon.stop().await;
}
