//! mvirt-one: PID 1 and container runtime of mvirt pod microVMs.
//!
//! Inside a pod VM, mvirt-one is `/init`: it mounts the usual filesystems, reaps orphans, brings
//! up networking, serves `OneService` on vsock port 1024 and tells the host it is ready; the
//! VMM then creates and starts the pod's containers through it. Outside a VM (local mode) it
//! serves the same API on TCP or a unix socket, for tests and development.
//!
//! - [`proto`] and [`client`]: the API and client helpers (always built; mvirt-vmm depends on
//!   this crate with `default-features = false`).
//! - `server` feature: [`grpc`] (proto ⇄ domain), [`runtime`] (pods, supervision, exec),
//!   [`image`] + [`unpack`] (OCI pulls, layer cache, whiteouts), [`launch`] (namespace set-up in
//!   a re-executed launcher), [`cgroup`] (per-container limits), [`logs`], [`reaper`],
//!   [`netinfo`], [`init`] (PID-1 duties),
//!   [`network`] + [`dhcpv6`] (guest networking), [`server`] (listeners and the daemon's flow).

pub mod proto {
    tonic::include_proto!("mvirt.one.v1");
}

pub mod client;

#[cfg(feature = "server")]
pub mod cgroup;
#[cfg(feature = "server")]
pub mod dhcpv6;
#[cfg(feature = "server")]
pub mod grpc;
#[cfg(feature = "server")]
pub mod image;
#[cfg(feature = "server")]
pub mod init;
#[cfg(feature = "server")]
pub mod launch;
#[cfg(feature = "server")]
pub mod logs;
#[cfg(feature = "server")]
pub mod netinfo;
#[cfg(feature = "server")]
pub mod network;
#[cfg(feature = "server")]
pub mod reaper;
#[cfg(feature = "server")]
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod unpack;
