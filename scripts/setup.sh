#!/usr/bin/env bash
# Installs everything hvrun's build and tests need on a Debian 12 machine.
# Idempotent: packages already installed and a kernel already unpacked are skipped.
#
#   scripts/setup.sh
#
# - apt packages: QEMU (the nested KVM sandbox, see scripts/sandbox.sh), busybox-static
#   and cpio (the sandbox initrd), Debian's Rust with its std sources (the macOS
#   type-check, scripts/check-macos.sh), a C and C++ toolchain (rustc links with cc;
#   libFuzzer), e2fsprogs (the disk tests' ext4 images).
# - the sandbox kernel: Debian's generic 6.1 kernel (the cloud flavour has no 9p),
#   unpacked with dpkg-deb into .cache/sandbox/ of the repository.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache/sandbox"

packages=(
    qemu-system-x86 busybox-static cpio          # the test sandbox
    gcc libc6-dev                                # linker for host builds
    g++                                          # libFuzzer, built by scripts/fuzz.sh
    e2fsprogs                                    # ext4 disk images for the disk tests
    gdb                                          # backtraces of a hung hvrun (tests, boot loop)
    python3 xz-utils ca-certificates             # test.sh parses cargo's JSON; cargo's TLS
)

log() { echo "setup: $*" >&2; }

# shellcheck source=lib/apt.sh
. "$repo/scripts/lib/apt.sh"

# --- apt packages -------------------------------------------------------------------
apt_install_missing "${packages[@]}"

# Debian's Rust for scripts/check-macos.sh (-Zbuild-std): at least the workspace's
# rust-version, which the stale lists of a new machine do not offer.
rust_version=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
apt_require_version rustc-web "$rust_version" rustc-web cargo-web rust-web-src

# --- sandbox kernel -----------------------------------------------------------------
pkg=$(kernel_package linux-image-amd64)
kdir="$cache/$pkg"
if [[ -f "$kdir/.unpacked" ]]; then
    log "sandbox kernel $pkg already unpacked"
fi
unpack_package "$pkg" "$kdir"
# sandbox.sh uses whatever "kernel" points to.
ln -sfn "$pkg" "$cache/kernel"
# Older kernels unpacked by earlier runs only waste space.
for old in "$cache"/linux-image-*; do
    [[ -e $old && $old != "$kdir" ]] && rm -rf "$old"
done
exit 0
