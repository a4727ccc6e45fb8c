//! Wiring of the mvirt-log daemon: opens the store, starts retention, and serves `LogService`
//! (with the gRPC health service) until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mvirt_common::grpc::{self, GrpcServer, ServeError};
use mvirt_common::Shutdown;
use tokio::net::TcpListener;

use crate::grpc::LogServiceImpl;
use crate::proto::log_service_server::LogServiceServer;
use crate::retention::{self, RetentionPolicy};
use crate::store::{Store, StoreError};

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub retention: RetentionPolicy,
}

impl Config {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("log.db")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the log database")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A server bound to its address, ready to serve.
pub struct BoundServer {
    listener: TcpListener,
    store: Arc<Store>,
    config: Config,
}

impl BoundServer {
    /// Opens the database and binds the listen address (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<BoundServer, ServerError> {
        let store = Arc::new(Store::open(&config.database_path())?);
        let listener = grpc::bind(config.listen).await?;
        Ok(BoundServer {
            listener,
            store,
            config,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` fires; in-flight calls drain, follow streams end.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), ServerError> {
        let policy = self.config.retention;
        if policy.is_enabled() {
            let store = self.store.clone();
            // Apply once at start so an over-full database shrinks right away.
            let _ = tokio::task::spawn_blocking(move || policy.apply(&store)).await;
            tokio::spawn(retention::run(policy, self.store.clone(), shutdown.clone()));
        }
        let service = LogServiceImpl::new(self.store.clone(), shutdown.clone());
        tracing::info!(
            database = %self.config.database_path().display(),
            "mvirt-log ready"
        );
        GrpcServer::new()
            .add_service(LogServiceServer::new(service))
            .await
            .serve(self.listener, shutdown)
            .await?;
        Ok(())
    }
}

/// Binds and serves until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ServerError> {
    BoundServer::bind(config).await?.serve(shutdown).await
}
