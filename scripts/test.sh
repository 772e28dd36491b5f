#!/usr/bin/env bash
# Runs the whole test suite: the guests' and host's unit tests, then the end-to-end tests
# against the real binary and real components.
set -euo pipefail
cd "$(dirname "$0")/.."

# The key-value tests start redis-server instances of their own; the Python tests build
# apps with Python 3, venv and pip (componentize-py itself is installed by the build).
sudo=$(command -v sudo || true)
if ! command -v redis-server >/dev/null; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq redis-server
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq python3 python3-venv python3-pip
fi
scripts/build-guests.sh
# The release profile and the whole workspace, as scripts/demo.sh and bench/run.sh build:
# wasmtime is compiled once for all three (in the dev profile it was a second build, of 15
# to 45 minutes on a busy 2-core machine).
cargo test --workspace --release
