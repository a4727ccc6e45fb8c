//! Client helpers: dial OneService over TCP, a unix socket, or the hybrid vsock unix socket of
//! cloud-hypervisor / vhost-device-vsock (`CONNECT <port>\n` → `OK <host port>\n`). Available
//! without the `server` feature, for mvirt-vmm.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::proto::one_service_client::OneServiceClient;

/// The vsock port OneService listens on inside a pod VM.
pub const ONE_VSOCK_PORT: u32 = 1024;

/// Kernel command-line key naming the host vsock port that receives the readiness connection
/// (`mvirt.ready_port=<port>`; with a hybrid vsock socket `<uds>`, the host listens on
/// `<uds>_<port>`).
pub const READY_PORT_PARAM: &str = "mvirt.ready_port";

/// What mvirt-one writes on the readiness connection once OneService listens and the network is
/// configured.
pub const READY_MESSAGE: &[u8] = b"READY\n";

/// Opens a hybrid-vsock connection to `port` of the guest behind `uds`.
pub async fn hybrid_vsock_stream(uds: &std::path::Path, port: u32) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Read the reply byte by byte: whatever follows the newline belongs to the protocol.
    let mut reply = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        reply.push(byte);
        if reply.len() > 64 {
            break;
        }
    }
    if reply.starts_with(b"OK ") {
        Ok(stream)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!(
                "hybrid vsock refused port {port}: {:?}",
                String::from_utf8_lossy(&reply)
            ),
        ))
    }
}

/// A OneService client over the hybrid vsock socket `uds` (port [`ONE_VSOCK_PORT`]).
pub async fn connect_hybrid_vsock(
    uds: PathBuf,
    port: u32,
) -> Result<OneServiceClient<Channel>, tonic::transport::Error> {
    let channel =
        Endpoint::from_static("http://guest.vsock")
            .connect_with_connector(tower::service_fn(move |_| {
                let uds = uds.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(hybrid_vsock_stream(&uds, port).await?))
                }
            }))
            .await?;
    Ok(OneServiceClient::new(channel))
}

/// A OneService client over a unix socket (local mode).
pub async fn connect_unix(
    path: PathBuf,
) -> Result<OneServiceClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_static("http://local.unix")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(OneServiceClient::new(channel))
}

/// A OneService client over TCP (`http://host:port`).
pub async fn connect_tcp(
    endpoint: String,
) -> Result<OneServiceClient<Channel>, tonic::transport::Error> {
    OneServiceClient::connect(endpoint).await
}
