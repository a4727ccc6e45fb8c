//! One trace id per request, carried by the work the request causes across processes.
//!
//! How an id travels (the whole walk is in mvirt-api's README, "Trace ids"):
//! 1. mvirt-api's REST layer takes the client's `X-Request-Id` when it is a sane token
//!    ([`is_valid`]) or mints one ([`new_id`]), echoes it in the response and runs the handler
//!    inside [`scope`].
//! 2. Whatever runs inside the scope sees it through [`current`]: the API stores it with the
//!    Raft command (and so in the changed object's `meta.trace_id`), and every audit entry
//!    written inside the scope carries it (mvirt-log's `AuditLogger` reads [`current`]).
//! 3. The node spec hands each resource's last trace id to the agent, which converges that
//!    resource inside [`scope`] and a tracing span with a `trace_id` field.
//! 4. gRPC clients built with [`Propagate`] send [`current`] as the `x-mvirt-trace-id`
//!    metadata; every daemon's server ([`crate::grpc::GrpcServer`]) wraps its services in
//!    [`Traced`], which reads it back, runs the call inside [`scope`] and a span
//!    `rpc{trace_id=…}`, so the daemon's log lines and audit entries carry the id too.
//!
//! The id lives in a tokio task-local: it follows `.await`s but not `tokio::spawn`; work moved
//! to another task takes it along with [`inherit`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::Instrument as _;

/// The REST request header (and response header) that carries the id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The gRPC metadata key that carries the id between processes.
pub const METADATA_KEY: &str = "x-mvirt-trace-id";
/// Longest id accepted from a client.
pub const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// Whether `id` is a sane trace id: 1 to [`MAX_LEN`] characters out of `A-Z a-z 0-9 . _ : -`
/// (it lands in headers, log lines, URLs and SQL parameters; nothing else is needed).
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh id: 32 lowercase hex digits, the milliseconds since the Unix epoch (48 bits) and
/// then 80 random bits. Ids minted later sort later, so the indexes that hold them (mvirt-log's
/// `logs_trace`) grow at their end instead of taking every insert at a random page.
pub fn new_id() -> String {
    use ring::rand::SecureRandom as _;
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    if ring::rand::SystemRandom::new()
        .fill(&mut bytes[6..])
        .is_err()
    {
        // The system RNG failing is no reason to fail a request: the time and a per-process
        // counter still identify it well enough.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[6..14].copy_from_slice(&n.to_be_bytes());
        bytes[14..].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// The client's id when it is valid, else a fresh one.
pub fn accept_or_new(offered: Option<&str>) -> String {
    match offered.map(str::trim) {
        Some(id) if is_valid(id) => id.to_string(),
        _ => new_id(),
    }
}

/// The trace id of the work running now, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.to_string()).ok()
}

/// Runs `future` with `id` as its trace id (a `None` or empty id runs it as it is).
pub async fn scope<F: Future>(id: Option<String>, future: F) -> F::Output {
    match id.filter(|id| !id.is_empty()) {
        Some(id) => CURRENT.scope(Arc::from(id), future).await,
        None => future.await,
    }
}

/// `future` with the current trace id (and tracing span), for `tokio::spawn`: the spawned task
/// carries on the work of the request that caused it.
pub fn inherit<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let id = current();
    scope(id, future).in_current_span()
}

/// A gRPC client interceptor that sends [`current`] as `x-mvirt-trace-id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Propagate;

impl tonic::service::Interceptor for Propagate {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = current().and_then(|id| id.parse().ok()) {
            request.metadata_mut().insert(METADATA_KEY, value);
        }
        Ok(request)
    }
}

/// The trace id a gRPC request carries, when it is valid.
pub fn from_headers(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_valid(id))
        .map(str::to_string)
}

/// A gRPC service whose calls run inside the caller's trace: a span `rpc{trace_id, method}` and
/// [`scope`]. Calls without `x-mvirt-trace-id` run as they are.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Traced<S> {
    pub fn new(inner: S) -> Self {
        Traced { inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Traced<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(id) = from_headers(request.headers()) else {
            return Box::pin(self.inner.call(request));
        };
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let span = tracing::info_span!("rpc", trace_id = %id, %method);
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(CURRENT.scope(Arc::from(id), future.instrument(span)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_accepted_and_others_replaced() {
        assert!(is_valid("req-1.a_b:c"));
        assert!(is_valid(&"a".repeat(MAX_LEN)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"a".repeat(MAX_LEN + 1)));
        assert!(!is_valid("has space"));
        assert!(!is_valid("new\nline"));
        assert!(!is_valid("ümlaut"));
        assert_eq!(accept_or_new(Some(" abc ")), "abc");
        let minted = accept_or_new(Some("bad id"));
        assert_eq!(minted.len(), 32);
        assert!(is_valid(&minted));
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn minted_ids_are_lowercase_hex_and_sort_by_time() {
        let first = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id();
        for id in [&first, &second] {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        assert!(first < second, "{first} then {second}");
        let millis = u64::from_str_radix(&second[..12], 16).unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        assert!(now.abs_diff(millis) < 60_000, "{millis} vs {now}");
    }

    #[tokio::test]
    async fn the_id_follows_awaits_and_spawns_that_inherit_it() {
        assert_eq!(current(), None);
        let seen = scope(Some("t-1".into()), async {
            tokio::task::yield_now().await;
            let here = current();
            let inherited = tokio::spawn(inherit(async { current() })).await.unwrap();
            let plain = tokio::spawn(async { current() }).await.unwrap();
            (here, inherited, plain)
        })
        .await;
        assert_eq!(
            seen,
            (Some("t-1".to_string()), Some("t-1".to_string()), None)
        );
        assert_eq!(scope(Some(String::new()), async { current() }).await, None);
    }

    #[tokio::test]
    async fn propagate_sends_the_current_id_as_metadata() {
        use tonic::service::Interceptor as _;
        let sent = scope(Some("t-2".into()), async {
            Propagate.call(tonic::Request::new(())).unwrap()
        })
        .await;
        assert_eq!(
            sent.metadata().get(METADATA_KEY).unwrap().to_str().unwrap(),
            "t-2"
        );
        let bare = Propagate.call(tonic::Request::new(())).unwrap();
        assert!(bare.metadata().get(METADATA_KEY).is_none());
    }

    #[tokio::test]
    async fn traced_runs_the_call_in_the_callers_trace() {
        use tower::ServiceExt as _;
        let service = Traced::new(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(current())
        }));
        let request = http::Request::builder()
            .uri("/mvirt.vmm.v1.VmService/CreateVm")
            .header(METADATA_KEY, "t-3")
            .body(())
            .unwrap();
        let seen = service.clone().oneshot(request).await.unwrap();
        assert_eq!(seen.as_deref(), Some("t-3"));
        let invalid = http::Request::builder()
            .header(METADATA_KEY, "not valid")
            .body(())
            .unwrap();
        assert_eq!(service.oneshot(invalid).await.unwrap(), None);
    }
}
