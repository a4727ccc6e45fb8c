//! Serving OneService (plus `grpc.health.v1.Health`) on TCP, a unix socket or vsock, and the
//! daemon's top-level flow for both modes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mvirt_common::Shutdown;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::grpc::{Mode, OneServiceImpl};
use crate::proto::one_service_server::OneServiceServer;
use crate::reaper::Reaper;
use crate::runtime::{Runtime, RuntimeConfig, RuntimeError};

/// Where OneService listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Vsock(u32),
}

impl std::str::FromStr for Listen {
    type Err = String;

    /// `tcp:HOST:PORT`, `unix:PATH` or `vsock:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = s.strip_prefix("tcp:") {
            addr.parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("bad TCP address {addr:?}: {e}"))
        } else if let Some(path) = s.strip_prefix("unix:") {
            Ok(Listen::Unix(PathBuf::from(path)))
        } else if let Some(port) = s.strip_prefix("vsock:") {
            port.parse()
                .map(Listen::Vsock)
                .map_err(|e| format!("bad vsock port {port:?}: {e}"))
        } else {
            Err(format!(
                "listen address {s:?} must be tcp:HOST:PORT, unix:PATH or vsock:PORT"
            ))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {what}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch child processes")]
    Reaper(#[source] std::io::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Everything the daemon needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub mode: Mode,
    pub listen: Listen,
    pub runtime: RuntimeConfig,
    /// mvirt-log endpoint; empty: audit entries go to tracing only (the usual case in a VM).
    pub log_endpoint: String,
}

/// A bound listener of any supported kind.
pub enum BoundListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
    Vsock(tokio_vsock::VsockListener),
}

impl BoundListener {
    pub async fn bind(listen: &Listen) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind {
            what: format!("{listen:?}"),
            source,
        };
        Ok(match listen {
            Listen::Tcp(addr) => BoundListener::Tcp(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_err)?,
            ),
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(path);
                BoundListener::Unix(tokio::net::UnixListener::bind(path).map_err(bind_err)?)
            }
            Listen::Vsock(port) => BoundListener::Vsock(
                tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                    tokio_vsock::VMADDR_CID_ANY,
                    *port,
                ))
                .map_err(bind_err)?,
            ),
        })
    }
}

/// Builds the runtime and serves OneService on `listener` until `shutdown` fires (by signal or
/// by the `Shutdown` call). Returns the runtime so the caller can finish (PID 1 powers off).
pub async fn serve(
    config: DaemonConfig,
    listener: BoundListener,
    shutdown: Shutdown,
) -> Result<Arc<Runtime>, ServerError> {
    let reaper = Reaper::new(config.mode == Mode::Init).map_err(ServerError::Reaper)?;
    let audit = mvirt_log::create_audit_logger(&config.log_endpoint, "mvirt-one");
    let runtime = Runtime::new(config.runtime.clone(), reaper, audit.clone())?;
    let service = OneServiceImpl::new(runtime.clone(), config.mode, shutdown.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<OneServiceServer<OneServiceImpl>>()
        .await;
    let router = Server::builder()
        .add_service(health_service)
        .add_service(OneServiceServer::new(service));
    let until = {
        let shutdown = shutdown.clone();
        async move { shutdown.wait().await }
    };
    tracing::info!(listen = ?config.listen, mode = config.mode.as_str(), "OneService listening");
    match listener {
        BoundListener::Tcp(l) => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), until)
                .await?
        }
        BoundListener::Unix(l) => {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(l), until)
                .await?
        }
        BoundListener::Vsock(l) => {
            router
                .serve_with_incoming_shutdown(l.incoming(), until)
                .await?
        }
    }
    tracing::info!("OneService stopped; stopping containers");
    // Already done when the Shutdown call ended the server; needed after a signal.
    runtime.stop_all(crate::runtime::DEFAULT_STOP_TIMEOUT).await;
    audit.flush().await;
    Ok(runtime)
}
