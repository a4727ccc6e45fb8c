//! Restarting the real `mvirt-zfs` binary: a SIGKILL in the middle of an import leaves no job
//! "running" forever and no half-written template.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{import_request, new_id, phase, HttpServer};
use mvirt_testsupport::process::{wait_until_async, ChildGuard};
use mvirt_testsupport::zfs::TestPool;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;
use mvirt_zfs::proto::{self, ImportPhase};
use tonic::Code;

fn start_daemon(
    pool: &TestPool,
    data_dir: &std::path::Path,
    import_dir: &std::path::Path,
    socket: &std::path::Path,
) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvirt-zfs"));
    cmd.arg("--listen")
        .arg(socket)
        .args(["--pool", &pool.name, "--parent-dataset", "mvirt"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--import-dir")
        .arg(import_dir)
        .args(["--log-endpoint", "", "--log-format", "text"]);
    ChildGuard::spawn("mvirt-zfs", &mut cmd)
}

async fn connect(socket: &std::path::Path) -> common::Client {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_during_an_import_marks_the_job_failed_and_removes_the_dataset_on_restart()
{
    let pool = TestPool::create();
    let dirs = tempfile::tempdir().unwrap();
    let data_dir = dirs.path().join("data");
    let import_dir = dirs.path().join("import");
    std::fs::create_dir_all(&import_dir).unwrap();
    common::make_disk_image(&import_dir.join("big.img"), 64 * 1024 * 1024, 9);
    let http = HttpServer::start(&import_dir).await;
    // SIGKILLed and restarted on the same socket: the stale socket file is replaced.
    let socket = dirs.path().join("zfs.sock");

    let mut daemon = start_daemon(&pool, &data_dir, &import_dir, &socket);
    let mut c = connect(&socket).await;
    let tid = new_id();
    let job = c
        .import_template(import_request(
            &tid,
            "interrupted",
            &http.url("stall/big.img"),
        ))
        .await
        .unwrap()
        .into_inner();
    wait_until_async(
        "the import to be downloading",
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
                (phase(&j) == ImportPhase::Downloading && j.bytes_done > 0).then_some(())
            }
        },
    )
    .await;
    // Progress is persisted while the job runs.
    wait_until_async("progress to be persisted", Duration::from_secs(30), || {
        let path = data_dir.join("mvirt-zfs.sqlite");
        let id = job.id.clone();
        async move {
            let out = Command::new("sqlite3")
                .arg(&path)
                .arg(format!(
                    "SELECT bytes_done FROM import_jobs WHERE id = '{id}'"
                ))
                .output()
                .ok()?;
            let done: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            (done > 0).then_some(())
        }
    })
    .await;
    let dataset = pool.dataset(&format!("mvirt/templates/{tid}"));
    assert!(common::run(
        "zfs",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-r",
            &pool.dataset("mvirt/templates")
        ]
    )
    .contains(&dataset));
    daemon.kill();

    let _daemon = start_daemon(&pool, &data_dir, &import_dir, &socket);
    let mut c = connect(&socket).await;
    let after = c
        .get_import_job(proto::GetImportJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&after), ImportPhase::Failed);
    assert!(after.error.contains("interrupted"), "{}", after.error);
    let err = c
        .get_template(proto::GetTemplateRequest { id: tid.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let children = common::run(
        "zfs",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-r",
            &pool.dataset("mvirt/templates"),
        ],
    );
    assert!(!children.contains(&dataset), "{children}");
    let report = c
        .check_drift(proto::CheckDriftRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(report.items.is_empty(), "{report:?}");

    // The same import can simply be started again.
    let again = c
        .import_template(import_request(&tid, "interrupted", &http.url("big.img")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.id, job.id);
    let last = common::watch_to_end(&mut c, &again.id).await.pop().unwrap();
    assert_eq!(phase(&last), ImportPhase::Completed, "{}", last.error);
}
