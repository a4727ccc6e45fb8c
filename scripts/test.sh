#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, every test. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log
