//! mvirt-ebpf (work in progress).
