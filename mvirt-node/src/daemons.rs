//! Clients of the local daemons and of the control plane.
//!
//! The local daemons are reached over their unix sockets (`unix:/run/mvirt/<daemon>.sock`,
//! root-only) through [`mvirt_common::grpc::client_endpoint`], the API over TCP with TLS
//! (see [`crate::tls`]).
//! Channels connect lazily: the agent starts even when a daemon is down, and every call to a
//! daemon that is unreachable fails with `UNAVAILABLE`, which a reconcile pass reports and
//! retries on the next pass.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use mvirt_api::proto::node_service_client::NodeServiceClient;
use mvirt_ebpf::proto::net_service_client::NetServiceClient;
use mvirt_vmm::proto::pod_service_client::PodServiceClient;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use mvirt_zfs::proto::zfs_service_client::ZfsServiceClient;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid endpoint {endpoint:?} for {daemon}")]
    Endpoint {
        daemon: &'static str,
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the node token contains characters not allowed in a header")]
    BadToken,
}

/// Endpoints of the local daemons and the API.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub api: String,
    pub vmm: String,
    pub zfs: String,
    pub ebpf: String,
    pub log: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            api: "https://127.0.0.1:50056".into(),
            vmm: "unix:/run/mvirt/vmm.sock".into(),
            log: "unix:/run/mvirt/log.sock".into(),
            zfs: "unix:/run/mvirt/zfs.sock".into(),
            ebpf: "unix:/run/mvirt/ebpf.sock".into(),
        }
    }
}

fn channel(daemon: &'static str, endpoint: &str) -> Result<Channel, DaemonError> {
    Ok(mvirt_common::grpc::client_endpoint(endpoint)
        .map_err(|source| DaemonError::Endpoint {
            daemon,
            endpoint: endpoint.to_string(),
            source,
        })?
        .connect_timeout(Duration::from_secs(3))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .connect_lazy())
}

fn traced(channel: Channel) -> DaemonChannel {
    InterceptedService::new(channel, mvirt_common::trace::Propagate)
}

/// Adds `authorization: Bearer <token>` to every NodeService call.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

pub type ApiClient = NodeServiceClient<InterceptedService<Channel, BearerAuth>>;

fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, DaemonError> {
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| DaemonError::BadToken)
}

/// An interceptor adding `authorization: Bearer <token>` (e.g. a transfer grant's token).
pub fn bearer_auth(token: &str) -> Result<BearerAuth, DaemonError> {
    Ok(BearerAuth {
        header: bearer(token)?,
    })
}

/// A NodeService client over `channel` that sends `token` with every call.
pub fn api_client(channel: Channel, token: &str) -> Result<ApiClient, DaemonError> {
    Ok(NodeServiceClient::with_interceptor(
        channel,
        BearerAuth {
            header: bearer(token)?,
        },
    ))
}

/// A channel to a local daemon whose calls carry the trace id of the work they are made for
/// (`x-mvirt-trace-id`, see [`mvirt_common::trace`]).
pub type DaemonChannel = InterceptedService<Channel, mvirt_common::trace::Propagate>;

/// The gRPC clients the agent uses. Cheap to clone.
#[derive(Clone)]
pub struct Daemons {
    pub api: ApiClient,
    pub vmm: VmServiceClient<DaemonChannel>,
    /// mvirt-vmm's PodService (same socket as `vmm`).
    pub pods: PodServiceClient<DaemonChannel>,
    pub zfs: ZfsServiceClient<DaemonChannel>,
    pub net: NetServiceClient<DaemonChannel>,
}

impl Daemons {
    /// The local daemons' clients, and the API's over `api` (see [`crate::tls::api_channel`]:
    /// TLS against the cluster CA, or plain with `--insecure-plaintext`).
    pub fn connect_lazy(
        endpoints: &Endpoints,
        token: &str,
        api: Channel,
    ) -> Result<Daemons, DaemonError> {
        let header = bearer(token)?;
        let vmm = channel("mvirt-vmm", &endpoints.vmm)?;
        Ok(Daemons {
            api: NodeServiceClient::with_interceptor(api, BearerAuth { header }),
            vmm: VmServiceClient::new(traced(vmm.clone())),
            pods: PodServiceClient::new(traced(vmm)),
            zfs: ZfsServiceClient::new(traced(channel("mvirt-zfs", &endpoints.zfs)?)),
            net: NetServiceClient::new(traced(channel("mvirt-ebpf", &endpoints.ebpf)?)),
        })
    }
}
