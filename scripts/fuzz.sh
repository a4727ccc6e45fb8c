#!/usr/bin/env bash
# The long fuzz runs: every stable-Rust fuzz target (`tests/fuzz_*.rs`) in a release build with
# many cases and a fresh seed. `cargo test` (CI) runs the same targets with a few thousand cases
# and a fixed seed. A failure prints `MVIRT_FUZZ_SEED=… MVIRT_FUZZ_CASE=…`: rerun that one case
# with `cargo test -p <crate> --test <target>` and those two variables.
#
#   scripts/fuzz.sh                  # 1,000,000 cases per target (the live NodeService target:
#                                    # 1/100 of that, each case is a gRPC call and a Raft write;
#                                    # the OCI layer target 1/10)
#   MVIRT_FUZZ_CASES=50000 scripts/fuzz.sh
#   MVIRT_FUZZ_SEED=42 scripts/fuzz.sh   # repeat an earlier run
#
# Needs root (the layer target chowns unpacked files; the NodeService target starts a member).
# Builds the three crates' tests in release (`target/release`, ~1.2 GB; check the free disk).
#
# Time per 1,000,000 cases on the shared 2-core machine (release, 2026-12-07, busy): responder
# 16–35 s per target, oci/json 21 s, api/raft-bodies 8 s, api/raft-frames 14 s,
# api/nodeservice-decode 42–58 s; api/nodeservice-live 2.6–4.4 s per 1,000 cases; oci/layers
# ~11 ms per case (each unpacks two layers on disk), so it gets 1/10 of the cases. Set
# MVIRT_FUZZ_CASES to fit the time you have; the release builds themselves take 10–30 min there.
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${MVIRT_FUZZ_CASES:-1000000}"
seed="${MVIRT_FUZZ_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
export MVIRT_FUZZ_SEED="$seed"
echo "== fuzzing with $cases cases per target, MVIRT_FUZZ_SEED=$seed"

status=0
# run <cases> <crate> <test target> [test binary arguments…]
run() {
  local n="$1" crate="$2" target="$3"; shift 3
  echo "== $crate $target $* ($n cases)"
  MVIRT_FUZZ_CASES="$n" cargo test --release -p "$crate" --test "$target" -- --nocapture "$@" \
    || status=1
}

run "$cases" mvirt-ebpf fuzz_responder
run "$cases" mvirt-one fuzz_oci manifests_indexes
run "$(( cases / 10 > 0 ? cases / 10 : 1 ))" mvirt-one fuzz_oci --skip manifests_indexes
run "$cases" mvirt-api fuzz_frames --skip nodeservice_answers
run "$(( cases / 100 > 0 ? cases / 100 : 1 ))" mvirt-api fuzz_frames nodeservice_answers
exit $status
