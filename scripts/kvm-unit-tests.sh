#!/usr/bin/env bash
# kvm-unit-tests' x86 guests under hvrun and under QEMU -accel kvm on the same KVM, side
# by side (scripts/kvm-unit-tests.py says how tests are run and judged). On the local
# /dev/kvm when it is hardware-backed, else in the sandbox.
#
#   scripts/kvm-unit-tests.sh [--quick | --tests A,B,...] [--no-qemu] [--vmexit] [--max-timeout S]
#                              [--logs DIR] [--show N] [--timeout S (the sandbox's)]
#
# The suite: $HVRUN_KUT_DIR (a built checkout: its x86/ holds the .flat files and
# unittests.cfg), else ../shared/kvm-unit-tests beside the repository. Neither: one line
# says so and nothing is run (exit 0; nothing is reported as passed).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

timeout_s=2400
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --timeout) timeout_s=$2; shift 2 ;;
        --quick|--no-qemu|--vmexit) args+=("$1"); shift ;;
        --tests|--max-timeout|--logs|--show) args+=("$1" "$2"); shift 2 ;;
        *) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

suite=$("$repo/scripts/lib/kut-suite.sh") || {
    echo "kvm-unit-tests: no built suite (set HVRUN_KUT_DIR to a built kvm-unit-tests checkout, see README.md): not run"
    exit 0
}

"$repo/scripts/setup.sh" >&2
cargo build --profile e2e -p hvrun >&2
hvrun="${CARGO_TARGET_DIR:-$repo/target}/e2e/hvrun"
cmd=(python3 "$repo/scripts/kvm-unit-tests.py" --suite "$suite" --hvrun "$hvrun" "${args[@]}")
if [[ $("$repo/scripts/kvm-kind.sh") == hardware ]]; then
    "${cmd[@]}"
else
    "$repo/scripts/sandbox.sh" --timeout "$timeout_s" -- "${cmd[@]}"
fi
