//! gRPC server bootstrap shared by every daemon.
//!
//! A daemon builds its services, hands them to [`GrpcServer`], and gets the standard
//! `grpc.health.v1.Health` service for free. Binding happens before serving so that tests can
//! listen on port 0 and learn the address, and so that "address in use" is reported at start.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;

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
}

impl GrpcServer {
    /// Starts a server builder with `grpc.health.v1.Health` registered.
    pub fn new() -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let router = Server::builder().add_service(health_service);
        Self { router, health }
    }

    /// Adds a service and marks it SERVING in the health service.
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
        self.router = self.router.add_service(service);
        self
    }

    /// The health reporter, to mark services NOT_SERVING when a dependency is lost.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves on `listener` until `shutdown` fires, then drains in-flight calls.
    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) -> Result<(), ServeError> {
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "gRPC server listening");
        let drain_signal = shutdown.clone();
        let serve =
            self.router
                .serve_with_incoming_shutdown(incoming(listener), async move {
                    drain_signal.wait().await
                });
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
                tracing::warn!(?addr, "connections still open after the drain timeout; stopping");
            }
        }
        tracing::info!(?addr, "gRPC server stopped");
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

/// Formats a listen address as an `http://` endpoint a client can dial.
pub fn endpoint_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
