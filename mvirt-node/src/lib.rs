//! mvirt-node: the node agent.
//!
//! The agent registers this host with the control plane (`mvirt-api`'s NodeService), keeps it
//! alive with heartbeats, and watches the full desired set of resources placed on it. On every
//! new desired set, on every change a local daemon reports (`WatchVms`), and on a periodic
//! resync, it compares desired with actual and converges — level-triggered, so a missed event
//! costs nothing but a delay:
//!
//! ```text
//! WatchSpecs ─┐
//! WatchVms ───┼─> NodeReconciler::reconcile(spec) ─> mvirt-ebpf / mvirt-zfs / mvirt-vmm
//! resync tick ┘            │
//!                          └─> UpdateResourceStatus (only what changed, all on resync)
//! ```
//!
//! - [`ledger`] records, before each create, which local objects the agent owns, so it deletes
//!   only its own objects and survives its own crash at any point.
//! - [`daemons`] holds the gRPC clients of the local daemons.
//! - [`reconcile`] converges one desired set: one `Reconciler` per kind (networks, security
//!   groups, NICs, routes, templates, volumes, VMs), driven in dependency order; deletes in
//!   reverse.
//! - [`imports`] follows template imports in the background so they never block a pass.
//! - [`agent`] is the loop: register, heartbeat, watch, reconcile, report.
//! - [`tls`] is the agent's TLS: the trusted cluster CA, the node certificate (issued at
//!   registration, renewed at 2/3 of its lifetime), the NodeAgent listener's member check.
//! - [`transfer`] is the node-to-node channel (`NodePeer`): volume streams and byte relays
//!   between agents, authorised by transfer grants in both nodes' specs.

pub mod agent;
pub mod console;
pub mod daemons;
pub mod devices;
pub mod fencing;
pub mod imports;
pub mod ledger;
pub mod metrics;
pub mod migration_flows;
pub mod pod_relay;
pub mod reconcile;
pub mod snapshots;
pub mod stats;
pub mod tls;
pub mod transfer;
