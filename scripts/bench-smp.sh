#!/usr/bin/env bash
# SMP benchmark: hvrun --cpus N and QEMU (-M microvm -smp N -accel kvm) booting the same
# minimal kernel and initramfs on the same KVM, side by side, for N = 1, 2, 4 (boot time,
# a CPU test on 1 and N threads, an IPI ping-pong; scripts/bench-smp.py says what is
# measured). Runs on the local /dev/kvm when it is hardware-backed, else in the sandbox.
#
#   scripts/bench-smp.sh [--cpus 1,2,4] [--secs S]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib/guest-env.sh
. "$repo/scripts/lib/guest-env.sh"
args=(python3 "$repo/scripts/bench-smp.py" --hvrun "$repo/target/release/hvrun" --kernel "$kernel" --initrd "$initrd" "$@")
on_kvm 2400 "${args[@]}"
