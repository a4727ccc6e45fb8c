//! Prometheus metrics: one registry per daemon, the `/metrics` listener, and the metrics every
//! daemon gets for free (its gRPC methods; REST routes for the API).
//!
//! The registry and the text format are the `prometheus-client` crate's (OpenMetrics text,
//! which Prometheus scrapes natively). A daemon's metrics are registered into the registry
//! named after the daemon ([`registry`], keyed by its binary name such as `mvirt-vmm`), and
//! its `/metrics` listener ([`serve`]) encodes that registry only. In production each process
//! runs one daemon; tests that run several daemons in one process still get one `/metrics` per
//! daemon. A metric set is created once per process and registered on first use (see a crate's
//! `metrics.rs`), so two instances of a daemon in one test process share their counters.
//!
//! Names follow the Prometheus conventions: `mvirt_<subsystem>_<name>_<unit>`, counters end in
//! `_total` (the encoder appends it), durations are `_seconds` histograms, sizes `_bytes`.
//!
//! Flow: the daemon's `main.rs` parses `--metrics-listen` ([`MetricsListen`], default per
//! daemon, see [`crate::daemon::DaemonSpec::metrics_listen`]) → [`serve`] binds it before the
//! daemon starts serving → every scrape encodes the daemon's registry. gRPC calls are counted
//! by [`crate::grpc::GrpcServer::for_daemon`] (a [`GrpcMetrics`] wrapper around each service);
//! REST routes by [`http_layer`] (axum middleware: route template, method, status).
//!
//! `--metrics-listen off` switches metrics off for the whole process ([`disable`], called by
//! [`crate::daemon::DaemonSpec::start_metrics`]): nobody can scrape them, so nothing is recorded
//! either — the gRPC and REST layers pass calls straight through and a daemon's own recording
//! points ask [`enabled`] first. (Its cost with them on is measured by mvirt-api's
//! `control_plane` bench, `MVIRT_BENCH_METRICS=1`.)

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::Shutdown;

/// The `prometheus-client` crate, for daemons' own metric types (no dependency of their own).
pub use prometheus_client as prometheus;

/// The `Content-Type` of a scrape answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether this process records metrics (on unless [`disable`]d).
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Stops recording metrics in this process (`--metrics-listen off`): the gRPC and REST layers
/// pass calls through untouched, daemons' own recording points skip their work.
pub fn disable() {
    ENABLED.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// Label set of a metric family: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;
/// A histogram family whose histograms share one bucket layout.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Buckets for request and operation latencies: 0.5 ms to ~65 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 18)
}

/// Buckets for slow operations (VM starts, imports, convergence): 10 ms to ~10 min, doubling.
pub fn slow_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.0, 17)
}

/// A histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// A histogram with [`slow_buckets`].
pub fn slow_histogram() -> Histogram {
    Histogram::new(slow_buckets())
}

/// A histogram family with [`latency_buckets`].
pub fn latency_family() -> HistogramFamily {
    Family::new_with_constructor(latency_histogram)
}

/// A histogram family with [`slow_buckets`].
pub fn slow_family() -> HistogramFamily {
    Family::new_with_constructor(slow_histogram)
}

type Shared = Arc<Mutex<Registry>>;

static REGISTRIES: LazyLock<Mutex<HashMap<String, Shared>>> = LazyLock::new(Default::default);

fn shared(daemon: &str) -> Shared {
    let mut registries = REGISTRIES.lock().unwrap_or_else(|e| e.into_inner());
    registries.entry(daemon.to_string()).or_default().clone()
}

/// Registers metrics into `daemon`'s registry (created on first use).
pub fn register(daemon: &str, f: impl FnOnce(&mut Registry)) {
    let registry = shared(daemon);
    let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut registry);
}

/// The OpenMetrics text of `daemon`'s registry (what `/metrics` answers).
pub fn encode_text(daemon: &str) -> String {
    let registry = shared(daemon);
    let registry = registry.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

// ------------------------------------------------------------------ sampled at scrape time

/// Something read fresh on every scrape: returns `false` once what it reads is gone (a
/// stopped daemon instance), which removes it.
pub type Refresh =
    Arc<dyn Fn() -> Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync>;

static REFRESH: LazyLock<Mutex<HashMap<String, Vec<Refresh>>>> = LazyLock::new(Default::default);

/// How long one refresh may take before a scrape answers without it.
pub const REFRESH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `refresh` before every scrape of `daemon` (it updates gauges or a [`Sampled`] set from
/// the daemon's own state: counters kept elsewhere, such as the eBPF datapath's, or /proc).
/// Nothing is sampled while nobody scrapes.
pub fn on_scrape(daemon: &str, refresh: Refresh) {
    let mut all = REFRESH.lock().unwrap_or_else(|e| e.into_inner());
    all.entry(daemon.to_string()).or_default().push(refresh);
}

/// Runs `daemon`'s refreshers (each bounded by [`REFRESH_TIMEOUT`]); drops those whose source
/// is gone.
pub async fn refresh(daemon: &str) {
    let list: Vec<Refresh> = {
        let all = REFRESH.lock().unwrap_or_else(|e| e.into_inner());
        all.get(daemon).cloned().unwrap_or_default()
    };
    for r in list {
        let alive = match tokio::time::timeout(REFRESH_TIMEOUT, r()).await {
            Ok(alive) => alive,
            Err(_) => {
                tracing::warn!(
                    daemon,
                    "a metrics refresh took longer than {REFRESH_TIMEOUT:?}; skipped"
                );
                true
            }
        };
        if !alive {
            let mut all = REFRESH.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = all.get_mut(daemon) {
                v.retain(|x| !Arc::ptr_eq(x, &r));
            }
        }
    }
}

/// Whether a sampled family is a counter or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric family of a [`Sampled`] set: its samples as last read.
#[derive(Debug, Clone)]
pub struct SampledFamily {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: Kind,
    samples: Vec<(Labels, f64)>,
}

impl SampledFamily {
    /// Adds one sample (a counter's value must only grow while its labels live).
    pub fn add(&mut self, labels: Labels, value: f64) -> &mut Self {
        self.samples.push((labels, value));
        self
    }
}

/// A set of families built by one refresh.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    families: Vec<SampledFamily>,
}

impl Snapshot {
    /// The family `name` (created empty on first use; names without `_total` or the unit, which
    /// the encoder appends).
    pub fn family(
        &mut self,
        kind: Kind,
        name: &'static str,
        help: &'static str,
        unit: Option<Unit>,
    ) -> &mut SampledFamily {
        if let Some(i) = self.families.iter().position(|f| f.name == name) {
            return &mut self.families[i];
        }
        self.families.push(SampledFamily {
            name,
            help,
            unit,
            kind,
            samples: Vec::new(),
        });
        self.families.last_mut().expect("just pushed")
    }
}

/// Families whose values are read from elsewhere (the datapath's counters, /proc, a pool) and
/// replaced as a whole by a refresh; encoded as counters or gauges. Register it once with
/// `registry.register_collector(Box::new(sampled.clone()))`.
#[derive(Debug, Default, Clone)]
pub struct Sampled {
    inner: Arc<Mutex<Snapshot>>,
}

impl Sampled {
    /// Replaces every family with `snapshot`'s.
    pub fn replace(&self, snapshot: Snapshot) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshot = self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for family in &snapshot.families {
            let metric_type = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(
                family.name,
                family.help,
                family.unit.as_ref(),
                metric_type,
            )?;
            if let [(labels, value)] = family.samples.as_slice() {
                if labels.is_empty() {
                    // `name 42.0`, not `name{} 42.0`.
                    encode_value(family.kind, *value, metric)?;
                    continue;
                }
            }
            for (labels, value) in &family.samples {
                encode_value(family.kind, *value, metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

fn encode_value(
    kind: Kind,
    value: f64,
    sample: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(value).encode(sample),
        Kind::Gauge => ConstGauge::new(value).encode(sample),
    }
}

/// The kernel's clock ticks per second (`USER_HZ`: the unit of CPU times in `/proc`).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// `--metrics-listen`: a TCP address or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    Addr(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is neither a TCP host:port (e.g. 127.0.0.1:50061) nor \"off\"")]
pub struct ParseMetricsListenError(String);

impl FromStr for MetricsListen {
    type Err = ParseMetricsListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsListen::Off);
        }
        s.parse()
            .map(MetricsListen::Addr)
            .map_err(|_| ParseMetricsListenError(s.to_string()))
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Off => f.write_str("off"),
            MetricsListen::Addr(addr) => addr.fmt(f),
        }
    }
}

/// A running `/metrics` listener.
#[derive(Debug, Clone, Copy)]
pub struct MetricsServer {
    pub addr: SocketAddr,
}

/// Whether a metrics listener on `addr` is reachable from other hosts (anything but loopback):
/// the daemon warns, as the listener is plain HTTP without authentication.
fn beyond_loopback(addr: &SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

/// Binds `addr` and serves `daemon`'s registry at `GET /metrics` until `shutdown` fires; warns
/// when `addr` is not a loopback address.
pub async fn serve(
    daemon: &str,
    addr: SocketAddr,
    shutdown: Shutdown,
) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    let name = daemon.to_string();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let name = name.clone();
            async move {
                refresh(&name).await;
                (
                    [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    encode_text(&name),
                )
            }
        }),
    );
    tracing::info!(%addr, "metrics listening (GET /metrics)");
    if beyond_loopback(&addr) {
        tracing::warn!(
            %addr,
            "metrics are served over plain HTTP without authentication beyond loopback: anyone \
             who reaches this address reads them (ids of VMs, NICs, pools); prefer a loopback \
             address and a node-local scraper"
        );
    }
    tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
        {
            tracing::error!(error = %err, "metrics listener failed");
        }
    });
    Ok(MetricsServer { addr })
}

// ------------------------------------------------------------------------------------ gRPC

/// The gRPC server metrics of one daemon.
#[derive(Debug)]
pub struct RpcMetrics {
    /// `mvirt_grpc_requests_total{service,method,code}`.
    requests: Family<Labels, Counter>,
    /// `mvirt_grpc_request_duration_seconds{service,method}`: until the call's status (a
    /// stream's whole life for streaming calls).
    duration: HistogramFamily,
    /// The series of each path seen so far, so that a call records without building labels.
    series: RwLock<HashMap<String, Arc<RpcSeries>>>,
}

/// The handles of one gRPC method's series, resolved on its first call: its duration histogram
/// and its counters by status code (created on first use of each code).
#[derive(Debug)]
struct RpcSeries {
    service: String,
    method: String,
    duration: Histogram,
    /// By `tonic::Code` (0..=16).
    requests: [OnceLock<Counter>; 17],
}

static RPC: LazyLock<Mutex<HashMap<String, &'static RpcMetrics>>> = LazyLock::new(Default::default);

impl RpcMetrics {
    /// The gRPC metrics of `daemon` (registered on first use).
    pub fn of(daemon: &str) -> &'static RpcMetrics {
        let mut all = RPC.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = all.get(daemon) {
            return m;
        }
        let m: &'static RpcMetrics = Box::leak(Box::new(RpcMetrics {
            requests: Family::default(),
            duration: latency_family(),
            series: RwLock::default(),
        }));
        register(daemon, |r| {
            r.register(
                "mvirt_grpc_requests",
                "gRPC calls served, by service, method and status code",
                m.requests.clone(),
            );
            r.register_with_unit(
                "mvirt_grpc_request_duration",
                "Time from a gRPC call's arrival to its status (streams: their whole life)",
                Unit::Seconds,
                m.duration.clone(),
            );
        });
        all.insert(daemon.to_string(), m);
        m
    }

    /// The series of `path` (`/pkg.Service/Method`): a read lock and a lookup once it exists.
    fn series(&self, path: &str) -> Arc<RpcSeries> {
        if let Some(series) = read(&self.series).get(path) {
            return series.clone();
        }
        let (service, method) = split_path(path);
        let series = Arc::new(RpcSeries {
            service: service.to_string(),
            method: method.to_string(),
            duration: self
                .duration
                .get_or_create(&vec![
                    ("service", service.to_string()),
                    ("method", method.to_string()),
                ])
                .clone(),
            requests: Default::default(),
        });
        write(&self.series)
            .entry(path.to_string())
            .or_insert(series)
            .clone()
    }

    fn record(&self, series: &RpcSeries, code: tonic::Code, started: Instant) {
        let requests = series.requests[(code as usize).min(16)].get_or_init(|| {
            self.requests
                .get_or_create(&vec![
                    ("service", series.service.clone()),
                    ("method", series.method.clone()),
                    ("code", format!("{code:?}")),
                ])
                .clone()
        });
        requests.inc();
        series.duration.observe(started.elapsed().as_secs_f64());
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A gRPC service wrapped so that each call is counted by status code and timed.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: &'static RpcMetrics,
}

impl<S> GrpcMetrics<S> {
    pub fn new(inner: S, metrics: &'static RpcMetrics) -> Self {
        GrpcMetrics { inner, metrics }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for GrpcMetrics<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for GrpcMetrics<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if !enabled() {
            return Box::pin(self.inner.call(request));
        }
        let started = Instant::now();
        let metrics = self.metrics;
        let series = metrics.series(request.uri().path());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // A trailers-only answer (most errors) carries its status in the headers.
            if let Some(code) = grpc_status(response.headers()) {
                metrics.record(&series, code, started);
                return Ok(response);
            }
            let pending = Pending {
                metrics,
                series,
                started,
            };
            Ok(response.map(|body| {
                tonic::body::Body::new(MeteredBody {
                    inner: body,
                    pending: Some(pending),
                })
            }))
        })
    }
}

struct Pending {
    metrics: &'static RpcMetrics,
    series: Arc<RpcSeries>,
    started: Instant,
}

/// A response body that records the call when its trailers (the status) pass, or as
/// `Cancelled` when it is dropped before (the client went away).
struct MeteredBody {
    inner: tonic::body::Body,
    pending: Option<Pending>,
}

impl MeteredBody {
    fn finish(&mut self, code: tonic::Code) {
        if let Some(p) = self.pending.take() {
            p.metrics.record(&p.series, code, p.started);
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

impl http_body::Body for MeteredBody {
    type Data = axum::body::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.finish(code);
            }
            Poll::Ready(None) => self.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ------------------------------------------------------------------------------------ REST

/// The REST metrics of one daemon.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// `mvirt_http_requests_total{method,route,status}`.
    requests: Family<Labels, Counter>,
    /// `mvirt_http_request_duration_seconds{method,route}`: until the response head.
    duration: HistogramFamily,
    /// The series of each route template and method seen so far, so that a request records
    /// with a read lock and a lookup instead of building and hashing label sets.
    series: Arc<RwLock<HashMap<String, Vec<Arc<HttpSeries>>>>>,
}

/// The handles of one route and method: its duration histogram and its counters by status
/// (resolved on the first answer with each status).
#[derive(Debug)]
struct HttpSeries {
    method: http::Method,
    route: String,
    duration: Histogram,
    requests: RwLock<Vec<(u16, Counter)>>,
}

static HTTP: LazyLock<Mutex<HashMap<String, &'static HttpMetrics>>> =
    LazyLock::new(Default::default);

impl HttpMetrics {
    /// The REST metrics of `daemon` (registered on first use).
    pub fn of(daemon: &str) -> &'static HttpMetrics {
        let mut all = HTTP.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = all.get(daemon) {
            return m;
        }
        let m: &'static HttpMetrics = Box::leak(Box::new(HttpMetrics {
            requests: Family::default(),
            duration: latency_family(),
            series: Arc::default(),
        }));
        register(daemon, |r| {
            r.register(
                "mvirt_http_requests",
                "HTTP requests answered, by method, route template and status",
                m.requests.clone(),
            );
            r.register_with_unit(
                "mvirt_http_request_duration",
                "Time from an HTTP request's arrival to its response head",
                Unit::Seconds,
                m.duration.clone(),
            );
        });
        all.insert(daemon.to_string(), m);
        m
    }

    /// The series of `method` on `route` (a template or `unmatched`).
    fn series(&self, method: &http::Method, route: &str) -> Arc<HttpSeries> {
        if let Some(series) = read(&self.series)
            .get(route)
            .and_then(|all| all.iter().find(|s| s.method == method))
        {
            return series.clone();
        }
        let duration = self
            .duration
            .get_or_create(&vec![
                ("method", method.as_str().to_string()),
                ("route", route.to_string()),
            ])
            .clone();
        let mut all = write(&self.series);
        let of_route = all.entry(route.to_string()).or_default();
        if let Some(series) = of_route.iter().find(|s| s.method == method) {
            return series.clone();
        }
        let series = Arc::new(HttpSeries {
            method: method.clone(),
            route: route.to_string(),
            duration,
            requests: RwLock::default(),
        });
        of_route.push(series.clone());
        series
    }

    fn record(&self, series: &HttpSeries, status: u16, started: Instant) {
        series.duration.observe(started.elapsed().as_secs_f64());
        if let Some((_, c)) = read(&series.requests).iter().find(|(s, _)| *s == status) {
            c.inc();
            return;
        }
        let counter = self
            .requests
            .get_or_create(&vec![
                ("method", series.method.as_str().to_string()),
                ("route", series.route.clone()),
                ("status", status.to_string()),
            ])
            .clone();
        counter.inc();
        let mut requests = write(&series.requests);
        if !requests.iter().any(|(s, _)| *s == status) {
            requests.push((status, counter));
        }
    }
}

/// Axum middleware counting and timing every request by its route template (`/v1/vms/{id}`,
/// never the concrete path: one series per route) or `unmatched`. Add it with
/// `router.layer(axum::middleware::from_fn_with_state(HttpMetrics::of("mvirt-api"), track))`
/// — or [`http_layer`].
pub async fn track(
    axum::extract::State(metrics): axum::extract::State<&'static HttpMetrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    tracked(metrics, request, |request| next.run(request)).await
}

/// What [`track`] does, for a middleware of a daemon's own that runs the rest of the stack
/// (`rest`) itself: one `from_fn` layer instead of two (each costs a boxed future and a
/// service clone per request).
pub async fn tracked<F: std::future::Future<Output = axum::response::Response>>(
    metrics: &'static HttpMetrics,
    request: axum::extract::Request,
    rest: impl FnOnce(axum::extract::Request) -> F,
) -> axum::response::Response {
    if !enabled() {
        return rest(request).await;
    }
    let started = Instant::now();
    let series = {
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or("unmatched", |p| p.as_str());
        metrics.series(request.method(), route)
    };
    let response = rest(request).await;
    metrics.record(&series, response.status().as_u16(), started);
    response
}

/// Adds [`track`] for `daemon` to every route of `router` (call after the routes are added).
pub fn http_layer<S>(router: axum::Router<S>, daemon: &str) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(axum::middleware::from_fn_with_state(
        HttpMetrics::of(daemon),
        track,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_parses_addresses_and_off() {
        assert_eq!("off".parse::<MetricsListen>().unwrap(), MetricsListen::Off);
        assert_eq!(
            "127.0.0.1:50061".parse::<MetricsListen>().unwrap(),
            MetricsListen::Addr("127.0.0.1:50061".parse().unwrap())
        );
        let err = "localhost".parse::<MetricsListen>().unwrap_err();
        assert!(err.to_string().contains("\"localhost\""), "{err}");
    }

    #[test]
    fn registries_are_per_daemon() {
        let a = Counter::<u64>::default();
        register("metrics-test-a", |r| {
            r.register("mvirt_test_things", "things", a.clone())
        });
        a.inc_by(3);
        let text = encode_text("metrics-test-a");
        assert!(text.contains("mvirt_test_things_total 3"), "{text}");
        assert!(!encode_text("metrics-test-b").contains("mvirt_test_things"));
    }

    #[tokio::test]
    async fn sampled_families_are_read_at_scrape_time() {
        let sampled = Sampled::default();
        register("metrics-test-sampled", |r| {
            r.register_collector(Box::new(sampled.clone()))
        });
        let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, n) = (sampled.clone(), reads.clone());
        on_scrape(
            "metrics-test-sampled",
            Arc::new(move || {
                let (s, n) = (s.clone(), n.clone());
                Box::pin(async move {
                    let read = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let mut snapshot = Snapshot::default();
                    snapshot
                        .family(Kind::Counter, "mvirt_test_bytes", "bytes", None)
                        .add(vec![("nic", "a".into())], 100.0 * read as f64)
                        .add(vec![("nic", "b".into())], 7.0);
                    snapshot
                        .family(Kind::Gauge, "mvirt_test_size", "size", Some(Unit::Bytes))
                        .add(vec![], 42.0);
                    s.replace(snapshot);
                    read < 2
                })
            }),
        );
        refresh("metrics-test-sampled").await;
        let text = encode_text("metrics-test-sampled");
        assert!(
            text.contains("mvirt_test_bytes_total{nic=\"a\"} 100.0"),
            "{text}"
        );
        assert!(
            text.contains("mvirt_test_bytes_total{nic=\"b\"} 7.0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mvirt_test_size_bytes gauge"),
            "{text}"
        );
        assert!(text.contains("mvirt_test_size_bytes 42.0"), "{text}");
        refresh("metrics-test-sampled").await;
        assert!(encode_text("metrics-test-sampled").contains("{nic=\"a\"} 200.0"));
        // The second refresh said its source is gone: no third read.
        refresh("metrics-test-sampled").await;
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn only_listeners_beyond_loopback_are_warned_about() {
        let at = |s: &str| beyond_loopback(&s.parse().unwrap());
        assert!(!at("127.0.0.1:50061"));
        assert!(!at("127.0.0.2:50061"));
        assert!(!at("[::1]:50061"));
        assert!(!at("[::ffff:127.0.0.1]:50061"));
        assert!(at("0.0.0.0:50061"));
        assert!(at("[::]:50061"));
        assert!(at("10.0.0.11:50061"));
    }

    #[tokio::test]
    async fn rest_requests_are_counted_by_route_template_method_and_status() {
        use tower::ServiceExt;
        let router = http_layer(
            axum::Router::new().route(
                "/v1/things/{id}",
                axum::routing::get(|| async { "thing" })
                    .delete(|| async { (http::StatusCode::CONFLICT, "busy") }),
            ),
            "metrics-test-http",
        );
        for (method, path) in [
            ("GET", "/v1/things/a"),
            ("GET", "/v1/things/b"),
            ("DELETE", "/v1/things/a"),
            ("GET", "/nowhere"),
        ] {
            let request = http::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            router.clone().oneshot(request).await.unwrap();
        }
        let text = encode_text("metrics-test-http");
        for line in [
            r#"mvirt_http_requests_total{method="GET",route="/v1/things/{id}",status="200"} 2"#,
            r#"mvirt_http_requests_total{method="DELETE",route="/v1/things/{id}",status="409"} 1"#,
            r#"mvirt_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
            r#"mvirt_http_request_duration_seconds_count{method="GET",route="/v1/things/{id}"} 2"#,
            r#"mvirt_http_request_duration_seconds_count{method="DELETE",route="/v1/things/{id}"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/mvirt.vmm.v1.VmService/CreateVm"),
            ("mvirt.vmm.v1.VmService", "CreateVm")
        );
        assert_eq!(split_path("/odd"), ("odd", ""));
    }

    #[tokio::test]
    async fn the_listener_serves_the_daemons_registry() {
        let c = Counter::<u64>::default();
        register("metrics-test-serve", |r| {
            r.register("mvirt_test_served", "served", c.clone())
        });
        c.inc();
        let shutdown = Shutdown::new();
        let server = serve(
            "metrics-test-serve",
            "127.0.0.1:0".parse().unwrap(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("openmetrics-text"), "{answer}");
        assert!(answer.contains("mvirt_test_served_total 1"), "{answer}");
        // Taken address: a clear error.
        let err = serve("metrics-test-serve", server.addr, shutdown.clone())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot listen for metrics"),
            "{err}"
        );
        shutdown.trigger();
    }
}
