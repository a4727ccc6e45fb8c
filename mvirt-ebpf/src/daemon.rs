//! Starting the daemon: the manager (store, datapath, convergence) behind a gRPC server.

use std::path::PathBuf;
use std::sync::Arc;

use mvirt_common::grpc::GrpcServer;
use mvirt_common::listen::{ListenAddr, Listener};
use mvirt_common::Shutdown;

use crate::grpc::NetGrpc;
use crate::manager::{ManagerConfig, ManagerError, NetManager};
use crate::proto::net_service_server::NetServiceServer;

/// Everything the daemon is configured with (its flags).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub lease_secs: u32,
    /// MTU announced to guests (DHCP option 26, RA); 0 = none.
    pub guest_mtu: u16,
    pub conntrack_timeout_secs: u64,
    pub uplink: Option<String>,
    pub nft_table: String,
    pub tunnel_device: String,
    pub tunnel_port: u16,
    /// mvirt-log endpoint; empty = audit entries only in tracing.
    pub log_endpoint: String,
    /// Per-NIC budget of control frames (ARP, DHCP, NDP, echo to the gateway).
    pub control_rate: crate::responder::ControlRateLimit,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the networking service")]
    Manager(#[from] ManagerError),
    #[error(transparent)]
    Serve(#[from] mvirt_common::grpc::ServeError),
}

impl DaemonConfig {
    fn manager(&self) -> ManagerConfig {
        ManagerConfig {
            database: self.data_dir.join("mvirt-ebpf.sqlite"),
            pin_dir: self.pin_dir.clone(),
            lease_secs: self.lease_secs,
            guest_mtu: self.guest_mtu,
            conntrack_timeout_secs: self.conntrack_timeout_secs,
            uplink: self.uplink.clone(),
            nft_table: self.nft_table.clone(),
            tunnel_device: self.tunnel_device.clone(),
            tunnel_port: self.tunnel_port,
            control_rate: self.control_rate,
        }
    }
}

/// A daemon started in this process (tests, and `main`).
pub struct RunningDaemon {
    pub manager: Arc<NetManager>,
    pub addr: ListenAddr,
    server: tokio::task::JoinHandle<Result<(), mvirt_common::grpc::ServeError>>,
    audit: mvirt_log::AuditLogger,
}

impl RunningDaemon {
    /// Waits until the server has stopped (after `shutdown` fired).
    pub async fn wait(self) -> Result<(), DaemonError> {
        let result = match self.server.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "gRPC server task failed");
                Ok(())
            }
        };
        self.audit.flush().await;
        Ok(result?)
    }
}

/// Starts the manager (loading the eBPF datapath; an error here means the daemon must not
/// run, and is returned before anything is served), then serves NetService on `listener` until
/// `shutdown` fires. The datapath keeps forwarding after the daemon stops (pinned links/maps).
pub async fn start(
    config: DaemonConfig,
    listener: Listener,
    shutdown: Shutdown,
) -> Result<RunningDaemon, DaemonError> {
    let audit = mvirt_log::create_audit_logger(&config.log_endpoint, "mvirt-ebpf");
    let manager = Arc::new(NetManager::start(config.manager(), audit.clone()).await?);
    let addr = listener.local_addr();
    crate::metrics::watch(&manager, &shutdown);
    let server = GrpcServer::for_daemon("mvirt-ebpf")
        .add_service(NetServiceServer::new(NetGrpc::new(manager.clone())))
        .await;
    let server = tokio::spawn(server.serve(listener, shutdown));
    Ok(RunningDaemon {
        manager,
        addr,
        server,
        audit,
    })
}

/// The address the daemon listens on by default: `/run/mvirt/ebpf.sock`.
pub fn default_listen() -> ListenAddr {
    ListenAddr::Unix(mvirt_common::listen::default_socket("ebpf"))
}
