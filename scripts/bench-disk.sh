#!/usr/bin/env bash
# Disk benchmark: hvrun's virtio-mmio block device and QEMU's virtio-blk (-M microvm
# -accel kvm), the same kernel, initramfs and disk image, on the same KVM, side by side
# (scripts/bench-disk.py says what is measured and how). Runs on the local /dev/kvm when
# it is hardware-backed, else in the sandbox (slow: nested KVM under TCG; there the image
# lives in the sandbox's /tmp, a tmpfs).
#
#   scripts/bench-disk.sh [--runs N] [--mib MIB] [--bs KIB] [--secs S] [--disk-mib MIB]
#                         [--mem SIZE] [--only hvrun|qemu]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib/guest-env.sh
. "$repo/scripts/lib/guest-env.sh"
args=(python3 "$repo/scripts/bench-disk.py" --hvrun "$repo/target/release/hvrun" --kernel "$kernel" --initrd "$initrd" "$@")
on_kvm 3600 "${args[@]}"
