#!/usr/bin/env bash
# Installs everything hvrun's build and tests need on a Debian 12 machine.
# Idempotent: packages already installed and a kernel already unpacked are skipped.
#
#   scripts/setup.sh
#
# - apt packages: QEMU (the nested KVM sandbox, see scripts/sandbox.sh), busybox-static
#   and cpio (the sandbox initrd), Debian's Rust with its std sources (the macOS
#   type-check, scripts/check-macos.sh), a C toolchain (rustc links with cc).
# - the sandbox kernel: Debian's generic 6.1 kernel (the cloud flavour has no 9p),
#   unpacked with dpkg-deb into .cache/sandbox/ of the repository.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache/sandbox"

packages=(
    qemu-system-x86 busybox-static cpio          # the test sandbox
    rustc-web cargo-web rust-web-src             # scripts/check-macos.sh (-Zbuild-std)
    gcc libc6-dev                                # linker for host builds
    python3 xz-utils ca-certificates             # test.sh parses cargo's JSON; cargo's TLS
)

log() { echo "setup: $*" >&2; }

# shellcheck source=lib/apt.sh
. "$repo/scripts/lib/apt.sh"

# --- apt packages -------------------------------------------------------------------
apt_install_missing "${packages[@]}"

# --- sandbox kernel -----------------------------------------------------------------
# The concrete package (linux-image-6.1.0-NN-amd64) is the dependency of the
# metapackage linux-image-amd64.
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1
}
pkg=$(kernel_pkg || true)
if [[ -z $pkg ]]; then
    apt_update
    pkg=$(kernel_pkg || true)
fi
[[ -n $pkg ]] || { log "cannot resolve linux-image-amd64 to a kernel package"; exit 1; }

kdir="$cache/$pkg"
if [[ -f "$kdir/.unpacked" ]]; then
    log "sandbox kernel $pkg already unpacked"
else
    mkdir -p "$cache"
    rm -rf "$kdir" "$cache"/"$pkg"_*.deb
    log "downloading $pkg"
    # apt-get download writes into the current directory; running as root it warns that
    # user _apt cannot write there: harmless, silenced by downloading as root.
    download() { (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2); }
    with_update download
    deb=$(ls "$cache"/"$pkg"_*.deb)
    dpkg-deb -x "$deb" "$kdir.tmp"
    mv "$kdir.tmp" "$kdir"
    rm -f "$deb"
    touch "$kdir/.unpacked"
    log "unpacked $pkg into ${kdir#"$repo"/}"
fi
# sandbox.sh uses whatever "kernel" points to.
ln -sfn "$pkg" "$cache/kernel"
# Older kernels unpacked by earlier runs only waste space.
for old in "$cache"/linux-image-*; do
    [[ -e $old && $old != "$kdir" ]] && rm -rf "$old"
done
exit 0
