//! mvirt-vmm (work in progress).
