#!/usr/bin/env bash
# Sets up this machine and boots the demo guest (the minimal kernel and the busybox
# initramfs) with hvrun: a shell on the serial console; `exit` or `poweroff` ends it,
# Ctrl-A x quits. Extra arguments go to hvrun (e.g. --exit-stats, --append ...).
#
# With hardware virtualization hvrun runs here, on your terminal. Without it (KVM in
# software, as on the development machines) it runs inside the nested sandbox, whose
# console takes no input: there the guest boots, runs its `uptime` check instead of a
# shell, and powers off.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib/guest-env.sh
. "$repo/scripts/lib/guest-env.sh"
if [[ $("$repo/scripts/kvm-kind.sh") == hardware ]]; then
    exec "$repo/target/release/hvrun" "$@" "$kernel" "$initrd"
fi
echo "demo: no hardware virtualization here: booting inside the sandbox (no console input)" >&2
exec "$repo/scripts/sandbox.sh" --timeout 600 -- \
    "$repo/target/release/hvrun" --append hvrun.check=uptime "$@" "$kernel" "$initrd"
