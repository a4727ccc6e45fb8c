#!/usr/bin/env bash
# Installs every system package mvirt's tests and its main command need.
# Idempotent and quick when everything is already there. Run as root.
set -euo pipefail

PACKAGES=(
  protobuf-compiler        # tonic-build / prost-build
  libprotobuf-dev          # google/protobuf/*.proto for etcd-client (mvirt-api bench)
  clang llvm libbpf-dev bpftool  # eBPF programs (mvirt-ebpf)
  qemu-system-x86 qemu-utils     # qemu driver, test guests, qemu-img
  ovmf                     # mvirt-vmm: UEFI firmware boot (qemu driver)
  zfs-fuse                 # storage on machines without kernel ZFS
  busybox-static cpio      # test guests and the embedded default template
  binutils                 # mvirt-pod-image: strip (pod boot artefacts)
  genisoimage dosfstools mtools  # cloud-init NoCloud seed images
  iproute2 iptables nftables iperf3 ethtool iputils-ping  # networking tests (ping: mvirt-ebpf-bench latency)
  docker-registry apache2-utils ca-certificates dnsmasq-base  # mvirt-one tests: OCI registry, htpasswd, CA bundle, DHCPv4/v6 + RA for the pod VM
  sqlite3 curl jq tmux xz-utils zstd gzip
  etcd-server              # mvirt-api benchmark baseline (3-member etcd side by side)
  prometheus               # mvirt-node tests/metrics.rs: a real Prometheus scrapes every daemon
  python3                  # mvirt-vmm: fake cloud-hypervisor test double
  python3-venv             # mvirt-api: schemathesis (OpenAPI contract test) in a venv
  nix-bin                  # deployment test: every .nix file parses, nix/lib.nix evaluates
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all system packages present"
fi

# Components the project needs that are not part of any default apt install.
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

# vhost-user vsock backend for pod guests under QEMU (mvirt-one in-guest tests).
command -v vhost-device-vsock >/dev/null || cargo install vhost-device-vsock --version 0.3.0

# schemathesis (PyPI, pinned) for mvirt-api's OpenAPI contract test (mvirt-api/tests/openapi.rs),
# in a venv of its own: Debian's python3 is "externally managed".
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=/opt/mvirt-schemathesis
if ! "$SCHEMATHESIS_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
  python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The web UI: Node.js ≥ 20 with npm, and Chromium for its end-to-end test.
bash "$(dirname "$0")/setup-ui.sh"
