//! mvirt-api (work in progress).
