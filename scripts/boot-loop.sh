#!/usr/bin/env bash
# Boot loop: consecutive boots of the minimal kernel, hvrun alternating with QEMU microvm
# on the same KVM, each with a deadline; a boot that hangs gets hvrun's state dump and
# every thread's backtrace before it is killed (scripts/boot-loop.py says more).
# Runs on the local /dev/kvm when it is hardware-backed, else in the sandbox.
#
#   scripts/boot-loop.sh [--boots N] [--deadline SECONDS] [--no-qemu]   (default 100 boots)
#
# HVRUN_KICK_MODE=kept runs it with the Linux layer keeping kicks sent outside run.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib/guest-env.sh
. "$repo/scripts/lib/guest-env.sh"
args=(python3 "$repo/scripts/boot-loop.py" --hvrun "$repo/target/release/hvrun" --kernel "$kernel" --initrd "$initrd"
    --boots 100 "$@")
on_kvm 5400 "${args[@]}"
