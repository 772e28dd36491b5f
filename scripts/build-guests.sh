#!/usr/bin/env bash
# Builds every guest component into target/wasm32-wasip2/release/, installing the wasm
# target first if this toolchain lacks it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2 --workspace --exclude wasm-gw --exclude wasm-gw-bench
