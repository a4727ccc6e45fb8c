//! Fixtures shared by this crate's guest test and benchmark (each uses a different subset).

#[allow(dead_code)]
pub mod pod_vm;
