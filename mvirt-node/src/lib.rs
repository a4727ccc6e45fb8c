//! mvirt-node (work in progress).
