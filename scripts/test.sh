#!/usr/bin/env bash
# Runs the whole test suite: the guests' and host's unit tests, then the end-to-end tests
# against the real binary and real components.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-guests.sh
cargo test --workspace
