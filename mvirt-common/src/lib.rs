//! Conventions shared by every mvirt daemon, written once so that each daemon reads the same:
//!
//! - [`daemon`]: the skeleton of every daemon's `main.rs`: shared flags, start-up, error report.
//! - [`command`]: running a short-lived external program (argv, bounded time, typed errors).
//! - [`telemetry`]: tracing set-up (human-readable on a terminal, JSON otherwise, `RUST_LOG`).
//! - [`shutdown`]: one cancellation token fired by SIGINT/SIGTERM, so servers drain in-flight calls.
//! - [`grpc`]: gRPC server bootstrap with the standard health service on a bound listener, and
//!   client endpoints (`unix:/path` or `http://host:port`).
//! - [`listen`]: listen addresses; the local daemons' unix sockets (mode 0600/0660) and the
//!   flag that TCP needs.
//! - [`sqlite`]: opening a database (WAL, busy timeout, foreign keys) and running migrations.
//! - [`error`]: the classification of typed errors and their mapping to `tonic::Status`.
//! - [`version`]: the version a daemon reports from `GetVersion`.
//! - [`validate`]: validation of names and ids that reach command lines, paths or datasets.
//! - [`tls`]: the cluster CA, member/node certificates, TLS listeners and client configs.
//! - [`metrics`]: Prometheus metrics: a registry per daemon, `--metrics-listen`'s `/metrics`,
//!   gRPC method and REST route counters and latency histograms.
//! - [`trace`]: one trace id per request, carried across processes (`X-Request-Id`,
//!   `x-mvirt-trace-id`), in tracing spans and audit entries.
//! - [`names`]: node-local names (TAP devices, datasets, objects) derived from a whole id.
//!
//! A daemon's `main.rs` parses its flags (clap, every flag with an `MVIRT_<DAEMON>_<FLAG>`
//! environment variable) and runs the service its `lib.rs` exposes through
//! [`daemon::DaemonSpec`], until [`shutdown::Shutdown`] fires.

pub mod command;
pub mod daemon;
pub mod durable;
pub mod error;
pub mod grpc;
pub mod listen;
pub mod metrics;
pub mod names;
pub mod shutdown;
pub mod sqlite;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod validate;
pub mod version;

pub use error::{ErrorKind, HasErrorKind};
pub use shutdown::Shutdown;
