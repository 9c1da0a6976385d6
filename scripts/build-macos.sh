#!/usr/bin/env bash
# Builds hvrun for an Intel Mac and signs it with the hypervisor entitlement; prints the
# binary's path.
#
#   scripts/build-macos.sh [EXTRA-CARGO-BUILD-ARGS...]
#
# hv_vm_create refuses a binary without com.apple.security.hypervisor (hvrun.entitlements),
# so every build must be signed: ad hoc (-s -) is enough, no Apple developer identity.
# `cargo run` signs too (scripts/macos-runner.sh, the runner in .cargo/config.toml).
# The deployment target is the minimum macOS hvrun accepts (vmm/src/host.rs, MIN_MACOS):
# the linker then records it, and every Hypervisor.framework function hvrun imports
# exists there. Needs the Xcode command-line tools (linker, codesign) and rustup's Rust.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
target=x86_64-apple-darwin
# Keep in step with vmm::host::MIN_MACOS.
export MACOSX_DEPLOYMENT_TARGET=11.0

log() { echo "build-macos: $*" >&2; }
die() { echo "build-macos: error: $*" >&2; exit 1; }

[[ $(uname -s) == Darwin ]] || die "this builds the macOS binary on a Mac (on Linux: cargo build, or scripts/check-macos.sh to type-check the macOS code)"
command -v codesign >/dev/null || die "codesign missing: install the Xcode command-line tools (xcode-select --install)"
command -v cargo >/dev/null || die "cargo missing: install Rust with rustup (https://rustup.rs)"
# Apple silicon can build it (with `rustup target add x86_64-apple-darwin`) but not run
# it: Hypervisor.framework has no Intel API there, Rosetta or not.
if [[ $(sysctl -n hw.optional.arm64 2>/dev/null || echo 0) == 1 ]]; then
    log "note: this is Apple silicon; the binary runs only on an Intel Mac"
fi

cargo build --release -p hvrun --target "$target" "$@"
bin="${CARGO_TARGET_DIR:-$repo/target}/$target/release/hvrun"
[[ -x $bin ]] || die "$bin missing after the build"
codesign -s - --entitlements "$repo/hvrun.entitlements" --force "$bin"
# The entitlement must be in the signature, or hv_vm_create fails at run time.
# (Captured, not piped into grep -q: with pipefail an early grep exit could fail codesign.)
entitlements=$(codesign -d --entitlements - "$bin" 2>/dev/null) || true
[[ $entitlements == *com.apple.security.hypervisor* ]] ||
    die "$bin: the signature lacks com.apple.security.hypervisor"
log "signed $bin"
echo "$bin"
