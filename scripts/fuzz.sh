#!/usr/bin/env bash
# Runs hvrun's fuzz targets (fuzz/fuzz_targets/) with cargo-fuzz and libFuzzer, each for a
# while, starting from the seeds in fuzz/seeds/ and the corpus kept in .cache/fuzz/.
#
#   scripts/fuzz.sh [--seconds N] [TARGET...]      (default: 20 s each, every target)
#
# Installs cargo-fuzz (pinned) if missing. Uses the stable toolchain with
# RUSTC_BOOTSTRAP=1 for the sanitizer flags, so no nightly is needed. A crash leaves its
# input under fuzz/artifacts/TARGET/ and makes this script fail.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=20
targets=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        -*) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    echo "fuzz: installing cargo-fuzz $cargo_fuzz_version" >&2
    cargo install --locked --version "$cargo_fuzz_version" cargo-fuzz
fi

cd "$repo/fuzz"
[[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    corpus="$repo/.cache/fuzz/$target"
    mkdir -p "$corpus"
    echo "=== fuzz: $target for ${seconds}s"
    # New inputs go to the first directory (the cache); the seeds are only read.
    cargo fuzz run "$target" "$corpus" "$repo/fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
done
