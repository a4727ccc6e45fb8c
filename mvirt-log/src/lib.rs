//! mvirt-log: the audit log.
//!
//! Every daemon records its state changes here (level AUDIT) with the ids of the objects they
//! concern, through the [`AuditLogger`] client in this crate: it never blocks its caller, buffers
//! while mvirt-log is unreachable, and retries until each entry is stored exactly once.
//!
//! With the default `server` feature the crate also holds the daemon: [`store`] owns SQLite
//! (`logs` + `log_objects`), [`grpc`] translates `LogService` calls, [`retention`] deletes old
//! entries, and [`server`] wires them together. Clients depend on the crate with
//! `default-features = false` and get only [`proto`], [`Level`] and [`AuditLogger`].

pub mod audit;
pub mod level;

/// Generated `mvirt.log.v1` protobuf types and the `LogService` client/server.
pub mod proto {
    tonic::include_proto!("mvirt.log.v1");
}

pub use audit::{create_audit_logger, AuditLogger};
pub use level::Level;

#[cfg(feature = "server")]
pub mod grpc;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod retention;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
