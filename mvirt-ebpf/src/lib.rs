//! mvirt-ebpf: the networking daemon of an mvirt node.
//!
//! An L3-only, VPC-like network for VMs: each NIC is a persistent TAP device; an eBPF program
//! (C, `bpf/datapath.c`) on every TAP routes packets to NICs of the same network only, enforces
//! security groups with connection tracking and hands ARP/DHCP/NDP to a userspace responder
//! that plays the gateway (169.254.0.1 / fe80::1). Public networks reach the outside through
//! nftables SNAT; routes carry traffic to other nodes through VXLAN, the VNI naming the network.
//!
//! Modules: [`model`] (domain types, validation), [`store`] (SQLite), [`manager`] (the service
//! logic and convergence), [`grpc`] (NetService translation), [`datapath`] (aya), [`tap`],
//! [`responder`], [`nat`], [`ip`] (the `ip`/`nft` wrappers). Without the default `server`
//! feature only the generated [`proto`] module (messages + client) is built.

/// Generated NetService messages, client (and server with the `server` feature).
pub mod proto {
    tonic::include_proto!("mvirt.net.v1");
}

#[cfg(feature = "server")]
pub mod datapath;
#[cfg(feature = "server")]
pub mod grpc;
#[cfg(feature = "server")]
pub mod ip;
#[cfg(feature = "server")]
pub mod manager;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod model;
#[cfg(feature = "server")]
pub mod nat;
#[cfg(feature = "server")]
pub mod responder;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod tap;

#[cfg(feature = "server")]
mod daemon;
#[cfg(feature = "server")]
pub use daemon::{default_listen, start, DaemonConfig, DaemonError, RunningDaemon};
