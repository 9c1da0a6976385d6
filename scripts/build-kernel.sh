#!/usr/bin/env bash
# Builds hvrun's minimal test kernel (a bzImage) from Debian's linux-source-6.1.
#
#   scripts/build-kernel.sh [--out PATH]     (default: .cache/guest/bzImage-min)
#
# Recipe (docs: /work/shared/design/test-sandbox.md): `make tinyconfig`, merge
# guest/kernel-min.fragment, `make olddefconfig`, `make bzImage`. Fails if an option of
# the fragment did not survive olddefconfig (an unmet dependency silently drops it).
# Writes PATH and PATH.config (the kernel's .config). Idempotent: skipped when PATH was
# built from the same source package version and fragment; the source tree in
# .cache/kernel-build/ is kept, so a rebuild after a fragment change is incremental.
# Installs linux-source-6.1 and the build dependencies with apt when missing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fragment="$repo/guest/kernel-min.fragment"
out="$repo/.cache/guest/bzImage-min"
build="$repo/.cache/kernel-build"
tarball=/usr/src/linux-source-6.1.tar.xz

usage() { sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) [[ $# -ge 2 ]] || usage; out=$2; shift 2 ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
done
[[ $out == /* ]] || out="$PWD/$out"

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: error: $*" >&2; exit 1; }

# --- packages ------------------------------
packages=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev lz4
          xz-utils cpio)
# shellcheck source=lib/apt.sh
. "$repo/scripts/lib/apt.sh"
apt_install_missing "${packages[@]}"
[[ -f $tarball ]] || die "$tarball missing after installing linux-source-6.1"
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)

# --- up to date? ------------------------------------------------------------------------
# The key covers everything the image is built from: source version, fragment, compiler.
key=$( {
    echo "$src_version"
    cat "$fragment"
    gcc --version | head -n1
} | sha256sum | cut -c1-16)
if [[ -f $out && -f $out.config && "$(cat "$out.key" 2>/dev/null)" == "$key" ]]; then
    log "$out is up to date (linux-source $src_version)"
    exit 0
fi

# --- source tree ------------------------------------------------------------------------
tree="$build/linux-source-6.1"
if [[ "$(cat "$build/.unpacked" 2>/dev/null)" != "$src_version" ]]; then
    log "unpacking $tarball ($src_version)"
    rm -rf "$build"
    mkdir -p "$build"
    tar -C "$build" -xf "$tarball"
    [[ -d $tree ]] || die "$tarball did not unpack to linux-source-6.1/"
    echo "$src_version" >"$build/.unpacked"
fi

# --- configuration ----------------------------------------------------------------------
# Fixed build metadata: the same inputs give the same `uname -v` and a comparable image.
export KBUILD_BUILD_USER=hvrun KBUILD_BUILD_HOST=hvrun
export KBUILD_BUILD_TIMESTAMP
KBUILD_BUILD_TIMESTAMP=$(date -u -d "@$(stat -c %Y "$tarball")")
cd "$tree"
log "make tinyconfig + guest/kernel-min.fragment + olddefconfig"
# Kconfig's chatter (tiny.config's overrides) goes to a log, shown only on failure.
{
    make tinyconfig &&
    # -m: merge only; olddefconfig below resolves the dependencies and the choices.
    scripts/kconfig/merge_config.sh -m .config "$fragment" &&
    make olddefconfig
} >"$build/config.log" 2>&1 || { cat "$build/config.log" >&2; die "configuration failed"; }

# Every fragment line must be in the result as written (=y) or absent (is not set).
bad=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF -- "$line" .config || bad+=("${BASH_REMATCH[1]}: wanted ${BASH_REMATCH[2]}, got '$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" .config || echo unset)'")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        ! grep -q "^${BASH_REMATCH[1]}=" .config || bad+=("${BASH_REMATCH[1]}: wanted unset, got '$(grep "^${BASH_REMATCH[1]}=" .config)'")
    fi
done <"$fragment"
if [[ ${#bad[@]} -gt 0 ]]; then
    printf 'build-kernel: error: fragment option not in the final .config: %s\n' "${bad[@]}" >&2
    exit 1
fi

# --- build ------------------------------------------------------------------------------
log "make -j$(nproc) bzImage"
start=$SECONDS
make -s -j"$(nproc)" bzImage >&2
log "built in $((SECONDS - start)) s"

mkdir -p "$(dirname "$out")"
# Copy then rename: a reader never sees half a kernel; the key goes last.
cp arch/x86/boot/bzImage "$out.tmp" && mv "$out.tmp" "$out"
cp .config "$out.config"
echo "$key" >"$out.key"
log "wrote $out ($(stat -c %s "$out") bytes) and $out.config"
