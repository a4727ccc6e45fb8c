//! Fixtures shared by this crate's tests and benchmark (each uses a different subset).

#[allow(dead_code)]
pub mod pod_vm;

#[allow(dead_code)]
pub mod local;
