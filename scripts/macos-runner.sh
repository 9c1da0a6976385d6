#!/usr/bin/env bash
# cargo's runner for x86_64-apple-darwin (.cargo/config.toml): signs the binary cargo
# built with the hypervisor entitlement (hvrun.entitlements), then runs it with its
# arguments. So `cargo run` and `cargo test` on a Mac run signed binaries, which
# hv_vm_create requires. Linux builds never use it.
#
#   scripts/macos-runner.sh BINARY [ARGS...]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -ge 1 ]] || { echo "macos-runner: usage: $0 BINARY [ARGS...]" >&2; exit 2; }
# Quiet when it works (codesign --force says "replacing existing signature" every time).
if ! out=$(codesign -s - --entitlements "$repo/hvrun.entitlements" --force "$1" 2>&1); then
    echo "macos-runner: cannot sign $1: $out" >&2
    exit 1
fi
exec "$@"
