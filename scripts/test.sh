#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, every test. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

bash scripts/test-ui.sh --build-only  # mvirt-ui: npm ci, typecheck, Vitest, dist/ for the ui_e2e test below

echo "== cargo test"
# zfs-fuse has been seen to deadlock when several pools create datasets at the same moment:
# mvirt-zfs's tests (many pools) run one at a time; everything else in parallel as usual.
status=0
log="${CARGO_TARGET_DIR:-target}/test-output.log"
mkdir -p "$(dirname "$log")"
cargo test --workspace --exclude mvirt-zfs --no-run 2>&1 | tee "$log" || status=1
# The two longest test binaries (mvirt-node's pods and migration: minutes each, mostly waiting for
# TCG guests and fencing timers) run beside the rest instead of after it; the rest skips their
# tests by exact name. They run from the package's directory, as cargo runs them.
side_log="${CARGO_TARGET_DIR:-target}/test-output-side.log"
side_bins=$(cargo test -p mvirt-node --test pods --test migration --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test) | .executable')
[[ $(wc -w <<<"$side_bins") -eq 2 ]] || { echo "test.sh: expected 2 side test binaries, got: $side_bins"; exit 1; }
skips=()
for bin in $side_bins; do
  while IFS= read -r name; do
    skips+=(--skip "$name")
  done < <("$bin" --list --format terse | sed -n 's/: test$//p')
done
(
  cd mvirt-node
  rc=0
  for bin in $side_bins; do
    echo "     Running (beside the rest) $bin"
    CARGO_MANIFEST_DIR="$PWD" "$bin" || rc=1
  done
  exit $rc
) >"$side_log" 2>&1 &
side_pid=$!
cargo test --workspace --exclude mvirt-zfs --no-fail-fast -- --exact "${skips[@]}" 2>&1 | tee -a "$log" || status=1
wait "$side_pid" || status=1
cat "$side_log" | tee -a "$log"
cargo test -p mvirt-zfs --no-fail-fast -- --test-threads=1 2>&1 | tee -a "$log" || status=1
bash scripts/test-deploy.sh 2>&1 | tee -a "$log" || status=1  # packaging: NixOS module flags, .debs boot a VM
exit $status
