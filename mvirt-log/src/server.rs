//! Wiring of the mvirt-log daemon: opens the store, starts retention, and serves `LogService`
//! (with the gRPC health service) until shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use mvirt_common::grpc::{GrpcServer, ServeError};
use mvirt_common::listen::{ListenAddr, Listener, SocketOptions};
use mvirt_common::Shutdown;

use crate::grpc::LogServiceImpl;
use crate::proto::log_service_server::LogServiceServer;
use crate::retention::{self, RetentionPolicy};
use crate::store::{Store, StoreError};

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where [`BoundServer::bind`] listens (a unix socket with mode 0600, or TCP).
    pub listen: ListenAddr,
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
    listener: Listener,
    store: Arc<Store>,
    config: Config,
}

impl BoundServer {
    /// Opens the database and binds `config.listen` (TCP port 0 picks a free port; a unix
    /// socket gets mode 0600).
    pub async fn bind(config: Config) -> Result<BoundServer, ServerError> {
        let listener = Listener::bind(&config.listen, &SocketOptions::default()).await?;
        Self::with_listener(config, listener)
    }

    /// Opens the database and serves on a listener bound by the caller (`main` binds with
    /// the daemon's socket flags).
    pub fn with_listener(config: Config, listener: Listener) -> Result<BoundServer, ServerError> {
        let store = Arc::new(Store::open(&config.database_path())?);
        Ok(BoundServer {
            listener,
            store,
            config,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> ListenAddr {
        self.listener.local_addr()
    }

    /// The endpoint clients (and `create_audit_logger`) dial: `unix:/path` or `http://addr`.
    pub fn endpoint(&self) -> String {
        self.listener.endpoint()
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
        crate::metrics::init();
        let service = LogServiceImpl::new(self.store.clone(), shutdown.clone());
        tracing::info!(
            database = %self.config.database_path().display(),
            "mvirt-log ready"
        );
        GrpcServer::for_daemon("mvirt-log")
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
