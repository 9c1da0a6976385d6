#!/usr/bin/env bash
# Boots a guest kernel + initramfs under QEMU: the reference behaviour hvrun's guests
# are checked against (and a quick test of the guest images themselves).
#
#   scripts/qemu-guest.sh [--machine M] [--accel A] [--mem SIZE] [--timeout SECS]
#                         [--input LINE] KERNEL INITRD [KERNEL-ARGS...]
#
# Defaults: --machine microvm --accel tcg --mem 256M --timeout 300; the command line is
# "console=ttyS0 panic=-1 KERNEL-ARGS..." (e.g. hvrun.check=uptime). --input sends LINE
# to the console once the guest prints HVRUN-ECHO-READY (the `echo` check).
# Prints the console, then "qemu-guest: exit=<QEMU status> init-ok=<s> total=<s>"
# (wall seconds from start to HVRUN-INIT-OK, to QEMU's exit). Exit status: 0 if the
# guest printed HVRUN-INIT-OK and QEMU exited by itself (poweroff, or reset with
# -no-reboot) with status 0; 1 otherwise; 124 on timeout.
set -euo pipefail

machine=microvm accel=tcg mem=256M timeout_s=300 input="" input_set=0
usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --machine) machine=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --input) input=$2; input_set=1; shift 2 ;;
        -*) usage ;;
        *) break ;;
    esac
done
[[ $# -ge 2 ]] || usage
kernel=$1 initrd=$2
shift 2

run=$(mktemp -d)
qemu_pid=
cleanup() {
    [[ -z $qemu_pid ]] || kill "$qemu_pid" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
mkfifo "$run/in"

start=$(date +%s.%N)
# stdin from a FIFO held open by us: input can be sent later, and QEMU never sees EOF.
qemu-system-x86_64 -M "$machine" -accel "$accel" -m "$mem" -nographic -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 panic=-1 $*" \
    <"$run/in" >"$run/console" 2>&1 &
qemu_pid=$!
exec 3>"$run/in"

init_ok=- rc=
deadline=$(( $(date +%s) + timeout_s ))
while kill -0 "$qemu_pid" 2>/dev/null; do
    if [[ $init_ok == - ]] && grep -q HVRUN-INIT-OK "$run/console"; then
        init_ok=$(echo "$(date +%s.%N) - $start" | bc)
    fi
    if [[ $input_set -eq 1 ]] && grep -q HVRUN-ECHO-READY "$run/console"; then
        printf '%s\r' "$input" >&3      # \r: what a terminal's Enter sends
        input_set=0
    fi
    if [[ $(date +%s) -ge $deadline ]]; then
        kill "$qemu_pid"; rc=124; break
    fi
    sleep 0.05
done
set +e; wait "$qemu_pid"; qrc=$?; set -e
qemu_pid=
[[ $init_ok != - ]] || ! grep -q HVRUN-INIT-OK "$run/console" ||
    init_ok=$(echo "$(date +%s.%N) - $start" | bc)   # printed just before exiting
total=$(echo "$(date +%s.%N) - $start" | bc)
tr -d '\r' <"$run/console"
echo "qemu-guest: exit=$qrc init-ok=$init_ok total=$total" >&2
[[ -z $rc ]] || exit "$rc"
[[ $qrc -eq 0 && $init_ok != - ]]
