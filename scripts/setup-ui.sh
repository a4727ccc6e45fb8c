#!/usr/bin/env bash
# What the web UI (mvirt-ui) needs on the machine: Node.js ≥ 20 with npm (its build and tests),
# Chromium (the end-to-end browser test) and NSS's certutil (the test puts the cluster CA into
# the browser's certificate database, so Chromium trusts the API's TLS for real). Called by
# setup.sh; idempotent and quick.
set -euo pipefail

missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed" || missing+=(chromium)
command -v certutil >/dev/null || missing+=(libnss3-tools)
if ((${#missing[@]})); then
  echo "setup-ui: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Vite 8 needs Node 20.19 or newer (Debian 12's own nodejs is 18).
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'; then
  echo "setup-ui: Node.js $(node --version) is too old for mvirt-ui (needs ≥ 20.19)" >&2
  exit 1
fi
