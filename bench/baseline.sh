#!/usr/bin/env bash
# Builds wasm-gw and the hello guest as they were at a past commit, for
# `bench/run.sh --baseline DIR`, which runs them side by side with this tree's:
#   bench/baseline.sh 552560d     prints the directory it filled
# The commit's sources go to target/bench-baseline/src, its build to
# target/bench-baseline/target, which starts as a copy of this tree's release build so
# that only the workspace's own crates compile again (a minute, not wasmtime's ten).
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --short "${1:?usage: bench/baseline.sh COMMIT}")
base=target/bench-baseline
out=$base/$commit
if [[ -x $out/wasm-gw && -f $out/hello.wasm ]]; then
    echo "$out"
    exit 0
fi
rm -rf "$base/src"
mkdir -p "$base/src" "$out"
git archive "$commit" | tar -x -C "$base/src"
build=$PWD/$base/target
if [[ ! -d $build/release ]]; then
    mkdir -p "$build"
    cp -a target/release "$build/release" >&2
    [[ -d target/wasm32-wasip2 ]] && cp -a target/wasm32-wasip2 "$build/wasm32-wasip2" >&2
fi
(
    cd "$base/src"
    CARGO_TARGET_DIR=$build cargo build --release -p wasm-gw >&2
    CARGO_TARGET_DIR=$build cargo build --release --target wasm32-wasip2 -p hello >&2
)
cp "$build/release/wasm-gw" "$out/wasm-gw"
cp "$build/wasm32-wasip2/release/hello.wasm" "$out/hello.wasm"
echo "$out"
