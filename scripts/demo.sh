#!/usr/bin/env bash
# Builds everything in release and serves the tasks app on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-guests.sh
# The whole workspace, as scripts/test.sh and bench/run.sh build it: the same set of crates
# resolves wasmtime's build-time dependencies alike, so wasmtime is compiled once for all
# three (built for wasm-gw alone, its macros' features differ and it is built again). Its
# binaries only: the guests are libraries for wasm32-wasip2 (build-guests.sh), and linked
# for this machine their exports' names (`wasm-gw:wsgi/handler@0.3.0#application`) break
# the linker's version script.
cargo build --release --workspace --bins
# The tasks live in ./wasm-gw-data/kv.sqlite: every worker shares them, and they survive
# a restart.
exec target/release/wasm-gw serve target/wasm32-wasip2/release/tasks.wasm --port 8000 "$@"
