#!/usr/bin/env bash
# The deployment test (issue 21): the NixOS module and the Debian packages both come from
# deploy/services.toml, pass the daemons only what they read, and the packages make a working
# node.
#
#  1. every .nix file parses (nix-instantiate --parse; nixpkgs cannot be fetched here), and the
#     crane build's source filter (nix/cargo-src.nix) keeps every non-Rust file a crate compiles
#     in: include_str!/include_bytes!/include! targets, files and directories build.rs reads
#     (deploy/tests/check_cargo_src.py evaluates the filter itself for each);
#  2. deploy/debian/ is what deploy/gen.py makes of deploy/services.toml, and the NixOS module
#     spells no flag of its own;
#  3. every flag the NixOS module can pass (nix/lib.nix) and does pass on its ExecStart lines
#     (nix/tests/module-eval.nix evaluates the module with a stand-in for nixpkgs' lib), and every
#     variable of /etc/mvirt/*.env, is checked against the daemon's --help; the module's
#     kernel modules, sysctls, firewall ports (against the ports the daemons' --help defaults
#     listen on) and unit ordering are checked too (deploy/tests/check_flags.py);
#  4. the .deb files are built from the debug binaries cargo already built and the pod
#     artefacts (mvirt-pod-image from this checkout's mvirt-one; cached in
#     $CARGO_TARGET_DIR/mvirt-test-cache, default target/), with deploy/build-debs.sh, and installed
#     with dpkg into a fresh root: a copy-on-write overlay
#     of this machine's root file system, so dpkg checks the packages' dependencies against a
#     real Debian 12 and runs their maintainer scripts (user, group, directories);
#     `systemd-analyze verify` checks every installed unit, the installed modules-load.d and
#     sysctl.d files say what services.toml says, `systemd-analyze security --offline` rates
#     each unit's hardening (systemd is not PID 1 here, so the sandbox itself is not run:
#     deploy/README.md);
#  5. each daemon is started exactly as its installed unit says (deploy/tests/unitrun.py:
#     ExecStart chrooted into the root, EnvironmentFile=/etc/mvirt/*.env, User=, StateDirectory=,
#     UMask=, NoNewPrivileges=, CapabilityBoundingSet=), in the order of the units' After=
#     lines, in a network namespace of its own (so the packaged default ports collide with
#     nothing) with a private bpffs; the only configuration is what an operator edits in
#     /etc/mvirt/ (the pool, its mountpoint, the node token);
#  6. through REST: a node token, a network, a template imported from /var/lib/mvirt/images,
#     a VM; the guest boots and gets its address from mvirt-ebpf's DHCP; mvirt-vmm is stopped
#     as its unit's KillMode=process stops it and started again: the guest keeps running and
#     is adopted;
#  7. a control-plane backup of the running member (`mvirt-api backup`, the installed binary)
#     is restored into a fresh data directory as docs/deploy.md says (`mvirt-api restore` as
#     user mvirt), the packaged unit starts on it: same CA and admin token, the objects are
#     there, the agent reconnects and the guest is still reported running.
# Needs root, zfs-fuse, QEMU (scripts/setup.sh). Everything is removed afterwards, also on
# failure. About a minute when the binaries are built.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET/debug
# MVIRT_TEST_DEPLOY_BIN=DIR tests binaries built elsewhere (no cargo build here).
BIN=${MVIRT_TEST_DEPLOY_BIN:-$BIN}
START=$(date +%s)

say() { printf '== test-deploy: %s (%ss)\n' "$*" "$(($(date +%s) - START))"; }
die() { printf 'test-deploy: FAILED: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (packages are installed into a chroot, daemons use TAPs and eBPF)"
for tool in nix-instantiate systemd-analyze dpkg-deb zfs-fuse zpool unshare setpriv python3 curl jq apt-get; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/setup.sh"
done

say "every .nix file parses"
mapfile -t nix_files < <(git ls-files '*.nix'; git ls-files --others --exclude-standard '*.nix')
[ ${#nix_files[@]} -ge 7 ] || die "expected flake.nix and nix/**/*.nix, found ${nix_files[*]}"
for f in "${nix_files[@]}"; do
  nix-instantiate --parse "$f" >/dev/null || die "$f does not parse"
done

say "the Nix build's cargo source keeps every file a crate compiles in"
python3 deploy/tests/check_cargo_src.py "$REPO" || die "nix/cargo-src.nix drops a file cargo needs"

say "deploy/debian/ is generated from deploy/services.toml"
python3 deploy/gen.py --check || die "deploy/debian/ is stale: run deploy/gen.py"
if grep -nE '"--[a-z]' nix/modules/mvirt.nix; then
  die "nix/modules/mvirt.nix spells a flag itself: flags belong in deploy/services.toml"
fi

if [ -z "${MVIRT_TEST_DEPLOY_BIN:-}" ]; then
  say "building the daemons (debug, shared with cargo test)"
  cargo build -q --bins -p mvirt-log -p mvirt-zfs -p mvirt-ebpf -p mvirt-vmm -p mvirt-api \
    -p mvirt-node -p mvirt-cli -p mvirt-testsupport -p mvirt-one -p mvirt-podimage
fi

WORK=$(mktemp -d /var/tmp/mvirt-test-deploy.XXXXXX)
POOL=mvdeploy$$
cleanup() {
  local rc=$?
  set +e
  # Whatever still runs chrooted into the root (daemons, guests) is ours.
  if [ -d "$WORK/root" ]; then
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/root" 2>/dev/null)" = "$WORK/root" ] && kill -9 "${p#/proc/}" 2>/dev/null
    done
  fi
  if zpool list -H "$POOL" >/dev/null 2>&1; then
    for _ in $(seq 1 40); do zpool destroy -f "$POOL" 2>/dev/null && break; sleep 0.25; done
  fi
  mountpoint -q "$WORK/shared" && umount -l "$WORK/shared"
  if [ $rc -ne 0 ] && [ -d "$WORK/logs" ]; then
    for log in "$WORK"/logs/*.log; do echo "---- $log (last 30 lines)"; tail -n 30 "$log"; done
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

say "flags and variables against each daemon's --help"
nix-instantiate --eval --strict --json -E '(import ./nix/lib.nix).flagCheck' >"$WORK/flagcheck.json"
nix-instantiate --eval --strict --json nix/tests/module-eval.nix >"$WORK/module.json"
python3 deploy/tests/check_flags.py "$BIN" "$WORK/flagcheck.json" "$WORK/module.json" deploy/debian

say "the pod artefacts (mvirt-pod-image; a Debian kernel, cached)"
CACHE=$TARGET/mvirt-test-cache
mkdir -p "$CACHE"
"$BIN/mvirt-pod-image" build --out "$CACHE/pod-artefacts-deploy" --mvirt-one "$BIN/mvirt-one" \
  --cache-dir "$CACHE" >"$WORK/pod-version" 2>"$WORK/pod-artefacts.log" ||
  { cat "$WORK/pod-artefacts.log"; die "mvirt-pod-image build failed"; }
POD_VERSION=$(cat "$WORK/pod-version")
[ -n "$POD_VERSION" ] || die "mvirt-pod-image printed no version"

say "building the .deb files"
MVIRT_DEB_COMPRESSION=none deploy/build-debs.sh --bin-dir "$BIN" --out "$WORK/debs" \
  --pod-artefacts "$CACHE/pod-artefacts-deploy" >"$WORK/build-debs.log" ||
  { cat "$WORK/build-debs.log"; die "build-debs.sh failed"; }
for pkg in mvirt-common mvirt-log mvirt-zfs mvirt-ebpf mvirt-vmm mvirt-api mvirt-node mvirt-cli \
  mvirt-pod-artefacts mvirt-vhost-device-vsock mvirt-hypervisor mvirt-controlplane; do
  ls "$WORK/debs/${pkg}_"*.deb >/dev/null 2>&1 || die "no $pkg package was built"
done
if [ -f mvirt-ui/package.json ]; then
  ls "$WORK/debs/mvirt-ui_"*.deb >/dev/null 2>&1 ||
    die "no mvirt-ui package: build the UI first (bash scripts/test-ui.sh --build-only)"
fi

say "storage: zfs-fuse pool $POOL (mounted in a shared subtree the daemons' namespace sees)"
# zfs-fuse is one daemon per machine, shared with the other tests (mvirt-testsupport::zfs).
if ! zpool list >/dev/null 2>&1; then
  (
    flock 9
    if ! zpool list >/dev/null 2>&1; then
      rm -f /var/run/zfs/zfs_socket
      zfs-fuse -p /run/mvirt-test-zfs-fuse.pid --no-kstat-mount
      for _ in $(seq 1 150); do zpool list >/dev/null 2>&1 && break; sleep 0.2; done
    fi
  ) 9>/tmp/mvirt-test-zfs-fuse.lock
  zpool list >/dev/null 2>&1 || die "zfs-fuse does not answer"
fi
mkdir -p "$WORK/shared/pool"
# zfs-fuse mounts datasets in its own (the host's) mount namespace: a shared mount lets those
# mounts reach the namespace the daemons run in.
mount --bind "$WORK/shared" "$WORK/shared"
mount --make-shared "$WORK/shared"
truncate -s 4G "$WORK/pool.img"
zpool create -m "$WORK/shared/pool/mnt" "$POOL" "$WORK/pool.img"

say "the guest template (mvirt-dev-image: Debian kernel, busybox initramfs, cached)"
"$BIN/mvirt-dev-image" "$WORK/images" >/dev/null

mkdir -p "$WORK/logs"
# Everything below runs in a mount and network namespace of its own.
unshare --mount --net --propagation slave -- \
  bash deploy/tests/node-from-debs.sh "$REPO" "$WORK" "$POOL" "$START" "$BIN" "$POD_VERSION"
say "passed"
