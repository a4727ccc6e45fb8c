//! mvirt-api: the mvirt control plane.
//!
//! With the default `server` feature this crate is the daemon: Raft (openraft 0.9) over an
//! event-sourced state machine in SQLite, the REST API, NodeService and the scheduler. Without
//! it (`default-features = false`) it is only [`proto`]: the NodeService messages and client
//! that node agents use.
//!
//! A write flows: REST/gRPC handler (`rest/`, `grpc.rs`) → validation (`validate.rs`) →
//! a minted [`state::Command`] → [`app::App::submit`] (forwarded to the leader if needed) →
//! Raft commit → [`state::State::apply`] on every member (`raft.rs` persists it with `store.rs`)
//! → events → watchers (`/v1/events`, `WatchSpecs` via `nodespec/`). `state/`, `rest/` and `nodespec/`
//! have one module per resource kind (see the README's "Layout").

/// Generated `mvirt.node.v1` protobuf types and the `NodeService` client/server.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("mvirt.node.v1");
}

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod backup;
#[cfg(feature = "server")]
pub mod grpc;
#[cfg(feature = "server")]
pub mod ha;
#[cfg(feature = "server")]
pub mod ipam;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod model;
#[cfg(feature = "server")]
pub mod nodespec;
#[cfg(feature = "server")]
pub mod persist;
#[cfg(feature = "server")]
pub mod proposer;
#[cfg(feature = "server")]
pub mod raft;
#[cfg(feature = "server")]
pub mod raftapi;
#[cfg(feature = "server")]
pub mod raftlog;
#[cfg(feature = "server")]
pub mod rest;
#[cfg(feature = "server")]
pub mod scheduler;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod state;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub mod validate;
#[cfg(feature = "server")]
pub mod writer;
