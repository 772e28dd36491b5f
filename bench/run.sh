#!/usr/bin/env bash
# Builds everything in release and runs the benchmark; writes bench/RESULTS.md.
#   bench/run.sh --baseline "$(bench/baseline.sh COMMIT)"   also hello as COMMIT built it
#   bench/run.sh           the full run (about 10 minutes)
#   bench/run.sh --quick   one short run of each scenario (under 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in wrk redis-server; do
    if ! command -v "$tool" >/dev/null; then
        apt-get update -qq && apt-get install -y -qq "$tool"
    fi
done
scripts/build-guests.sh
# The whole workspace, as scripts/demo.sh and scripts/test.sh build it: one wasmtime build.
# Its binaries only: see scripts/demo.sh.
cargo build --release --workspace --bins
exec target/release/wasm-gw-bench "$@"
