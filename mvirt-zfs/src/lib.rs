//! mvirt-zfs: volumes, snapshots, clones and template imports on a ZFS pool.
//!
//! Every volume and template is a dataset under `<pool>/<parent>/{volumes,templates}/<id>`
//! holding a raw image file (`disk.raw`), which is what the hypervisor opens; this works on
//! kernel ZFS and on zfs-fuse alike. A request flows `grpc` (proto ↔ domain) → `storage`
//! (volumes, snapshots, templates; validated, serialised per object) or `import` (template
//! jobs) → `zfs` / `qemu_img` / `fetch` (external programs and sources) and `store` (SQLite).
//! `drift` compares the two at start.
//!
//! Without the default `server` feature the crate is only [`proto`] (messages and client).

/// Generated `mvirt.zfs.v1` protobuf types and the `ZfsService` client/server.
pub mod proto {
    tonic::include_proto!("mvirt.zfs.v1");
}

#[cfg(feature = "server")]
pub mod backup;
#[cfg(feature = "server")]
pub mod command;
#[cfg(feature = "server")]
pub mod drift;
#[cfg(feature = "server")]
pub mod fetch;
#[cfg(feature = "server")]
pub mod grpc;
#[cfg(feature = "server")]
pub mod import;
#[cfg(feature = "server")]
pub mod layout;
#[cfg(feature = "server")]
pub mod locks;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod qemu_img;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod storage;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod zfs;
#[cfg(feature = "server")]
pub mod zstream;

#[cfg(feature = "server")]
pub use server::{run, Config, Daemon};
