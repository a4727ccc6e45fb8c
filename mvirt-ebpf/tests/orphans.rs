//! TAPs that belong to no NIC (left by a crash) are removed at start-up and on every
//! convergence, each with an AUDIT entry in a real mvirt-log; devices that do not follow
//! mvirt-ebpf's naming, TAPs marked as another mvirt-ebpf's, and unlabelled TAPs with a digest
//! name (possibly another daemon's, between creating and labelling them) are never touched.

mod common;

use std::time::Duration;

use common::*;
use mvirt_log::proto::log_service_client::LogServiceClient;
use mvirt_log::server::{BoundServer, Config as LogConfig};

/// A TAP created with `ip tuntap add`, as a crashed daemon (or a person) leaves it; removed on
/// drop if it is still there.
struct HandMadeTap(String);

impl HandMadeTap {
    fn create(name: &str, alias: Option<&str>) -> Self {
        mvirt_testsupport::netns::ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        if let Some(alias) = alias {
            mvirt_testsupport::netns::ip(&["link", "set", "dev", name, "alias", alias]);
        }
        Self(name.to_string())
    }

    fn exists(&self) -> bool {
        mvirt_ebpf::ip::link_exists(&self.0)
    }
}

impl Drop for HandMadeTap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

/// The AUDIT messages of mvirt-ebpf in the log that contain `needle`.
async fn audited(log: &str, needle: &str) -> Vec<String> {
    let mut client = LogServiceClient::connect(log.to_string()).await.unwrap();
    let mut stream = client
        .query(mvirt_log::proto::QueryRequest {
            component: "mvirt-ebpf".into(),
            levels: vec![mvirt_log::proto::LogLevel::Audit as i32],
            contains: needle.into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        if let Some(mvirt_log::proto::query_response::Item::Entry(e)) = item.item {
            messages.push(e.message);
        }
    }
    messages
}

async fn wait_audited(log: &str, message: &str) {
    mvirt_testsupport::process::wait_until_async(
        &format!("audit entry {message:?}"),
        Duration::from_secs(10),
        || async move {
            let found = audited(log, message).await;
            (found.iter().any(|m| m == message)).then_some(())
        },
    )
    .await;
}

/// An old-style TAP name: `mv` + the first 12 hex digits of an id.
fn id_prefix_name(id: &str) -> String {
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    format!("mv{hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_with_our_naming_that_no_nic_owns_are_removed_and_audited_and_foreign_devices_stay() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = BoundServer::bind(LogConfig {
        listen: mvirt_common::listen::ListenAddr::Unix(log_dir.path().join("log.sock")),
        data_dir: log_dir.path().to_path_buf(),
        retention: Default::default(),
    })
    .await
    .unwrap();
    let log_endpoint = log.endpoint();
    let log_shutdown = mvirt_common::Shutdown::new();
    tokio::spawn(log.serve(log_shutdown.clone()));

    let endpoint = log_endpoint.clone();
    let mut h = Harness::start_configured(move |c| c.log_endpoint = endpoint).await;
    let net = h.network("10.62.0.0/24", false).await;
    let owned = h.nic(&net, mac(0x75), "10.62.0.2", &[]).await;

    // While the daemon is down: a TAP for a NIC id that never reached the store (digest name), one
    // with the old id-prefix name, and devices that must survive.
    h.stop().await;
    let ours = format!("mvirt-ebpf:{}", h.config.pin_dir.display());
    let orphan = HandMadeTap::create(&mvirt_common::names::tap_name(&new_id()), Some(&ours));
    // Our naming without a label: another daemon may be between creating and labelling it.
    let unlabelled = HandMadeTap::create(&mvirt_common::names::tap_name(&new_id()), None);
    let old_style = HandMadeTap::create(&id_prefix_name(&new_id()), None);
    // One character short of our naming.
    let near_miss = HandMadeTap::create(&id_prefix_name(&new_id())[..13], None);
    let foreign = HandMadeTap::create(&mvirt_testsupport::netns::unique_name("orph"), None);
    // Our naming, but marked by another mvirt-ebpf on this host (its pin dir).
    let other_daemons = HandMadeTap::create(
        &mvirt_common::names::tap_name(&new_id()),
        Some("mvirt-ebpf:/sys/fs/bpf/another-mvirt-ebpf"),
    );

    h.restart().await;
    assert!(!orphan.exists(), "{} removed at start-up", orphan.0);
    assert!(!old_style.exists(), "{} removed at start-up", old_style.0);
    assert!(near_miss.exists(), "{} is not ours", near_miss.0);
    assert!(foreign.exists(), "{} is not ours", foreign.0);
    assert!(
        unlabelled.exists(),
        "{} may be another daemon's",
        unlabelled.0
    );
    assert!(
        other_daemons.exists(),
        "{} is another daemon's",
        other_daemons.0
    );
    assert!(
        mvirt_ebpf::ip::link_exists(&owned.tap_name),
        "the NIC's own TAP stays"
    );
    // The daemon's own TAPs carry its mark.
    let alias =
        std::fs::read_to_string(format!("/sys/class/net/{}/ifalias", owned.tap_name)).unwrap();
    assert_eq!(
        alias.trim_end(),
        format!("mvirt-ebpf:{}", h.config.pin_dir.display())
    );
    for name in [&orphan.0, &old_style.0] {
        wait_audited(
            &log_endpoint,
            &format!("removed orphan TAP {name} (no NIC owns it)"),
        )
        .await;
    }

    // While it runs: an orphan appears (a crash of a second writer, a person); the next change
    // to the node's networking converges and removes it. Deleting a NIC is not an orphan.
    let late = HandMadeTap::create(&mvirt_common::names::tap_name(&new_id()), Some(&ours));
    let second = h.nic(&net, mac(0x76), "10.62.0.3", &[]).await;
    assert!(!late.exists(), "{} removed on converge", late.0);
    wait_audited(
        &log_endpoint,
        &format!("removed orphan TAP {} (no NIC owns it)", late.0),
    )
    .await;
    h.client
        .delete_nic(mvirt_ebpf::proto::DeleteNicRequest {
            id: second.id.clone(),
        })
        .await
        .unwrap();
    assert!(!mvirt_ebpf::ip::link_exists(&second.tap_name));
    wait_audited(
        &log_endpoint,
        &format!("deleted NIC {} (TAP {})", second.id, second.tap_name),
    )
    .await;
    assert!(
        audited(&log_endpoint, &second.tap_name)
            .await
            .iter()
            .all(|m| !m.contains("orphan")),
        "a deleted NIC's TAP is not reported as an orphan"
    );
    assert!(near_miss.exists() && foreign.exists() && other_daemons.exists());
    assert!(mvirt_ebpf::ip::link_exists(&owned.tap_name));

    h.stop().await;
    log_shutdown.trigger();
}
