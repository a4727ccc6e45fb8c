//! mvirt-log (work in progress).
