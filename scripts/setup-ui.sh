#!/usr/bin/env bash
# What the web UI (mvirt-ui) needs on the machine: Node.js ≥ 20.19 with npm (its build and
# tests; Vite 8 needs 20.19), Chromium (the end-to-end browser test) and NSS's certutil (the test
# puts the cluster CA into the browser's certificate database, so Chromium trusts the API's TLS
# for real). Called by setup.sh; idempotent and quick.
#
# Debian 12's own nodejs is 18, too old. When no Node.js ≥ 20.19 is on PATH, Debian's nodejs and
# npm are installed (apt) only to fetch a pinned Node.js 20 from the npm registry — the
# `node-linux-<arch>` package holds the official binary (`bin/node`; it is what the `node` npm
# package installs) — together with a pinned npm, into $MVIRT_NODE_PREFIX (/opt/mvirt-node).
# Links to them go into $MVIRT_NODE_BIN_DIR (/usr/local/bin, ahead of /usr/bin on Debian's PATH):
# node, npm, npx. No other download site is needed: apt and the npm registry only.
set -euo pipefail

NODE_VERSION=20.20.2 # the Node.js 20 installed when the machine has none ≥ 20.19
NPM_VERSION=10.8.2   # the npm that Node.js 20.20 ships with
PREFIX=${MVIRT_NODE_PREFIX:-/opt/mvirt-node}
BIN_DIR=${MVIRT_NODE_BIN_DIR:-/usr/local/bin}

# Node.js 20.19 or newer on PATH?
node_ok() {
  command -v node >/dev/null &&
    node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' 2>/dev/null
}

apt_install() {
  echo "setup-ui: installing $* (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed" || missing+=(chromium)
command -v certutil >/dev/null || missing+=(libnss3-tools)
if ! node_ok; then
  # Debian's node and npm, only to run npm against the registry once.
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi
if ((${#missing[@]})); then
  apt_install "${missing[@]}"
fi

if ! node_ok; then
  case "$(dpkg --print-architecture)" in
  amd64) arch=x64 ;;
  arm64) arch=arm64 ;;
  *)
    echo "setup-ui: no Node.js binary package for $(dpkg --print-architecture) on the npm registry" >&2
    exit 1
    ;;
  esac
  echo "setup-ui: Node.js $(node -p process.versions.node 2>/dev/null || echo none) on PATH; installing Node.js $NODE_VERSION and npm $NPM_VERSION from the npm registry into $PREFIX"
  mkdir -p "$PREFIX" "$BIN_DIR"
  npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    "node-linux-$arch@$NODE_VERSION" "npm@$NPM_VERSION"
  ln -sfn "$PREFIX/node_modules/node-linux-$arch/bin/node" "$BIN_DIR/node"
  ln -sfn "$PREFIX/node_modules/npm/bin/npm-cli.js" "$BIN_DIR/npm"
  ln -sfn "$PREFIX/node_modules/npm/bin/npx-cli.js" "$BIN_DIR/npx"
  hash -r
  if [ "$(command -v node)" != "$BIN_DIR/node" ]; then
    echo "setup-ui: $BIN_DIR is not ahead of $(dirname "$(command -v node)") on PATH; put it first" >&2
    exit 1
  fi
fi

if ! node_ok; then
  echo "setup-ui: Node.js $(node --version) is too old for mvirt-ui (needs ≥ 20.19)" >&2
  exit 1
fi
echo "setup-ui: Node.js $(node --version), npm $(npm --version)"
