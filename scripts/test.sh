#!/usr/bin/env bash
# Runs the whole test suite: the guests' and host's unit tests, then the end-to-end tests
# against the real binary and real components.
set -euo pipefail
cd "$(dirname "$0")/.."

# The key-value tests start redis-server instances of their own.
if ! command -v redis-server >/dev/null; then
    sudo=$(command -v sudo || true)
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq redis-server
fi
scripts/build-guests.sh
cargo test --workspace
