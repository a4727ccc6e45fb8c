//! mvirt-cli (work in progress).
