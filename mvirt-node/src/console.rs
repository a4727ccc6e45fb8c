//! The console relay: the control plane's path to a VM's serial console on this node.
//!
//! `mvirt-api` (which terminates the user's authenticated WebSocket) dials the agent's
//! `NodeAgent.Console` (defined in mvirt-api's `node.proto`) with the console secret the agent gave it at registration; the agent
//! checks the caller's member certificate (NodeAgent is served over TLS with the node
//! certificate and requires a client certificate of the cluster CA) and the secret, checks that
//! the VM is one it manages, and splices the stream onto the local mvirt-vmm's `Console`.
//! mvirt-vmm itself never listens beyond its unix socket.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use mvirt_vmm::proto as vmm;

use crate::daemons::Daemons;
use crate::ledger::{Kind, Ledger};

use mvirt_api::proto::node_agent_server::NodeAgent;
use mvirt_api::proto::{ConsoleFrame, GetHostRequest, HostInfo, StoragePool};

/// Creates the console secret on first use and keeps it in the ledger.
pub fn console_secret(ledger: &Ledger) -> Result<String, crate::ledger::LedgerError> {
    if let Some(secret) = ledger.get("console_secret")? {
        return Ok(secret);
    }
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes);
    ledger.set("console_secret", &secret)?;
    Ok(secret)
}

/// Checks `authorization: Bearer <secret>` in constant time.
pub fn check_secret(request_header: Option<&str>, secret: &str) -> Result<(), Status> {
    let presented = request_header
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
    let (a, b) = (presented.as_bytes(), secret.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(Status::unauthenticated("bad console secret"))
    }
}

pub struct ConsoleRelay {
    daemons: Daemons,
    ledger: Arc<Ledger>,
    secret: String,
    /// Served over TLS: callers must present a member certificate of the cluster.
    tls: bool,
}

impl ConsoleRelay {
    /// `tls`: the relay is served over TLS (with a required client certificate), so every
    /// call must come from a control-plane member ([`crate::tls::require_member`]).
    pub fn new(daemons: Daemons, ledger: Arc<Ledger>, secret: String, tls: bool) -> Self {
        Self {
            daemons,
            ledger,
            secret,
            tls,
        }
    }
}

impl ConsoleRelay {
    /// Checks that a control-plane member calls (its client certificate, over TLS) and the
    /// console secret the API presents.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        crate::tls::require_member(request, self.tls)?;
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        check_secret(header, &self.secret)
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<ConsoleFrame, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for ConsoleRelay {
    type ConsoleStream = FrameStream;
    type PodLogsStream = crate::pod_relay::LogStream;
    type PodExecStream = crate::pod_relay::ExecStream;

    async fn pod_logs(
        &self,
        request: Request<mvirt_api::proto::PodLogsRequest>,
    ) -> Result<Response<Self::PodLogsStream>, Status> {
        self.authorize(&request)?;
        tracing::debug!(pod_id = %request.get_ref().pod_id, "pod logs relayed");
        let stream =
            crate::pod_relay::logs(&self.daemons, &self.ledger, request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn pod_exec(
        &self,
        request: Request<Streaming<mvirt_api::proto::PodExecInput>>,
    ) -> Result<Response<Self::PodExecStream>, Status> {
        self.authorize(&request)?;
        let stream =
            crate::pod_relay::exec(&self.daemons, &self.ledger, request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn get_host(
        &self,
        request: Request<GetHostRequest>,
    ) -> Result<Response<HostInfo>, Status> {
        self.authorize(&request)?;
        tracing::debug!("host info asked");
        let (mut vmm, mut zfs) = (self.daemons.vmm.clone(), self.daemons.zfs.clone());
        let (system, pool) = tokio::join!(
            vmm.get_system_info(mvirt_vmm::proto::GetSystemInfoRequest {}),
            zfs.get_pool_stats(mvirt_zfs::proto::GetPoolStatsRequest {}),
        );
        let system = system?.into_inner();
        let pool = pool?.into_inner();
        Ok(Response::new(HostInfo {
            hostname: system.hostname,
            cpu_model: system.cpu_model,
            cpu_cores: system.cpu_cores,
            numa_nodes: system.numa_nodes,
            memory_total_bytes: system.memory_total_bytes,
            memory_available_bytes: system.memory_available_bytes,
            hugepages_total: system.hugepages_total,
            hugepages_free: system.hugepages_free,
            hugepage_size_bytes: system.hugepage_size_bytes,
            running_vms: system.running_vms,
            pool: Some(StoragePool {
                pool: pool.pool,
                dataset: pool.dataset,
                size_bytes: pool.size_bytes,
                allocated_bytes: pool.allocated_bytes,
                free_bytes: pool.free_bytes,
                provisioned_bytes: pool.provisioned_bytes,
                compression_ratio: pool.compression_ratio,
                volume_count: pool.volume_count,
                template_count: pool.template_count,
            }),
        }))
    }

    async fn get_stats(
        &self,
        request: Request<mvirt_api::proto::GetStatsRequest>,
    ) -> Result<Response<mvirt_api::proto::NodeStats>, Status> {
        self.authorize(&request)?;
        // Debug: the TUI and the web UI ask every 2 s per open page. The line names the
        // request's trace id (the `rpc` span), which is how a slow sample is found.
        tracing::debug!(
            vms = request.get_ref().vm_ids.len(),
            pods = request.get_ref().pod_ids.len(),
            "stats asked"
        );
        let node_id = self.ledger.node_id().ok().flatten().unwrap_or_default();
        let stats = crate::stats::sample(&self.daemons, &node_id, request.get_ref()).await?;
        Ok(Response::new(stats))
    }

    async fn console(
        &self,
        request: Request<Streaming<ConsoleFrame>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        self.authorize(&request)?;
        let mut input = request.into_inner();
        let first = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the first frame must name the VM"))??;
        mvirt_common::validate::resource_id("vm id", &first.vm_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let owned = self
            .ledger
            .owns(Kind::Vm, &first.vm_id)
            .map_err(|e| Status::internal(mvirt_common::error::error_chain(&e)))?;
        if !owned {
            return Err(Status::not_found(format!(
                "VM {} is not managed by this node",
                first.vm_id
            )));
        }
        tracing::info!(vm_id = %first.vm_id, "console relay opened");
        let vm_id = first.vm_id.clone();
        let upstream = async_stream_input(vm_id.clone(), first.data, input);
        let output = self
            .daemons
            .vmm
            .clone()
            .console(upstream)
            .await?
            .into_inner();
        let frames = output.map(move |item| {
            item.map(|out| ConsoleFrame {
                vm_id: vm_id.clone(),
                data: out.data,
            })
        });
        Ok(Response::new(Box::pin(frames)))
    }
}

/// The vmm-side input stream: the first frame names the VM, the rest carry the client's input.
fn async_stream_input(
    vm_id: String,
    first_data: Vec<u8>,
    input: Streaming<ConsoleFrame>,
) -> impl Stream<Item = vmm::ConsoleInput> + Send + 'static {
    let head = tokio_stream::once(vmm::ConsoleInput {
        vm_id: vm_id.clone(),
        data: first_data,
    });
    let rest = input
        .take_while(|frame| frame.is_ok())
        .filter_map(|frame| frame.ok())
        .map(move |frame| vmm::ConsoleInput {
            vm_id: vm_id.clone(),
            data: frame.data,
        });
    head.chain(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_secret_is_checked_exactly() {
        assert!(check_secret(Some("Bearer abc"), "abc").is_ok());
        assert_eq!(
            check_secret(Some("Bearer abd"), "abc").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(check_secret(Some("abc"), "abc").is_err());
        assert!(check_secret(None, "abc").is_err());
        assert!(check_secret(Some("Bearer abcd"), "abc").is_err());
    }

    #[test]
    fn the_console_secret_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let a = console_secret(&ledger).unwrap();
        let b = console_secret(&ledger).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }
}
