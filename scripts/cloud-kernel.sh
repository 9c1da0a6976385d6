#!/usr/bin/env bash
# Fetches Debian's cloud kernel and builds an initramfs for it; prints both paths.
#
#   scripts/cloud-kernel.sh        -> KERNEL=<vmlinuz> and INITRD=<initramfs> lines
#
# Why: the realistic guest next to the minimal kernel (scripts/guest-kernel.sh).
# Debian's linux-image-*-cloud-amd64 is ACPI-only (no MP table, no virtio_mmio.device=)
# and has virtio-mmio/virtio-blk as modules, so its initramfs (scripts/build-initramfs.sh)
# loads virtio_ring virtio virtio_mmio virtio_blk (built-in ones are skipped).
# The package is resolved from the metapackage linux-image-cloud-amd64, downloaded with
# apt-get download and unpacked with dpkg-deb into .cache/guest/. Idempotent: an
# unpacked kernel and an up-to-date initramfs are reused; older kernels are removed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache/guest"
modules="virtio_ring virtio virtio_mmio virtio_blk"

log() { echo "cloud-kernel: $*" >&2; }
die() { echo "cloud-kernel: error: $*" >&2; exit 1; }

# shellcheck source=lib/apt.sh
. "$repo/scripts/lib/apt.sh"

pkg=$(kernel_package linux-image-cloud-amd64) || die "no cloud kernel package"
kdir="$cache/$pkg"
unpack_package "$pkg" "$kdir"
# Kernels and initramfs images of superseded packages only waste space.
for old in "$cache"/linux-image-*-cloud-amd64 "$cache"/initramfs-linux-image-*-cloud-amd64.cpio.gz; do
    [[ -e $old && $old != "$kdir" && $old != "$cache/initramfs-$pkg.cpio.gz" ]] &&
        rm -rf "$old" "$old.key"
done

vers=("$kdir"/lib/modules/*/)
[[ ${#vers[@]} -eq 1 && -d ${vers[0]} ]] || die "$kdir: expected one lib/modules/VERSION"
kver=$(basename "${vers[0]}")
vmlinuz="$kdir/boot/vmlinuz-$kver"
[[ -f $vmlinuz ]] || die "$vmlinuz missing"

initrd=$("$repo/scripts/build-initramfs.sh" --out "$cache/initramfs-$pkg.cpio.gz" \
    --modules-from "$kdir" --modules "$modules")

echo "KERNEL=$vmlinuz"
echo "INITRD=$initrd"
