#!/usr/bin/env bash
# Prints what backs this machine's /dev/kvm:
#   hardware  real VT-x/AMD-V: end-to-end tests use /dev/kvm directly;
#   software  /dev/kvm exists but runs guest kernel code in an instruction emulator
#             (~1000x slow, ignores KVM_SET_CPUID2): tests go through scripts/sandbox.sh;
#   none      no usable /dev/kvm.
#
# Heuristic: KVM can only use hardware virtualization if the CPU advertises it, and the
# kernel shows that as the vmx (Intel) or svm (AMD) flag in /proc/cpuinfo. The software
# KVM of the development machines shows neither flag. (A stricter probe would run a tiny
# guest and check that a KVM_SET_CPUID2 leaf is honoured; the flag has matched that
# probe on every machine seen so far.) HVRUN_KVM_KIND=hardware|software|none overrides.
set -euo pipefail

if [[ -n ${HVRUN_KVM_KIND:-} ]]; then
    echo "$HVRUN_KVM_KIND"
    exit 0
fi
if [[ ! -c /dev/kvm || ! -r /dev/kvm || ! -w /dev/kvm ]]; then
    echo none
elif grep -qE '^flags\s*:.*\<(vmx|svm)\>' /proc/cpuinfo; then
    echo hardware
else
    echo software
fi
