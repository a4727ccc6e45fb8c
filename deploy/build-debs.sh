#!/usr/bin/env bash
# Builds mvirt's Debian packages from binaries that are already built, with dpkg-deb: no second
# build. The files each package installs besides its binary (systemd unit, /etc/mvirt/*.env,
# sysusers/tmpfiles/modules-load/sysctl snippets, maintainer scripts) come from deploy/debian/,
# which deploy/gen.py writes from deploy/services.toml.
#
# Usage: deploy/build-debs.sh [--bin-dir DIR] [--out DIR] [--ui-dist DIR] [--pod-artefacts DIR]
#                             [--vhost-device-vsock PATH]
#   --bin-dir        where mvirt-log, mvirt-vmm, ..., mvirt are (default: target/release)
#   --out            where the .deb files go (default: target/debian)
#   --ui-dist        the built web UI (default: mvirt-ui/dist; without it no mvirt-ui package)
#   --pod-artefacts  the built pod artefacts (scripts/build-pod-artefacts.sh DIR; without it no
#                    mvirt-pod-artefacts package): installed to /usr/lib/mvirt/pod-artefacts
#   --vhost-device-vsock  the vhost-device-vsock binary (`cargo install vhost-device-vsock`;
#                    default: the one on PATH or in ~/.cargo/bin; without one no
#                    mvirt-vhost-device-vsock package): installed to /usr/bin
# Environment: MVIRT_DEB_VERSION (default: the workspace version), MVIRT_DEB_COMPRESSION
# (dpkg-deb -Z: xz by default; the tests use none).
#
# Build the binaries first, e.g. `cargo build --release --bins -p mvirt-log -p mvirt-zfs
# -p mvirt-ebpf -p mvirt-vmm -p mvirt-api -p mvirt-node -p mvirt-cli`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/target/release
OUT=$ROOT/target/debian
UI_DIST=$ROOT/mvirt-ui/dist
POD_ARTEFACTS=""
VHOST_VSOCK=$(command -v vhost-device-vsock || true)
if [ -z "$VHOST_VSOCK" ] && [ -x "${HOME:-/root}/.cargo/bin/vhost-device-vsock" ]; then
  VHOST_VSOCK=${HOME:-/root}/.cargo/bin/vhost-device-vsock
fi
while [ $# -gt 0 ]; do
  case $1 in
    --bin-dir) BIN=$(realpath "$2"); shift 2 ;;
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --ui-dist) UI_DIST=$(realpath -m "$2"); shift 2 ;;
    --pod-artefacts) POD_ARTEFACTS=$(realpath -m "$2"); shift 2 ;;
    --vhost-device-vsock) VHOST_VSOCK=$(realpath -m "$2"); shift 2 ;;
    *) echo "build-debs.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
VERSION=${MVIRT_DEB_VERSION:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)}
COMPRESSION=${MVIRT_DEB_COMPRESSION:-xz}
ARCH=$(dpkg --print-architecture)
die() { echo "build-debs.sh: $*" >&2; exit 1; }

python3 deploy/gen.py --check || die "deploy/debian/ is stale: run deploy/gen.py"

# binary_of PACKAGE: the executable a package carries (none for mvirt-common, metapackages, UI).
binary_of() {
  case $1 in
    mvirt-cli) echo mvirt ;;
    mvirt-log | mvirt-zfs | mvirt-ebpf | mvirt-vmm | mvirt-api | mvirt-node) echo "$1" ;;
    mvirt-vhost-device-vsock) echo vhost-device-vsock ;;
    *) echo "" ;;
  esac
}

# shlibs_of BINARY: the Depends line dpkg-shlibdeps computes for it.
shlibs_of() {
  local dir
  dir=$(mktemp -d)
  mkdir -p "$dir/debian"
  printf 'Source: mvirt\n\nPackage: mvirt\nArchitecture: any\n' >"$dir/debian/control"
  (cd "$dir" && dpkg-shlibdeps -O "$1" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
  rm -rf "$dir"
}

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$OUT"
rm -f "$OUT"/*.deb
for template in deploy/debian/*/; do
  pkg=$(basename "$template")
  bin=$(binary_of "$pkg")
  dir=$STAGE/$pkg
  cp -a "$template" "$dir"
  # A clone carries only the executable bit: give each file the mode gen.py made it with.
  while read -r mode rel; do
    case $rel in
      "$pkg"/*) [ -e "$STAGE/$rel" ] && chmod "$mode" "$STAGE/$rel" ;;
    esac
  done < <(python3 deploy/gen.py --modes)
  src_bin=$BIN/$bin
  if [ "$pkg" = mvirt-vhost-device-vsock ]; then
    if [ -z "$VHOST_VSOCK" ]; then
      echo "build-debs.sh: no vhost-device-vsock (cargo install vhost-device-vsock): no $pkg package"
      continue
    fi
    src_bin=$VHOST_VSOCK
  fi
  if [ -n "$bin" ]; then
    [ -x "$src_bin" ] || die "$src_bin is missing: build it first"
    install -D -m 0755 "$src_bin" "$dir/usr/bin/$bin"
    strip --strip-unneeded "$dir/usr/bin/$bin"
  fi
  case $pkg in
    mvirt-common)
      install -D -m 0644 docs/deploy.md "$dir/usr/share/doc/mvirt-common/deploy.md" ;;
    mvirt-ui)
      if [ ! -f "$UI_DIST/index.html" ]; then
        echo "build-debs.sh: no built UI in $UI_DIST (npm run build in mvirt-ui/): no mvirt-ui package"
        continue
      fi
      mkdir -p "$dir/usr/share/mvirt"
      cp -r "$UI_DIST" "$dir/usr/share/mvirt/ui"
      chmod -R u=rwX,go=rX "$dir/usr/share/mvirt/ui" ;;
    mvirt-pod-artefacts)
      if [ -z "$POD_ARTEFACTS" ]; then
        echo "build-debs.sh: no --pod-artefacts DIR: no mvirt-pod-artefacts package"
        continue
      fi
      # Every file the manifest lists, with its digest (what mvirt-vmm verifies at first use).
      python3 - "$POD_ARTEFACTS" <<'PY' || die "$POD_ARTEFACTS: not complete pod artefacts (scripts/build-pod-artefacts.sh)"
import hashlib, json, sys
from pathlib import Path
d = Path(sys.argv[1])
files = json.loads((d / "manifest.json").read_text())["files"]
assert set(files) == {"vmlinuz", "initramfs.img"}, sorted(files)
for name, f in files.items():
    data = (d / name).read_bytes()
    assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"], name
PY
      for f in vmlinuz initramfs.img manifest.json; do
        install -D -m 0644 "$POD_ARTEFACTS/$f" "$dir/usr/lib/mvirt/pod-artefacts/$f"
      done ;;
  esac
  shlibs=""
  [ -n "$bin" ] && shlibs=$(shlibs_of "$dir/usr/bin/$bin")
  size=$(du -sk --exclude=DEBIAN "$dir" | cut -f1)
  sed -e "s/@VERSION@/$VERSION/g" -e "s/@ARCH@/$ARCH/g" -e "s/@SIZE@/$size/g" \
    -e "s/\${shlibs:Depends}/$shlibs/" -e 's/^Depends: , /Depends: /' \
    "$dir/DEBIAN/control.in" >"$dir/DEBIAN/control"
  rm "$dir/DEBIAN/control.in"
  deb_arch=$(sed -n 's/^Architecture: //p' "$dir/DEBIAN/control")
  dpkg-deb --root-owner-group -Z"$COMPRESSION" --build "$dir" "$OUT/${pkg}_${VERSION}_${deb_arch}.deb" >/dev/null
  echo "built $OUT/${pkg}_${VERSION}_${deb_arch}.deb"
done
