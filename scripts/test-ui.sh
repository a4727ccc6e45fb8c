#!/usr/bin/env bash
# The web UI's suites: npm dependencies from the lockfile (npm ci), type check, the Vitest
# unit/component tests, the production build (dist/, which mvirt-api serves with --ui-dir),
# then the end-to-end browser test against a real stack (cargo test -p mvirt-node --test
# ui_e2e). `--build-only` stops before the e2e test: scripts/test.sh uses it because its
# `cargo test --workspace` runs ui_e2e with every other test.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== mvirt-ui: npm ci and build"
bash scripts/build-ui.sh
cd mvirt-ui
echo "== mvirt-ui: format check and typecheck"
npm run --silent lint
echo "== mvirt-ui: vitest"
npx vitest run
cd ..

if [ "${1:-}" != "--build-only" ]; then
  echo "== mvirt-ui: end to end (headless Chromium against a real stack)"
  cargo test -p mvirt-node --test ui_e2e -- --nocapture
fi
