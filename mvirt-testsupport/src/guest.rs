//! Cached Debian kernel + busybox initramfs for QEMU TCG test guests (being written).
