#!/usr/bin/env bash
# Prints the directory holding kvm-unit-tests' x86 .flat files and unittests.cfg, or
# exits 1 if there is none: $HVRUN_KUT_DIR (a built checkout: its x86/, or the directory
# itself if the files are there; when set, nothing else is looked at), else
# ../shared/kvm-unit-tests beside the repository.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -n ${HVRUN_KUT_DIR:-} ]]; then
    candidates=("$HVRUN_KUT_DIR/x86" "$HVRUN_KUT_DIR")
else
    candidates=("$repo/../shared/kvm-unit-tests")
fi
for dir in "${candidates[@]}"; do
    if [[ -f $dir/unittests.cfg && -f $dir/ioapic.flat ]]; then
        cd "$dir" && pwd
        exit 0
    fi
done
exit 1
