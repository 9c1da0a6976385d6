#!/usr/bin/env bash
# Type-checks the workspace for macOS (x86_64-apple-darwin) on Linux, so that code behind
# #[cfg(target_os = "macos")] (the Hypervisor.framework bindings) keeps compiling.
#
#   scripts/check-macos.sh [EXTRA-CARGO-CHECK-ARGS...]
#
# There is no macOS standard library for rustup's toolchain here, so std is compiled
# from source (-Zbuild-std) with Debian's Rust: rustc-web/cargo-web and rust-web-src
# (std sources in /usr/lib/rustlib/src/rust/library). std's own dependencies (libc,
# hashbrown, gimli, ...) are fetched from crates.io at the versions of that source's
# Cargo.lock. RUSTC_BOOTSTRAP=1 unlocks -Z on the stable compiler.
# Only type-checking: nothing is linked, so no macOS SDK is needed.
# hvrun-tests (Linux end-to-end tests) is excluded.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# Installs Debian's Rust, or upgrades one older than the workspace's rust-version
# (quick when nothing is missing).
"$repo/scripts/setup.sh"

# Debian's cargo and rustc by absolute path, with rustup out of the way: rustup's proxies
# in ~/.cargo/bin would otherwise pick rustup's toolchain for rustc and build scripts.
# Own target directory (macos/ under CARGO_TARGET_DIR or target/): the two toolchains'
# artifacts would invalidate each other.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
unset RUSTUP_TOOLCHAIN CARGO_BUILD_RUSTC RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1

echo "check-macos: $(/usr/bin/cargo --version), $(/usr/bin/rustc --version)" >&2
exec /usr/bin/cargo check -Zbuild-std --target x86_64-apple-darwin \
    --target-dir "${CARGO_TARGET_DIR:-$repo/target}/macos" \
    --workspace --exclude hvrun-tests --all-targets "$@"
