//! The pod boot artefacts: a Debian kernel and an initramfs with mvirt-one as `/init`, built
//! reproducibly from Debian packages and cached (see `README.md`).
//!
//! - [`image`]: the build — inputs and their hash (the artefacts' version), the manifest, the
//!   cache check, the initramfs layout mvirt-one expects.
//! - [`kernel`]: which Debian kernel package, fetching and unpacking it once, its modules in
//!   load order.
//! - [`cpio`]: the deterministic `newc` archive writer.
//! - [`libs`]: the shared libraries a binary needs (`ldd`).
//! - [`command`]: running host programs (argv, typed errors with stderr).
//!
//! `mvirt-testsupport` builds its busybox test guests from the same pieces.

pub mod command;
pub mod cpio;
pub mod image;
pub mod kernel;
pub mod libs;

pub use image::{build, BuildConfig, BuildError, Manifest, Outcome};
