#!/usr/bin/env bash
# Builds everything in release and serves the tasks app on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-guests.sh
cargo build --release -p wasm-gw
# The tasks live in ./wasm-gw-data/kv.sqlite: every worker shares them, and they survive
# a restart.
exec target/release/wasm-gw serve target/wasm32-wasip2/release/tasks.wasm --port 8000 "$@"
