//! Benchmarks of mvirt-zfs against baselines, run side by side on one zfs-fuse pool:
//!
//! 1. clone time of a 1 GiB and an 8 GiB template (`CloneFromTemplate`); an O(1) clone gives a
//!    ratio near 1. Clones of the two sizes alternate (ABBA order) after a warm-up, so load from
//!    other work on the machine hits both alike; the ratio reported is the median of the ratios
//!    of neighbouring pairs (and, for reference, the ratio of the two medians).
//! 2. import of a raw image over HTTP against `curl` writing the same file into the same pool;
//! 3. import of a qcow2 image against `qemu-img convert` of the same file into the same pool.
//!
//! For 2 and 3, each repetition runs a baseline and its import back to back (alternating which
//! goes first), sources in the page cache, outputs removed in between so every run starts from
//! the same pool state; after a warm-up round the median of the paired throughput ratios is
//! reported. Baselines include `sync` of their output: an import is durable when it completes.
//!
//! Prints the numbers, ratios and the load average (`cargo bench -p mvirt-zfs --bench
//! clone_import`). Nothing is asserted: results go to the crate README.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use common::{import_ok, import_request, new_id, Daemon, HttpServer};
use mvirt_testsupport::zfs::TestPool;
use mvirt_zfs::proto;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const CLONES: usize = 60;

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

const CLONE_WARMUP: usize = 5;
const IMPORT_WARMUP: usize = 1;
const IMPORT_REPS: usize = 9;

async fn timed<F: std::future::Future<Output = ()>>(f: F) -> f64 {
    let start = Instant::now();
    f.await;
    start.elapsed().as_secs_f64()
}

async fn import_and_drop(c: &mut common::Client, url: &str, name: &str) -> f64 {
    let tid = new_id();
    let secs = timed(async {
        import_ok(c, import_request(&tid, name, url)).await;
    })
    .await;
    c.delete_template(proto::DeleteTemplateRequest {
        id: tid,
        detach_clones: false,
    })
    .await
    .unwrap();
    secs
}

/// Runs a baseline writing into a dataset of its own, created before and destroyed after the
/// timed part — the same clean-up an import gets (`DeleteTemplate`). Removing the file instead
/// would leave ZFS freeing its blocks in the background during whatever runs next.
fn baseline(pool: &TestPool, program: &str, args: &[&str], file: &str) -> f64 {
    let dataset = pool.dataset(&format!("mvirt/scratch/{}", new_id()));
    common::run("zfs", &["create", &dataset]);
    let output = pool
        .mountpoint
        .join(dataset.split_once('/').unwrap().1)
        .join(file);
    let output = output.to_str().unwrap();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "OUTPUT" { output } else { a })
        .collect();
    let start = Instant::now();
    common::run(program, &args);
    common::run("sync", &[output]);
    let secs = start.elapsed().as_secs_f64();
    common::run("zfs", &["destroy", "-r", &dataset]);
    secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("load average at start: {}", loadavg());
    let pool = TestPool::create_with_size(32 * GIB);
    let dirs = tempfile::tempdir().unwrap();
    let import_dir = dirs.path().join("import");
    std::fs::create_dir_all(&import_dir).unwrap();
    let config = common::config_for(&pool, &dirs.path().join("data"), &import_dir);
    let daemon = Daemon::start(config).await;
    let mut c = daemon.client.clone();
    let http = HttpServer::start(&import_dir).await;

    // 1. Clone time, 1 GiB vs 8 GiB.
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
    let mut times: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for i in 0..CLONE_WARMUP + CLONES {
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for slot in order {
            let (size, tid) = &templates[slot];
            let secs = timed(async {
                c.clone_from_template(proto::CloneFromTemplateRequest {
                    template_id: tid.clone(),
                    volume_id: new_id(),
                    name: format!("c{}-{i}", size / GIB),
                    size_bytes: 0,
                })
                .await
                .unwrap();
            })
            .await;
            if i >= CLONE_WARMUP {
                times[slot].push(secs);
            }
        }
    }
    let paired: Vec<f64> = times[1].iter().zip(&times[0]).map(|(b, a)| b / a).collect();
    let (small, big) = (median(times[0].clone()), median(times[1].clone()));
    println!(
        "clone 1 GiB template: median {:.1} ms over {CLONES}",
        small * 1e3
    );
    println!(
        "clone 8 GiB template: median {:.1} ms over {CLONES}",
        big * 1e3
    );
    println!(
        "clone ratio 8 GiB / 1 GiB: median of paired ratios {:.2}, ratio of medians {:.2} (target <= 1.2)",
        median(paired),
        big / small
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
    common::run("zfs", &["create", &pool.dataset("mvirt/scratch")]);
    // Both sides read the sources from the page cache.
    for file in [&raw, &qcow2] {
        std::fs::read(file).unwrap();
    }
    let raw_url = http.url("bench.raw");
    let qcow2_url = format!("file://{}", qcow2.display());
    let (mut http_ratios, mut qcow2_ratios) = (Vec::new(), Vec::new());
    let (mut curl, mut import_http, mut convert, mut import_qcow2) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..IMPORT_WARMUP + IMPORT_REPS {
        let curl_args = ["-sSf", "-o", "OUTPUT", raw_url.as_str()];
        let conv_args = [
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            qcow2.to_str().unwrap(),
            "OUTPUT",
        ];
        let (b1, i1, b2, i2);
        if rep % 2 == 0 {
            b1 = baseline(&pool, "curl", &curl_args, "curl.raw");
            i1 = import_and_drop(&mut c, &raw_url, &format!("http-{rep}")).await;
            b2 = baseline(&pool, "qemu-img", &conv_args, "conv.raw");
            i2 = import_and_drop(&mut c, &qcow2_url, &format!("qcow2-{rep}")).await;
        } else {
            i1 = import_and_drop(&mut c, &raw_url, &format!("http-{rep}")).await;
            b1 = baseline(&pool, "curl", &curl_args, "curl.raw");
            i2 = import_and_drop(&mut c, &qcow2_url, &format!("qcow2-{rep}")).await;
            b2 = baseline(&pool, "qemu-img", &conv_args, "conv.raw");
        }
        println!(
            "  rep {rep}{}: curl {b1:.2} s, import {i1:.2} s; qemu-img {b2:.2} s, import {i2:.2} s",
            if rep < IMPORT_WARMUP {
                " (warm-up)"
            } else {
                ""
            }
        );
        if rep >= IMPORT_WARMUP {
            curl.push(b1);
            import_http.push(i1);
            convert.push(b2);
            import_qcow2.push(i2);
            http_ratios.push(b1 / i1);
            qcow2_ratios.push(b2 / i2);
        }
    }
    println!(
        "raw over HTTP, 1 GiB: curl+sync median {:.2} s, import median {:.2} s; import throughput = {:.2}x curl (median of {IMPORT_REPS} paired ratios; target >= 0.9)",
        median(curl),
        median(import_http),
        median(http_ratios)
    );
    println!(
        "qcow2 from file, 1 GiB: qemu-img convert+sync median {:.2} s, import median {:.2} s; import throughput = {:.2}x qemu-img (median of {IMPORT_REPS} paired ratios; target >= 0.9)",
        median(convert),
        median(import_qcow2),
        median(qcow2_ratios)
    );
    println!("load average at end: {}", loadavg());
    daemon.stop().await;
}
