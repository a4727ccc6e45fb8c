//! The web dashboard (`mvirt-ui`, a built single-page app) served at `/` next to the REST API.
//!
//! Every path under `/v1` goes to the API router unchanged (its auth, envelope and fallback
//! stay as they are); every other path is a static file from `--ui-dir`, and a path that names
//! no file gets `index.html` so the app's own routes (`/vms/<id>`) survive a reload. The files
//! carry no secrets, so they need no token: the app asks for one and sends it to `/v1` itself.
//! Hashed assets (`/assets/*`) are cached for a year; `index.html` is revalidated every time, so
//! a new build is picked up at once. A directory without `index.html` answers 404 with a
//! sentence saying where the UI was expected, instead of a blank page.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

/// The default `--ui-dir`, where packages install the built UI.
pub const DEFAULT_UI_DIR: &str = "/usr/share/mvirt/ui";

/// Content-Security-Policy of the UI's pages: scripts and styles only from this origin (xterm.js
/// sets inline styles), API calls and the console WebSocket only to this origin, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// `api` (the `/v1` router) plus the UI from `dir` for every other path.
pub fn with_ui(api: Router, dir: Option<&Path>) -> Router {
    let dir: Option<Arc<Path>> = dir.map(Arc::from);
    // One dispatch on the path (axum does not nest a `Router` with a fallback of its own). An API
    // request costs two reference-count increments here, nothing more.
    Router::new().fallback(move |req: Request| {
        let api = api.clone();
        let dir = dir.clone();
        async move {
            let path = req.uri().path();
            if path == "/v1" || path.starts_with("/v1/") {
                match api.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(e) => match e {},
                }
            } else if let Some(dir) = dir {
                serve(&dir, req).await
            } else {
                missing("no --ui-dir is configured")
            }
        }
    })
}

async fn serve(dir: &Path, req: Request) -> Response {
    let index = dir.join("index.html");
    if !index.is_file() {
        return missing(&format!(
            "the web UI is not installed: {} does not exist (build it with `npm ci && npm run build` in mvirt-ui/ and pass --ui-dir mvirt-ui/dist)",
            index.display()
        ));
    }
    let immutable = req.uri().path().starts_with("/assets/");
    let files = ServeDir::new(dir).fallback(ServeFile::new(&index));
    let mut resp = match files.oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    };
    let cache = if immutable && resp.status() == StatusCode::OK {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn missing(message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        format!("mvirt-api: {message}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    fn api() -> Router {
        Router::new()
            .route("/v1/health", get(|| async { "api" }))
            .fallback(|| async { (StatusCode::NOT_FOUND, "api-fallback") })
    }

    async fn call(router: &Router, path: &str) -> (StatusCode, String, Option<String>) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let cache = resp
            .headers()
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned(), cache)
    }

    #[tokio::test]
    async fn api_paths_reach_the_api_and_everything_else_is_the_ui_with_index_for_app_routes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<html>index</html>").unwrap();
        std::fs::create_dir(dir.path().join("assets")).unwrap();
        std::fs::write(dir.path().join("assets/app-1234.js"), "console.log(1)").unwrap();
        let router = with_ui(api(), Some(dir.path()));

        assert_eq!(call(&router, "/v1/health").await.1, "api");
        let (status, body, _) = call(&router, "/v1/nope").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "api-fallback")
        );

        let (status, body, cache) = call(&router, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "<html>index</html>");
        assert_eq!(cache.as_deref(), Some("no-cache"));
        let (status, body, _) = call(&router, "/vms/some-id").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "<html>index</html>")
        );
        let (status, body, cache) = call(&router, "/assets/app-1234.js").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "console.log(1)"));
        assert_eq!(
            cache.as_deref(),
            Some("public, max-age=31536000, immutable")
        );
        // No way out of the directory.
        let (_, body, _) = call(&router, "/../../etc/passwd").await;
        assert!(!body.contains("root:"), "{body}");
    }

    #[tokio::test]
    async fn a_missing_ui_says_where_it_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let router = with_ui(api(), Some(dir.path()));
        let (status, body, _) = call(&router, "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("index.html does not exist"), "{body}");
        let (status, body, _) = call(&with_ui(api(), None), "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no --ui-dir"), "{body}");
        assert_eq!(call(&router, "/v1/health").await.1, "api");
    }
}
