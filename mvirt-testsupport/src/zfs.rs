//! zfs-fuse daemon and per-test pools (owned by the mvirt-zfs work).
