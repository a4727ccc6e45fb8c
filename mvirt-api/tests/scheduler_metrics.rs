//! The scheduler's metrics on a real in-process member, read from its `/metrics` listener:
//! `mvirt_scheduler_pending_vms` and `mvirt_scheduler_pending_pods` count what waits for a node
//! (here: a VM and a pod whose node selector matches no node), and
//! `mvirt_scheduler_placement_delay_seconds{kind}` observes each placement, VMs and pods apart,
//! at least as long as the object waited. One test in this binary: the metrics registry is the
//! process's, so no other member may change the counts under it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mvirt_api::proto::{self, node_service_client::NodeServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::transport::Channel;

const GIB: u64 = 1 << 30;

async fn register(c: &mut NodeServiceClient<Channel>, token: &str, name: &str, zone: &str) {
    let mut request = tonic::Request::new(proto::RegisterRequest {
        name: name.into(),
        address: "127.0.0.1".into(),
        labels: [("zone".to_string(), zone.to_string())]
            .into_iter()
            .collect(),
        capacity: Some(proto::NodeCapacity {
            vcpus: 8,
            memory_bytes: 16 * GIB,
            storage_bytes: 100 * GIB,
        }),
        agent_version: "test".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.register(request).await.expect("register");
}

/// The value of the sample `series` (name and labels exactly as exposed) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Scrapes `/metrics` until every `(series, ok)` holds; returns that scrape.
async fn scrape_until(url: &str, what: &str, wanted: &[(&str, &dyn Fn(f64) -> bool)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(url)
            .await
            .expect("scrape")
            .text()
            .await
            .expect("scrape body");
        if wanted
            .iter()
            .all(|(series, ok)| sample(&text, series).is_some_and(ok))
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen after 20 s in\n{}",
            text.lines()
                .filter(|l| l.contains("mvirt_scheduler"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn placed(m: &Member, path: &str) -> Value {
    mvirt_testsupport::process::wait_until_async(
        &format!("{path} placed"),
        Duration::from_secs(20),
        || async {
            let (s, v) = m.get(path).await;
            (s == StatusCode::OK && v["node_id"].is_string()).then_some(v)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_vms_and_pods_are_counted_and_their_placement_delay_observed_by_kind() {
    let m = start_member().await;
    let shutdown = mvirt_common::Shutdown::new();
    let server = mvirt_common::metrics::serve(
        mvirt_api::metrics::DAEMON,
        "127.0.0.1:0".parse().unwrap(),
        shutdown.clone(),
    )
    .await
    .expect("metrics listener");
    let url = format!("http://{}/metrics", server.addr);
    let mut c = m.node_client(None).await;
    register(&mut c, &m.token, "earth-1", "earth").await;

    // A VM that fits is placed at once: one VM placement observed, no pod's.
    let vm = m
        .create(
            "/v1/vms",
            json!({"name": "here", "spec": {"vcpus": 1, "memory_bytes": GIB}}),
        )
        .await;
    placed(&m, &format!("/v1/vms/{}", vm["id"].as_str().unwrap())).await;
    let text = scrape_until(
        &url,
        "one VM placement, nothing pending",
        &[
            (
                "mvirt_scheduler_placement_delay_seconds_count{kind=\"vm\"}",
                &|v| v == 1.0,
            ),
            ("mvirt_scheduler_pending_vms", &|v| v == 0.0),
            ("mvirt_scheduler_pending_pods", &|v| v == 0.0),
        ],
    )
    .await;
    assert_eq!(
        sample(
            &text,
            "mvirt_scheduler_placement_delay_seconds_count{kind=\"pod\"}"
        ),
        None,
        "no pod was placed yet"
    );
    let vm_delay = sample(
        &text,
        "mvirt_scheduler_placement_delay_seconds_sum{kind=\"vm\"}",
    )
    .unwrap();
    assert!((0.0..10.0).contains(&vm_delay), "{vm_delay}");

    // A pod and a VM for a zone no node is in: both pending, counted apart.
    let pod = m
        .create(
            "/v1/pods",
            json!({"name": "picky", "spec": {"vcpus": 1, "memory_bytes": GIB / 4,
                "containers": [{"name": "web", "image": "127.0.0.1:5000/httpd:1"}],
                "node_selector": "zone=mars"}}),
        )
        .await;
    let pod_created = Instant::now();
    let far = m
        .create(
            "/v1/vms",
            json!({"name": "far", "spec": {"vcpus": 1, "memory_bytes": GIB,
                "node_selector": "zone=mars"}}),
        )
        .await;
    scrape_until(
        &url,
        "one pending pod and one pending VM",
        &[
            ("mvirt_scheduler_pending_pods", &|v| v == 1.0),
            ("mvirt_scheduler_pending_vms", &|v| v == 1.0),
        ],
    )
    .await;
    let (_, waiting) = m
        .get(&format!("/v1/pods/{}", pod["id"].as_str().unwrap()))
        .await;
    assert!(waiting["node_id"].is_null(), "{waiting}");

    // A node in that zone: both are placed, the pod's placement is observed under kind="pod"
    // with at least the time it waited.
    tokio::time::sleep(Duration::from_millis(300)).await;
    register(&mut c, &m.token, "mars-1", "mars").await;
    let waited = pod_created.elapsed().as_secs_f64();
    placed(&m, &format!("/v1/pods/{}", pod["id"].as_str().unwrap())).await;
    placed(&m, &format!("/v1/vms/{}", far["id"].as_str().unwrap())).await;
    let text = scrape_until(
        &url,
        "the pod's placement observed, nothing pending",
        &[
            (
                "mvirt_scheduler_placement_delay_seconds_count{kind=\"pod\"}",
                &|v| v == 1.0,
            ),
            (
                "mvirt_scheduler_placement_delay_seconds_count{kind=\"vm\"}",
                &|v| v == 2.0,
            ),
            ("mvirt_scheduler_pending_pods", &|v| v == 0.0),
            ("mvirt_scheduler_pending_vms", &|v| v == 0.0),
        ],
    )
    .await;
    let pod_delay = sample(
        &text,
        "mvirt_scheduler_placement_delay_seconds_sum{kind=\"pod\"}",
    )
    .unwrap();
    assert!(
        pod_delay >= waited - 0.05 && pod_delay < waited + 20.0,
        "the pod waited {waited} s before its node existed; observed {pod_delay} s"
    );
    // The placed pod's bucket series exist (a histogram, not a bare sum).
    assert!(
        text.lines().any(
            |l| l.starts_with("mvirt_scheduler_placement_delay_seconds_bucket{")
                && l.contains("kind=\"pod\"")
                && l.contains("le=\"+Inf\"")
        ),
        "no +Inf bucket for pods"
    );

    shutdown.trigger();
}
