//! gRPC server bootstrap shared by every daemon.
//!
//! A daemon builds its services, hands them to [`GrpcServer`], and gets the standard
//! `grpc.health.v1.Health` service for free. Binding happens before serving so that tests can
//! listen on port 0 and learn the address, and so that "address in use" is reported at start.
//! A server serves a [`Listener`]: the local daemons' unix socket (see [`crate::listen`]) or,
//! for the control plane and when asked for, TCP. [`client_endpoint`] is the other side: it
//! turns `unix:/path` (or a bare absolute path) or `http://host:port` into a tonic `Endpoint`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::{Connected, Router};
use tonic::transport::{Endpoint, Server};
use tonic_health::server::HealthReporter;

use crate::listen::Listener;
use crate::Shutdown;

/// How long a stopping server waits for in-flight calls.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Errors from binding or running a gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {}", path.display())]
    Socket {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("another process serves the socket {} (is the daemon already running?)", path.display())]
    SocketInUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("the socket group {group:?} does not exist")]
    UnknownGroup { group: String },
    #[error("refusing to listen on TCP {addr} without --allow-tcp: TCP has no access control (the default is a unix socket under /run/mvirt)")]
    TcpNotAllowed { addr: SocketAddr },
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds a TCP listener, with a clear error if the address is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// A tonic server with the health service already added.
pub struct GrpcServer {
    router: Router,
    health: HealthReporter,
    metrics: Option<&'static crate::metrics::RpcMetrics>,
}

impl GrpcServer {
    /// Starts a server builder with `grpc.health.v1.Health` registered.
    pub fn new() -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let router = Server::builder().add_service(health_service);
        Self {
            router,
            health,
            metrics: None,
        }
    }

    /// [`GrpcServer::new`] whose services' calls are counted and timed in `daemon`'s metrics
    /// (`mvirt_grpc_requests_total`, `mvirt_grpc_request_duration_seconds`; see
    /// [`crate::metrics`]).
    pub fn for_daemon(daemon: &str) -> Self {
        Self {
            metrics: Some(crate::metrics::RpcMetrics::of(daemon)),
            ..Self::new()
        }
    }

    /// Adds a service and marks it SERVING in the health service. Its calls run in the
    /// caller's trace ([`crate::trace::Traced`]).
    pub async fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.health
            .set_service_status(S::NAME, tonic_health::ServingStatus::Serving)
            .await;
        // Every call runs in the caller's trace (`x-mvirt-trace-id`, see [`crate::trace`]).
        let service = crate::trace::Traced::new(service);
        self.router = match self.metrics {
            Some(metrics) => self
                .router
                .add_service(crate::metrics::GrpcMetrics::new(service, metrics)),
            None => self.router.add_service(service),
        };
        self
    }

    /// The health reporter, to mark services NOT_SERVING when a dependency is lost.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves on `listener` (a [`Listener`] or a bound `TcpListener`) until `shutdown` fires,
    /// then drains in-flight calls. A unix socket file is removed when serving ends.
    pub async fn serve(
        self,
        listener: impl Into<Listener>,
        shutdown: Shutdown,
    ) -> Result<(), ServeError> {
        let listener = listener.into();
        let addr = listener.local_addr();
        tracing::info!(%addr, "gRPC server listening");
        match listener {
            Listener::Tcp(listener) => {
                serve_draining(self.router, incoming(listener), shutdown, &addr).await?
            }
            Listener::Unix { listener, socket } => {
                let result = serve_draining(
                    self.router,
                    UnixListenerStream::new(listener),
                    shutdown,
                    &addr,
                )
                .await;
                drop(socket);
                result?
            }
        }
        tracing::info!(%addr, "gRPC server stopped");
        Ok(())
    }

    /// Serves TCP `listener` over TLS with `config` (or plain with `None`, for
    /// `--insecure-plaintext`) until `shutdown` fires, then drains like [`GrpcServer::serve`].
    /// Handshakes run concurrently ([`crate::tls::TlsIncoming`]); handlers find the peer's
    /// certificate and identity as the request extension [`crate::tls::PeerInfo`].
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        config: Option<std::sync::Arc<rustls::ServerConfig>>,
        shutdown: Shutdown,
    ) -> Result<(), ServeError> {
        let local = crate::listen::ListenAddr::Tcp(
            listener
                .local_addr()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        );
        let tls = config.is_some();
        tracing::info!(addr = %local, tls, "gRPC server listening");
        let incoming = crate::tls::TlsIncoming::new(listener, config);
        serve_draining(self.router, incoming, shutdown, &local).await?;
        tracing::info!(addr = %local, "gRPC server stopped");
        Ok(())
    }

    /// Serves until an arbitrary future resolves (for callers with their own signal).
    pub async fn serve_until<F>(self, listener: TcpListener, until: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        self.router
            .serve_with_incoming_shutdown(incoming(listener), until)
            .await?;
        Ok(())
    }
}

/// Serves `incoming` until `shutdown`, then gives in-flight calls [`DRAIN_TIMEOUT`].
async fn serve_draining<S, IO>(
    router: Router,
    incoming: S,
    shutdown: Shutdown,
    addr: &crate::listen::ListenAddr,
) -> Result<(), ServeError>
where
    S: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let drain_signal = shutdown.clone();
    let serve =
        router.serve_with_incoming_shutdown(incoming, async move { drain_signal.wait().await });
    tokio::pin!(serve);
    // Clients that keep idle connections open would hold a graceful shutdown forever:
    // in-flight calls get DRAIN_TIMEOUT to finish, then the server stops regardless.
    let drain_deadline = async {
        shutdown.wait().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        result = &mut serve => result?,
        _ = drain_deadline => {
            tracing::warn!(%addr, "connections still open after the drain timeout; stopping");
        }
    }
    Ok(())
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepted connections with `TCP_NODELAY` set: small gRPC frames (unary answers, stream
/// items) must not wait for Nagle's algorithm and the peer's delayed ACK (~40 ms each).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        })
    })
}

/// A client endpoint for a local daemon or the API: `unix:/path`, `unix:///path` or a bare
/// absolute path dial a unix socket (tonic connects those itself); anything else is a URI such
/// as `http://[::1]:50051`. The caller adds timeouts and connects (lazily or not).
pub fn client_endpoint(endpoint: &str) -> Result<Endpoint, tonic::transport::Error> {
    if endpoint.starts_with('/') {
        return Endpoint::from_shared(format!("unix:{endpoint}"));
    }
    Endpoint::from_shared(endpoint.to_string())
}

/// Formats a TCP listen address as an `http://` endpoint a client can dial.
pub fn endpoint_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
