#!/usr/bin/env bash
# Builds the initramfs hvrun's tests and demo boot: busybox-static, guest/init, the
# checks of guest/checks/, the guest tools of guest/tools/ (each NAME.c built static into
# /bin/NAME), optionally kernel modules.
#
#   scripts/build-initramfs.sh [--out PATH] [--modules-from DIR --modules "NAME..."]
#
# --out: default .cache/guest/initramfs.cpio.gz (a gzip'd newc cpio). Prints PATH.
# --modules-from DIR: a kernel's module tree (DIR/lib/modules/VERSION, e.g. an unpacked
#   linux-image .deb). --modules: modules to load (dependencies are added; built-in ones
#   skipped); /init insmods them, dependencies first, before printing HVRUN-INIT-OK.
#
# Guest protocol (see guest/init): HVRUN-INIT-OK on the console; `hvrun.check=NAME` on
# the kernel command line runs /checks/NAME, prints HVRUN-CHECK-STATUS=<n> and powers
# off; without it, an interactive shell. Idempotent: PATH is rebuilt only when an input
# changed. Reproducible: same inputs, same bytes.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/kmod.sh
. "$repo/scripts/lib/kmod.sh"

out="$repo/.cache/guest/initramfs.cpio.gz"
modules_from=
modules=
busybox=/bin/busybox    # from busybox-static: must be static, the initramfs has no libc
cc=gcc                  # guest tools: static, so they run without a libc in the guest
cflags=(-static -O2 -s -Wall -Wextra)

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) [[ $# -ge 2 ]] || usage; out=$2; shift 2 ;;
        --modules-from) [[ $# -ge 2 ]] || usage; modules_from=$2; shift 2 ;;
        --modules) [[ $# -ge 2 ]] || usage; modules=$2; shift 2 ;;
        *) usage ;;
    esac
done
[[ $out == /* ]] || out="$PWD/$out"
die() { echo "build-initramfs: error: $*" >&2; exit 1; }
[[ -z $modules || -n $modules_from ]] || die "--modules needs --modules-from"

[[ -x $busybox ]] || die "$busybox missing: run scripts/setup.sh (busybox-static)"
# A dynamic busybox (the busybox package) would not run without a libc in the guest.
if ! LC_ALL=C readelf -d "$busybox" 2>/dev/null | grep -q 'There is no dynamic section'; then
    die "$busybox is not statically linked: install busybox-static"
fi
command -v cpio >/dev/null || die "cpio missing: run scripts/setup.sh"
tools=("$repo"/guest/tools/*.c)
[[ -e ${tools[0]} ]] || tools=()
if [[ ${#tools[@]} -gt 0 ]]; then
    command -v "$cc" >/dev/null || die "$cc missing: run scripts/setup.sh (gcc, libc6-dev)"
    libc_a=$("$cc" -print-file-name=libc.a)
    [[ -f $libc_a ]] || die "no static libc for $cc: run scripts/setup.sh (libc6-dev)"
fi

# --- modules --------------------------------------------------------------------------
resolved=()     # "name path", load order
if [[ -n $modules_from ]]; then
    vers=("$modules_from"/lib/modules/*/)
    [[ ${#vers[@]} -eq 1 && -d ${vers[0]} ]] ||
        die "$modules_from must hold exactly one lib/modules/VERSION"
    moddir=${vers[0]%/}
    # shellcheck disable=SC2086  # the list is space separated
    list=$(kmod_resolve "$moddir" $modules) || die "cannot resolve modules '$modules' in $moddir"
    [[ -z $list ]] || mapfile -t resolved <<<"$list"
fi

# --- up to date? ------------------------------------------------------------------------
# Everything the archive is made of: this script, init, checks, busybox, module files,
# the tools' sources and what builds them (the compiler, and the libc linked in).
key=$( {
    sha256sum "${BASH_SOURCE[0]}" "$repo/scripts/lib/kmod.sh" "$repo/guest/init" \
        "$repo"/guest/checks/* "$busybox"
    if [[ ${#tools[@]} -gt 0 ]]; then
        sha256sum "${tools[@]}" "$(readlink -f "$(command -v "$cc")")" "$libc_a"
        "$cc" --version | head -n1
    fi
    for r in "${resolved[@]}"; do
        echo "$r"; stat -L -c '%s %Y' "${r#* }"
    done
} | sha256sum | cut -c1-16)
if [[ -f $out && "$(cat "$out.key" 2>/dev/null)" == "$key" ]]; then
    echo "$out"
    exit 0
fi

# --- staging tree -----------------------------------------------------------------------
mkdir -p "$(dirname "$out")"
stage=$(mktemp -d "$(dirname "$out")/.initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,dev,proc,sys,run,tmp,root,checks,lib/modules}
chmod 1777 "$stage/tmp"
cp "$busybox" "$stage/bin/busybox"
# Applet links made here, not with `busybox --install` at boot: /init's #!/bin/sh needs
# one before anything runs, and it saves boot time.
for a in $("$busybox" --list); do
    [[ $a == busybox ]] || ln -s busybox "$stage/bin/$a"
done
install -m 755 "$repo/guest/init" "$stage/init"
for c in "$repo"/guest/checks/*; do install -m 755 "$c" "$stage/checks/${c##*/}"; done
# Compiled from guest/tools/ (relative names: no build path ends up in the binary).
for t in "${tools[@]}"; do
    n=${t##*/}; n=${n%.c}
    (cd "$repo/guest/tools" && "$cc" "${cflags[@]}" -o "$stage/bin/$n" "$n.c") ||
        die "building guest/tools/$n.c failed"
done
# No /dev/console here: the kernel's built-in initramfs provides it (the cpio is
# unpacked over it), and creating device nodes would need root.
for r in "${resolved[@]}"; do
    n=${r%% *}
    kmod_cat "${r#* }" >"$stage/lib/modules/$n.ko"
    echo "$n" >>"$stage/lib/modules/load-order"
done

# --- archive ----------------------------------------------------------------------------
# Reproducible: sorted names, fixed owner and mtimes, no inode/device numbers, gzip -n.
find "$stage" -exec touch -h -d @0 {} +
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc --quiet -R 0:0 --reproducible) | gzip -9 -n >"$out.tmp"
mv "$out.tmp" "$out"
echo "$key" >"$out.key"
if [[ ${#resolved[@]} -gt 0 ]]; then
    echo "build-initramfs: modules (load order): $(printf '%s\n' "${resolved[@]}" | cut -d' ' -f1 | tr '\n' ' ')" >&2
fi
echo "build-initramfs: wrote $out ($(stat -c %s "$out") bytes)" >&2
echo "$out"
