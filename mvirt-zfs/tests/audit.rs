//! Every state change reaches a real mvirt-log as an AUDIT entry tagged with the object's id.

mod common;

use std::time::Duration;

use common::new_id;
use mvirt_log::proto::log_service_client::LogServiceClient;
use mvirt_log::proto::{query_response, LogLevel, QueryRequest};
use mvirt_testsupport::process::wait_until_async;
use mvirt_testsupport::zfs::TestPool;
use mvirt_zfs::proto;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_changes_are_audited_in_mvirt_log_with_the_volume_id() {
    let dirs = tempfile::tempdir().unwrap();
    let shutdown = mvirt_common::Shutdown::new();
    let log = mvirt_log::server::BoundServer::bind(mvirt_log::server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dirs.path().join("log"),
        retention: Default::default(),
    })
    .await
    .unwrap();
    let log_addr = log.local_addr();
    tokio::spawn(log.serve(shutdown.clone()));

    let pool = TestPool::create();
    let import_dir = dirs.path().join("import");
    std::fs::create_dir_all(&import_dir).unwrap();
    let mut config = common::config_for(&pool, &dirs.path().join("zfs"), &import_dir);
    config.log_endpoint = format!("http://{log_addr}");
    let daemon = common::Daemon::start(config).await;
    let mut c = daemon.client.clone();

    let vid = new_id();
    c.create_volume(proto::CreateVolumeRequest {
        id: vid.clone(),
        name: "audited".into(),
        size_bytes: 1 << 20,
    })
    .await
    .unwrap();
    c.resize_volume(proto::ResizeVolumeRequest {
        id: vid.clone(),
        size_bytes: 2 << 20,
    })
    .await
    .unwrap();
    c.delete_volume(proto::DeleteVolumeRequest {
        id: vid.clone(),
        force: false,
    })
    .await
    .unwrap();

    let messages = wait_until_async(
        "three AUDIT entries for the volume",
        Duration::from_secs(30),
        || {
            let vid = vid.clone();
            async move {
                let mut log = LogServiceClient::connect(format!("http://{log_addr}"))
                    .await
                    .ok()?;
                let mut stream = log
                    .query(QueryRequest {
                        object_id: vid,
                        levels: vec![LogLevel::Audit as i32],
                        order: 1,
                        limit: 100,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut messages = Vec::new();
                while let Some(item) = stream.next().await {
                    if let Some(query_response::Item::Entry(entry)) = item.unwrap().item {
                        assert_eq!(entry.component, "mvirt-zfs");
                        messages.push(entry.message);
                    }
                }
                (messages.len() >= 3).then_some(messages)
            }
        },
    )
    .await;
    assert!(
        messages[0].contains("created volume audited"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("resized volume audited"),
        "{messages:?}"
    );
    assert!(
        messages[2].contains("deleted volume audited"),
        "{messages:?}"
    );
    shutdown.trigger();
}
