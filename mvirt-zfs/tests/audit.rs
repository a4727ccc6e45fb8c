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
        listen: mvirt_common::listen::ListenAddr::Unix(dirs.path().join("log.sock")),
        data_dir: dirs.path().join("log"),
        retention: Default::default(),
    })
    .await
    .unwrap();
    let log_endpoint = log.endpoint();
    tokio::spawn(log.serve(shutdown.clone()));

    let pool = TestPool::create();
    let import_dir = dirs.path().join("import");
    std::fs::create_dir_all(&import_dir).unwrap();
    let mut config = common::config_for(&pool, &dirs.path().join("zfs"), &import_dir);
    config.log_endpoint = log_endpoint.clone();
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

    let messages = audit_entries(&log_endpoint, &vid, 3).await;
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

    // Making a clone independent before its template is deleted is audited for the volume and
    // for the template.
    let image = import_dir.join("t.img");
    common::make_disk_image(&image, 4 << 20, 1);
    let tid = new_id();
    common::import_ok(
        &mut c,
        common::import_request(&tid, "audited-t", &format!("file://{}", image.display())),
    )
    .await;
    let cid = new_id();
    c.clone_from_template(proto::CloneFromTemplateRequest {
        template_id: tid.clone(),
        volume_id: cid.clone(),
        name: "audited-clone".into(),
        size_bytes: 0,
    })
    .await
    .unwrap();
    c.delete_template(proto::DeleteTemplateRequest {
        id: tid.clone(),
        detach_clones: true,
    })
    .await
    .unwrap();
    let messages = audit_entries(&log_endpoint, &cid, 2).await;
    assert!(
        messages[0].contains("cloned volume audited-clone"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("made volume audited-clone independent"),
        "{messages:?}"
    );
    let messages = audit_entries(&log_endpoint, &tid, 5).await;
    assert!(
        messages
            .last()
            .unwrap()
            .contains("deleted template audited-t after making 1 clone(s) independent"),
        "{messages:?}"
    );
    shutdown.trigger();
}

/// The AUDIT entries tagged with `object_id`, oldest first, once there are at least `min`.
async fn audit_entries(log_endpoint: &str, object_id: &str, min: usize) -> Vec<String> {
    wait_until_async(
        &format!("{min} AUDIT entries for {object_id}"),
        Duration::from_secs(30),
        || {
            let object_id = object_id.to_string();
            async move {
                let mut log = LogServiceClient::connect(log_endpoint.to_string())
                    .await
                    .ok()?;
                let mut stream = log
                    .query(QueryRequest {
                        object_id,
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
                (messages.len() >= min).then_some(messages)
            }
        },
    )
    .await
}
