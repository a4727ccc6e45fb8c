//! mvirt-zfs (work in progress).
