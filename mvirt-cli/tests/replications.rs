//! `mvirt replication` against a real single-member mvirt-api started in-process: create (names
//! resolved to ids), list, show (the object, and in table mode each volume's replication to each
//! target as the VM's node reported it), the refusals with their exit codes, delete.

mod common;

use std::time::Duration;

use common::*;
use mvirt_api::proto;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_create_list_show_refuse_and_delete() {
    let api = start_api().await;
    let hv1 = api.register_node("hv1", "", "").await;
    api.json(&[
        "template",
        "import",
        "deb",
        "--source",
        "http://127.0.0.1:1/deb.raw",
        "--no-wait",
    ])
    .await;
    api.json(&["network", "create", "lan", "--ipv4", "10.1.0.0/24"])
        .await;
    let vm = api
        .json(&[
            "vm",
            "create",
            "web",
            "--cpus",
            "1",
            "--memory",
            "1G",
            "--template",
            "deb",
            "--disk-size",
            "5G",
            "--network",
            "lan",
        ])
        .await;
    let vm_id = id_of(&vm);
    let volume_id = vm["spec"]["volume_ids"][0].as_str().unwrap().to_string();
    // The only node: the VM is placed there; the partner registers afterwards.
    let http = api.http();
    mvirt_testsupport::process::wait_until_async("vm placed", Duration::from_secs(20), || async {
        let v: Value = http
            .get(format!("{}/v1/vms/{vm_id}", api.url))
            .bearer_auth(&api.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["node_id"] == hv1.as_str()).then_some(())
    })
    .await;
    let hv2 = api.register_node("hv2", "", "").await;

    let created = api
        .json(&[
            "replication",
            "create",
            "dr",
            "--vm",
            "web",
            "--target",
            "hv2",
            "--interval",
            "60",
            "--keep",
            "2",
        ])
        .await;
    let id = id_of(&created);
    assert_eq!(created["spec"]["vm_id"], vm_id.as_str());
    assert_eq!(created["spec"]["targets"], serde_json::json!([hv2]));
    assert_eq!(created["spec"]["interval_secs"], 60);
    assert_eq!(created["spec"]["keep"], 2);
    assert_eq!(names(&api.json(&["replication", "list"]).await), ["dr"]);

    // Refusals: the VM's own node (400 → exit 1), the same VM and target again (409 → 4),
    // an unknown node (404 → 3), a bad interval (400 → 1).
    api.fails(
        &[
            "replication",
            "create",
            "own",
            "--vm",
            "web",
            "--target",
            "hv1",
        ],
        1,
        "own node",
    )
    .await;
    api.fails(
        &[
            "replication",
            "create",
            "again",
            "--vm",
            "web",
            "--target",
            &hv2,
        ],
        4,
        "already replicates",
    )
    .await;
    api.fails(
        &[
            "replication",
            "create",
            "nosuch",
            "--vm",
            "web",
            "--target",
            "hv9",
        ],
        3,
        "not found",
    )
    .await;
    api.fails(
        &[
            "replication",
            "create",
            "fast",
            "--vm",
            "web",
            "--target",
            "hv2",
            "--interval",
            "1",
        ],
        1,
        "interval_secs",
    )
    .await;

    // The VM's node reports the replication; show prints it.
    api.report(
        &hv1,
        proto::ResourceStatus {
            kind: proto::ResourceKind::Replication as i32,
            id: id.clone(),
            phase: proto::Phase::Ready as i32,
            replicas: vec![proto::ReplicaReport {
                volume_id: volume_id.clone(),
                target_node_id: hv2.clone(),
                last_snapshot_id: "0190a5b0-0000-7000-8000-0000000000aa".into(),
                last_replicated_at: 1_796_000_000,
                last_bytes: 3 << 20,
                last_error: String::new(),
                lag_secs: 4,
                last_incremental: true,
            }],
            ..Default::default()
        },
    )
    .await;
    let shown = api.json(&["replication", "show", "dr"]).await;
    assert_eq!(shown["status"]["phase"], "ready");
    let replica = &shown["status"]["replicas"][0];
    assert_eq!(replica["target_node_id"], hv2.as_str());
    assert_eq!(replica["lag_secs"], 4);
    assert_eq!(replica["last_replicated_at"], "2026-11-30T00:53:20Z");
    let table = api.mvirt(&["replication", "show", "dr"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    // After the object, the replicas table: one row per volume and target.
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains("3MiB"))
        .unwrap_or_else(|| panic!("no replica row:\n{}", table.stdout));
    assert!(
        row.contains("2026-11-30T00:53:20Z") && row.contains("true"),
        "{row}"
    );
    assert!(table.stdout.contains("lag"), "{}", table.stdout);

    assert_eq!(api.mvirt(&["replication", "delete", "dr"]).await.code, 0);
    assert_eq!(
        api.json(&["replication", "list"]).await,
        serde_json::json!([])
    );
}
