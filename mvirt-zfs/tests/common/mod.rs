//! Fixtures for mvirt-zfs integration tests: a daemon on its own zfs-fuse pool, a tiny HTTP
//! server for import sources, and disk images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mvirt_common::listen::{ListenAddr, Listener, SocketOptions};
use mvirt_common::Shutdown;
use mvirt_testsupport::zfs::TestPool;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
use mvirt_zfs::proto::{self, ImportPhase};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub type Client = ZfsServiceClient<Channel>;

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// mvirt-zfs served in-process on a pool of its own.
pub struct Daemon {
    pub client: Client,
    /// The daemon's unix socket (in its data dir).
    pub addr: ListenAddr,
    pub config: mvirt_zfs::Config,
    shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    pub async fn start(config: mvirt_zfs::Config) -> Self {
        mvirt_common::telemetry::init_for_tests();
        let shutdown = Shutdown::new();
        let daemon = mvirt_zfs::Daemon::prepare(&config, &shutdown)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "mvirt-zfs did not start: {}",
                    mvirt_common::error::error_chain(&e)
                )
            });
        let listener = Listener::bind(
            &ListenAddr::Unix(config.data_dir.join("zfs.sock")),
            &SocketOptions::default(),
        )
        .await
        .unwrap();
        let addr = listener.local_addr();
        let serve_shutdown = shutdown.clone();
        let task = tokio::spawn(async move {
            daemon.serve(listener, serve_shutdown).await.unwrap();
        });
        let client = ZfsServiceClient::connect(addr.endpoint()).await.unwrap();
        Self {
            client,
            addr,
            config,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops serving (running imports are interrupted) and waits for the server to end.
    pub async fn stop(mut self) -> mvirt_zfs::Config {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        self.config.clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A pool, directories and a daemon on them.
pub struct Fixture {
    pub daemon: Daemon,
    pub import_dir: PathBuf,
    pub data_dir: PathBuf,
    pub pool: TestPool,
    pub dirs: tempfile::TempDir,
}

impl Fixture {
    pub async fn start() -> Self {
        let pool = TestPool::create();
        let dirs = tempfile::tempdir().unwrap();
        let import_dir = dirs.path().join("import");
        let data_dir = dirs.path().join("data");
        std::fs::create_dir_all(&import_dir).unwrap();
        let config = config_for(&pool, &data_dir, &import_dir);
        let daemon = Daemon::start(config).await;
        Self {
            daemon,
            import_dir,
            data_dir,
            pool,
            dirs,
        }
    }

    pub fn client(&self) -> Client {
        self.daemon.client.clone()
    }

    /// Whether a dataset exists in the pool (asked of `zfs` directly, not the daemon).
    pub fn dataset_exists(&self, relative: &str) -> bool {
        Command::new("zfs")
            .args([
                "get",
                "-H",
                "-o",
                "value",
                "type",
                &self.pool.dataset(relative),
            ])
            .output()
            .unwrap()
            .status
            .success()
    }
}

pub fn config_for(pool: &TestPool, data_dir: &Path, import_dir: &Path) -> mvirt_zfs::Config {
    mvirt_zfs::Config {
        pool: pool.name.clone(),
        parent_dataset: "mvirt".into(),
        data_dir: data_dir.to_path_buf(),
        import_dir: Some(import_dir.to_path_buf()),
        log_endpoint: String::new(),
        compression: "on".into(),
        backup_dir: data_dir.join("backups"),
    }
}

/// Runs a program, panicking with its stderr on failure. zfs-fuse answers "dataset is busy"
/// now and then right after a dataset was used: that is retried for a few seconds.
/// Converts a raw image into a qcow2 with `qemu-img`.
pub fn raw_to_qcow2(raw: &Path, qcow2: &Path) {
    run(
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
}

pub fn run(program: &str, args: &[&str]) -> String {
    let mut out = Command::new(program).args(args).output().unwrap();
    for _ in 0..40 {
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("busy") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        out = Command::new(program).args(args).output().unwrap();
    }
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw disk image: MBR boot signature, pseudo-random data in every other MiB, zeros between.
pub fn make_disk_image(path: &Path, size: u64, seed: u64) {
    let mut data = vec![0u8; size as usize];
    let mut x = seed | 1;
    for (i, block) in data.chunks_mut(1 << 20).enumerate() {
        if i.is_multiple_of(2) {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let bytes = x.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
    }
    data[510] = 0x55;
    data[511] = 0xaa;
    std::fs::write(path, &data).unwrap();
}

/// SHA-256 of a file, read in 1 MiB pieces (volumes are files of many MiB).
pub fn sha256_file(path: impl AsRef<Path>) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Writes `len` bytes of a pattern derived from `seed` at `offset` of `path` and syncs.
pub fn write_pattern(path: impl AsRef<Path>, offset: u64, len: usize, seed: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut x = seed | 1;
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
}

/// Follows `WatchImport` to the end; returns every state seen.
pub async fn watch_to_end(client: &mut Client, job_id: &str) -> Vec<proto::ImportJob> {
    let mut stream = client
        .watch_import(proto::WatchImportRequest {
            job_id: job_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("import did not finish within 120 s");
        match next {
            Some(Ok(job)) => seen.push(job),
            Some(Err(status)) => panic!("watch failed: {status}"),
            None => break,
        }
    }
    seen
}

pub fn phase(job: &proto::ImportJob) -> ImportPhase {
    ImportPhase::try_from(job.phase).unwrap()
}

/// Imports and waits; panics unless the job completes.
pub async fn import_ok(
    client: &mut Client,
    request: proto::ImportTemplateRequest,
) -> proto::ImportJob {
    let job = client.import_template(request).await.unwrap().into_inner();
    let seen = watch_to_end(client, &job.id).await;
    let last = seen.last().unwrap().clone();
    assert_eq!(
        phase(&last),
        ImportPhase::Completed,
        "import failed: {}",
        last.error
    );
    last
}

pub fn import_request(id: &str, name: &str, url: &str) -> proto::ImportTemplateRequest {
    proto::ImportTemplateRequest {
        id: id.to_string(),
        name: name.to_string(),
        source_url: url.to_string(),
        ..Default::default()
    }
}

#[allow(unused_imports)] // not every test binary serves imports over HTTP
pub use mvirt_testsupport::http::HttpServer;
