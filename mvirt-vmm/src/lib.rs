//! mvirt-vmm: the local hypervisor daemon of one host.
//!
//! It keeps VM definitions in SQLite and runs one hypervisor process per running VM through a
//! driver (`cloud-hypervisor`, the production default, or `qemu`), serves their serial consoles
//! (several viewers, scrollback, input), writes cloud-init NoCloud seeds, reports every change on
//! `WatchVms` and as AUDIT entries in mvirt-log, and adopts running guests after a restart
//! instead of killing or duplicating them.
//!
//! Modules: [`model`] (domain types), [`store`] (SQLite), [`hypervisor`] (driver trait, QEMU and
//! cloud-hypervisor), [`console`] (console hubs), [`cloudinit`] (seed images), [`process`]
//! (process identity), [`sysinfo`] (host facts), [`vmm`] (the manager), [`grpc`] (proto edge).
//!
//! With `default-features = false` only the generated [`proto`] module (messages and
//! `VmServiceClient`) is built.

/// Generated protobuf types and the `VmService`/`PodService` clients (and server, with the `server` feature).
pub mod proto {
    tonic::include_proto!("mvirt.vmm.v1");
}

#[cfg(feature = "server")]
pub mod cloudinit;
#[cfg(feature = "server")]
pub mod console;
#[cfg(feature = "server")]
pub mod grpc;
#[cfg(feature = "server")]
pub mod hypervisor;
#[cfg(feature = "server")]
pub mod lease;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod model;
#[cfg(feature = "server")]
mod oplock;
#[cfg(feature = "server")]
pub mod pod;
#[cfg(feature = "server")]
pub mod process;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod sysinfo;
#[cfg(feature = "server")]
pub mod vmm;

#[cfg(feature = "server")]
pub use server::{serve, start, RunningVmm};

#[cfg(feature = "server")]
mod server {
    use mvirt_common::listen::{ListenAddr, Listener, SocketOptions};
    use mvirt_common::Shutdown;

    use crate::lease::FenceLease;
    use crate::pod::{PodError, PodManager};
    use crate::proto::pod_service_server::PodServiceServer;
    use crate::proto::vm_service_server::VmServiceServer;
    use crate::vmm::{Vmm, VmmConfig, VmmError};

    #[derive(Debug, thiserror::Error)]
    pub enum ServeError {
        #[error(transparent)]
        Vmm(#[from] VmmError),
        #[error(transparent)]
        Pod(#[from] PodError),
        #[error(transparent)]
        Grpc(#[from] mvirt_common::grpc::ServeError),
    }

    /// Opens the manager, recovers running VMs and serves `VmService` on `listener` until
    /// `shutdown` fires. Guests keep running after it returns.
    pub async fn serve(
        config: VmmConfig,
        listener: impl Into<Listener>,
        shutdown: Shutdown,
    ) -> Result<(), ServeError> {
        let listener = listener.into();
        let (vmm, pods, lease) = open(config).await?;
        serve_vmm(vmm, pods, lease, listener, shutdown).await
    }

    /// Opens the manager and adopts what survived a restart: VMs first, then the pods on
    /// their microVMs.
    /// The fence lease is re-armed after the VMs are adopted (it may fire at once).
    async fn open(config: VmmConfig) -> Result<(Vmm, PodManager, FenceLease), ServeError> {
        let pod_config = config.pod.clone();
        let data_dir = config.data_dir.clone();
        let vmm = Vmm::open(config)?;
        vmm.recover().await?;
        let pods = PodManager::new(vmm.clone(), pod_config);
        pods.recover().await?;
        let lease = FenceLease::start(vmm.clone(), &data_dir);
        Ok((vmm, pods, lease))
    }

    async fn serve_vmm(
        vmm: Vmm,
        pods: PodManager,
        lease: FenceLease,
        listener: Listener,
        shutdown: Shutdown,
    ) -> Result<(), ServeError> {
        let watcher = {
            let vmm = vmm.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.wait().await;
                // Ends console and watch streams so the server can drain.
                vmm.shutdown().await;
            })
        };
        crate::metrics::watch(&vmm, &pods, &shutdown);
        let server = mvirt_common::grpc::GrpcServer::for_daemon("mvirt-vmm")
            .add_service(VmServiceServer::new(
                crate::grpc::VmGrpc::new(vmm.clone(), pods.clone()).with_lease(lease),
            ))
            .await
            .add_service(PodServiceServer::new(crate::pod::grpc::PodGrpc::new(pods)))
            .await;
        let result = server.serve(listener, shutdown).await;
        let _ = watcher.await;
        Ok(result?)
    }

    /// A daemon started in-process (tests, benchmarks).
    pub struct RunningVmm {
        pub addr: ListenAddr,
        pub vmm: Vmm,
        pub pods: PodManager,
        shutdown: Shutdown,
        task: tokio::task::JoinHandle<Result<(), ServeError>>,
    }

    impl RunningVmm {
        pub fn endpoint(&self) -> String {
            self.addr.endpoint()
        }

        /// Stops serving and detaches from the VMs (they keep running).
        pub async fn stop(self) -> Result<(), ServeError> {
            self.shutdown.trigger();
            match self.task.await {
                Ok(result) => result,
                Err(join) => {
                    tracing::error!(error = %join, "vmm server task panicked");
                    Ok(())
                }
            }
        }
    }

    /// Opens, recovers and serves on `addr` (a unix socket with mode 0600, or TCP where port
    /// 0 picks one) in a background task.
    pub async fn start(config: VmmConfig, addr: ListenAddr) -> Result<RunningVmm, ServeError> {
        let (vmm, pods, lease) = open(config).await?;
        let listener = Listener::bind(&addr, &SocketOptions::default()).await?;
        let addr = listener.local_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(serve_vmm(
            vmm.clone(),
            pods.clone(),
            lease,
            listener,
            shutdown.clone(),
        ));
        Ok(RunningVmm {
            addr,
            vmm,
            pods,
            shutdown,
            task,
        })
    }
}
