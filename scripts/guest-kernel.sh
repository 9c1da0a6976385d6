#!/usr/bin/env bash
# Prints the path of the minimal test kernel (bzImage) for hvrun's tests and demo.
#
#   scripts/guest-kernel.sh
#
# Order: the shared prebuilt one ($repo/../shared/guest/bzImage-min) when present, else
# the locally built .cache/guest/bzImage-min, building it with scripts/build-kernel.sh
# (a few minutes) when neither exists. Build messages go to stderr; stdout is the path.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared="$repo/../shared/guest/bzImage-min"
local_k="$repo/.cache/guest/bzImage-min"

if [[ -f $shared ]]; then
    # Normalised (no ..) so it can be logged and compared.
    echo "$(cd "$(dirname "$shared")" && pwd -P)/bzImage-min"
    exit 0
fi
# build-kernel.sh is idempotent, but it checks packages and hashes inputs: only call it
# when there is no kernel at all.
[[ -f $local_k ]] || "$repo/scripts/build-kernel.sh" --out "$local_k" >&2
echo "$local_k"
