#!/usr/bin/env bash
# Builds the web UI (mvirt-ui/dist, served by mvirt-api --ui-dir) from its lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-ui.sh
cd mvirt-ui
npm ci --no-audit --no-fund --loglevel=error
npx vite build --logLevel warn
echo "built $(pwd)/dist"
