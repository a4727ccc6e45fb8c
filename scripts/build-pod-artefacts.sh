#!/usr/bin/env bash
# Builds the pod boot artefacts (Debian kernel + initramfs with mvirt-one as /init, and a
# manifest with their version) into OUT, default /var/lib/mvirt/pod-artefacts.
# Reproducible and cached: a second run with the same inputs rewrites nothing.
# See mvirt-podimage/README.md. Needs apt (the kernel package), binutils (strip) and
# ca-certificates: scripts/setup.sh installs them.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-/var/lib/mvirt/pod-artefacts}"
# The unpacked Debian kernel is shared with the test guests (same cache as mvirt-testsupport).
CACHE="${MVIRT_POD_IMAGE_CACHE_DIR:-$ROOT/target/mvirt-test-cache}"

cd "$ROOT"
cargo build --release -p mvirt-one --bin mvirt-one -p mvirt-podimage --bin mvirt-pod-image
exec "$ROOT/target/release/mvirt-pod-image" build \
  --out "$OUT" \
  --mvirt-one "$ROOT/target/release/mvirt-one" \
  --cache-dir "$CACHE" \
  ${MVIRT_POD_KERNEL_PACKAGE:+--kernel-package "$MVIRT_POD_KERNEL_PACKAGE"}
