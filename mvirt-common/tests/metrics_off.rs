//! `--metrics-listen off` switches recording off for the whole process
//! (`mvirt_common::metrics::disable`). Its own test binary: the switch is process-wide.

use tower::ServiceExt as _;

const DAEMON: &str = "metrics-off-test";

async fn get(router: &axum::Router, path: &str) -> http::StatusCode {
    let request = http::Request::builder()
        .uri(path)
        .body(axum::body::Body::empty())
        .unwrap();
    router.clone().oneshot(request).await.unwrap().status()
}

fn counted(route: &str) -> f64 {
    mvirt_common::metrics::encode_text(DAEMON)
        .lines()
        .filter(|l| {
            l.starts_with("mvirt_http_requests_total{") && l.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn after_disable_requests_are_answered_but_no_longer_recorded() {
    let router = mvirt_common::metrics::http_layer(
        axum::Router::new().route("/v1/things/{id}", axum::routing::get(|| async { "ok" })),
        DAEMON,
    );
    assert!(mvirt_common::metrics::enabled());
    assert_eq!(get(&router, "/v1/things/a").await, http::StatusCode::OK);
    assert_eq!(get(&router, "/v1/things/b").await, http::StatusCode::OK);
    assert_eq!(counted("/v1/things/{id}"), 2.0);

    mvirt_common::metrics::disable();
    assert!(!mvirt_common::metrics::enabled());
    assert_eq!(get(&router, "/v1/things/c").await, http::StatusCode::OK);
    assert_eq!(
        get(&router, "/v1/nothing").await,
        http::StatusCode::NOT_FOUND
    );
    assert_eq!(counted("/v1/things/{id}"), 2.0, "recorded while off");
    assert_eq!(counted("unmatched"), 0.0, "recorded while off");
}
