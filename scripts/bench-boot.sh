#!/usr/bin/env bash
# Boot benchmark: hvrun and QEMU (-M microvm -accel kvm) booting the same minimal kernel
# and initramfs on the same KVM, side by side (scripts/bench-boot.py says what is
# measured). Runs on the local /dev/kvm when it is hardware-backed, else in the sandbox.
#
#   scripts/bench-boot.sh [--runs N]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib/guest-env.sh
. "$repo/scripts/lib/guest-env.sh"
args=(python3 "$repo/scripts/bench-boot.py" --hvrun "$repo/target/release/hvrun" --kernel "$kernel" --initrd "$initrd" "$@")
on_kvm 1800 "${args[@]}"
