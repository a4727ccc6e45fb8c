//! mvirt-one (work in progress).
