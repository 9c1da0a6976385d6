#!/usr/bin/env bash
# The project's test command.
#
#   scripts/test.sh [-- TEST-BINARY-ARGS...]      e.g. scripts/test.sh -- serial
#
# 1. scripts/setup.sh (installs what is missing);
# 2. unit tests on the host: cargo test --workspace --exclude hvrun-tests (no KVM needed);
# 3. end-to-end tests (package hvrun-tests, Cargo profile e2e): built on the host, then
#    every test binary runs with --test-threads=1 (one VM per process), either on the
#    local /dev/kvm when it is hardware-backed, or else in two boots of
#    scripts/sandbox.sh (VMs with a real KVM) running at once, each with half of the
#    binaries. They see HVRUN_KVM=hardware|sandbox.
# Ends with the line "N passed, N failed" (summed over every libtest result line) and
# exits non-zero if a test failed, a test binary crashed, a build or the sandbox failed.
#
# Environment: HVRUN_SANDBOX_TIMEOUT (seconds, default 2700), HVRUN_SANDBOX_MEM (8G),
# HVRUN_KVM_KIND (forces scripts/kvm-kind.sh's answer, e.g. software to test the sandbox
# path on a hardware machine).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

test_args=()
if [[ $# -gt 0 ]]; then
    [[ $1 == -- ]] || { sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
    shift
    test_args=("$@")
fi

"$repo/scripts/setup.sh"

mkdir -p "$repo/.cache"
work=$(mktemp -d "$repo/.cache/test.XXXXXX")
trap 'rm -rf "$work"' EXIT

problems=()   # one line per failure that is not a failing test (build, crash, sandbox)

# The minimal guest kernel: the boot crate's unit tests load it, the boot tests run it.
# Built from the recipe (scripts/build-kernel.sh) where there is no shared/ beside the
# repository, as in a user's clone.
HVRUN_GUEST_KERNEL=$("$repo/scripts/guest-kernel.sh")
export HVRUN_GUEST_KERNEL HVRUN_TEST_KERNEL=$HVRUN_GUEST_KERNEL

# --- unit tests on the host ------------------------------------------------------------
echo "=== unit tests (host)"
set +e
cargo test --workspace --exclude hvrun-tests -- "${test_args[@]}" 2>&1 | tee "$work/host.log"
rc=${PIPESTATUS[0]}
set -e
[[ $rc -eq 0 ]] || problems+=("host unit tests: cargo test exited with $rc")

# --- end-to-end tests ------------------------------------------------------------------
has_e2e=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(any(p["name"] == "hvrun-tests" for p in json.load(sys.stdin)["packages"]))')
# Where cargo puts what it builds (CARGO_TARGET_DIR moves it out of the repository).
target_dir=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [[ $has_e2e != True ]]; then
    echo "=== end-to-end tests: no package hvrun-tests in the workspace, skipped"
else
    echo "=== end-to-end tests: building (tests, the hvrun command, the guests)"
    set +e
    # Profile e2e (Cargo.toml): optimised, with debug checks; the tests run the hvrun
    # built beside them (<target dir>/e2e/hvrun).
    cargo build --profile e2e -p hvrun &&
        cargo test --profile e2e -p hvrun-tests --no-run --message-format=json >"$work/build.json"
    rc=$?
    set -e
    # The guests the boot tests run (cached under .cache/guest; see the scripts).
    HVRUN_GUEST_INITRD=$("$repo/scripts/build-initramfs.sh")
    cloud=$("$repo/scripts/cloud-kernel.sh")
    HVRUN_CLOUD_KERNEL=$(sed -n 's/^KERNEL=//p' <<<"$cloud")
    HVRUN_CLOUD_INITRD=$(sed -n 's/^INITRD=//p' <<<"$cloud")
    export HVRUN_GUEST_KERNEL HVRUN_GUEST_INITRD HVRUN_CLOUD_KERNEL HVRUN_CLOUD_INITRD
    # Test executables and the package directory (cargo runs tests from there).
    python3 - "$work/build.json" >"$work/exes" <<'EOF'
import json, os, sys
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and msg.get("profile", {}).get("test") and msg["package_id"].find("hvrun-tests") >= 0:
        print(os.path.dirname(msg["manifest_path"]) + "\t" + msg["executable"])
EOF
    if [[ $rc -ne 0 ]]; then
        problems+=("end-to-end tests: build failed (cargo exited with $rc)")
    elif [[ ! -s $work/exes ]]; then
        problems+=("end-to-end tests: cargo built no test executables")
    else
        kind=$("$repo/scripts/kvm-kind.sh")
        [[ $kind == hardware ]] && mode=hardware || mode=sandbox
        # The binaries go into two groups of about equal length (seconds each binary
        # took in the sandbox, roughly; unknown ones count 30), the longest first; each
        # group is one script that runs its binaries in sequence. In the sandbox the two
        # groups run at once, in two sandboxes (each is one emulated CPU, and machines
        # here have two cores); on hardware KVM one after the other.
        python3 - "$work/exes" "$work" <<'PY'
import os, sys
weights = {"kick_stress": 230, "smp": 240, "boot": 140, "disk": 150, "kvm_unit_tests": 90,
           "interrupts": 120, "linux_layer": 60, "mmio": 40, "msr": 30, "faults": 30}
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
def weight(row):
    name = os.path.basename(row[1]).rsplit("-", 1)[0].replace("-", "_")
    return weights.get(name, 30)
groups, totals = [[], []], [0, 0]
for row in sorted(rows, key=weight, reverse=True):
    g = totals.index(min(totals))
    groups[g].append(row)
    totals[g] += weight(row)
for g, rows in enumerate(groups):
    with open(f"{sys.argv[2]}/exes.{g}", "w") as f:
        for row in rows:
            f.write("\t".join(row) + "\n")
PY
        for g in 0 1; do
        {
            echo '#!/bin/bash'
            echo 'rc=0'
            while IFS=$'\t' read -r dir exe; do
                printf 'echo "     Running %s"\n' "${exe#"$repo"/}"
                # A hung binary (a vCPU that never returns) fails by itself after 15
                # minutes (longer than any one test's own timeout, so those report
                # first), with its and its children's backtraces, instead of using up
                # the sandbox's whole time.
                printf 't0=$SECONDS\n'
                printf 'cd %q && %q 900 %q --test-threads=1' "$dir" "$repo/scripts/lib/deadline.sh" "$exe"
                [[ ${#test_args[@]} -eq 0 ]] || printf ' %q' "${test_args[@]}"
                printf '\ns=$?\n'
                # How long each binary took, to keep the groups balanced and the suite short.
                printf 'echo "     %s took $((SECONDS - t0)) s"\n' "${exe##*/}"
                # Leading newline: a crash can leave a line like "test foo ... " open.
                printf 'if [ $s -eq 124 ]; then printf "\\nhvrun-test: %s timed out (hung)\\n"; rc=1\n' "${exe##*/}"
                printf 'elif [ $s -ne 0 ]; then printf "\\nhvrun-test: %s exited with status $s\\n"; rc=1; fi\n' \
                    "${exe##*/}"
                # The interrupt tests again with kicks outside run kept instead of lost:
                # Apple documents neither, hvrun must be right under both.
                if [[ ${exe##*/} == interrupts-* ]]; then
                    printf 'echo "     Running %s (HVRUN_KICK_MODE=kept)"\nt0=$SECONDS\n' "${exe#"$repo"/}"
                    printf 'cd %q && HVRUN_KICK_MODE=kept %q 900 %q --test-threads=1' "$dir" "$repo/scripts/lib/deadline.sh" "$exe"
                    [[ ${#test_args[@]} -eq 0 ]] || printf ' %q' "${test_args[@]}"
                    printf '\nif [ $? -ne 0 ]; then printf "\\nhvrun-test: %s (kicks kept) failed\\n"; rc=1; fi\n' "${exe##*/}"
                    printf 'echo "     %s (kicks kept) took $((SECONDS - t0)) s"\n' "${exe##*/}"
                fi
            done <"$work/exes.$g"
            # A short boot loop: 10 boots of the minimal kernel on two vCPUs with hvrun,
            # alternating with QEMU microvm -smp 2 (scripts/boot-loop.py runs long ones).
            # A hang shows hvrun's state dump and backtraces. Not four vCPUs here: in the
            # sandbox (one emulated CPU) QEMU's own guest hung at -smp 4 too, at the same
            # console line as hvrun's (1 boot in 10 each, 2026-12-04), so a failure there
            # would not tell hvrun's bugs from the sandbox's.
            if [[ $g -eq 1 && ${#test_args[@]} -eq 0 ]]; then
                printf 'echo "     Running the boot loop (10 boots, 2 vCPUs)"\nt0=$SECONDS\n'
                printf 'cd %q && python3 scripts/boot-loop.py --hvrun %q --kernel %q --initrd %q --boots 10 --cpus 2 --deadline 120\n' \
                    "$repo" "$target_dir/e2e/hvrun" "$HVRUN_GUEST_KERNEL" "$HVRUN_GUEST_INITRD"
                printf 'if [ $? -ne 0 ]; then printf "\\nhvrun-test: the boot loop failed\\n"; rc=1; fi\n'
                printf 'echo "     the boot loop took $((SECONDS - t0)) s"\n'
            fi
            echo 'exit $rc'
        } >"$work/run-e2e.$g.sh"
        done
        echo "=== end-to-end tests: $(wc -l <"$work/exes") binaries, KVM: $kind, running on: $mode"
        set +e
        if [[ $mode == hardware ]]; then
            HVRUN_KVM=hardware bash "$work/run-e2e.0.sh" 2>&1 | tee "$work/e2e.0.log"
            rc0=${PIPESTATUS[0]}
            HVRUN_KVM=hardware bash "$work/run-e2e.1.sh" 2>&1 | tee "$work/e2e.1.log"
            rc1=${PIPESTATUS[0]}
        else
            # Group 1 runs in the background into its log, shown when group 0 is done.
            sandbox() {
                HVRUN_KVM=sandbox "$repo/scripts/sandbox.sh" \
                    --timeout "${HVRUN_SANDBOX_TIMEOUT:-2700}" --mem "${HVRUN_SANDBOX_MEM:-8G}" \
                    -- bash "$work/run-e2e.$1.sh"
            }
            sandbox 1 >"$work/e2e.1.log" 2>&1 &
            pid1=$!
            echo "=== group 0 ($(wc -l <"$work/exes.0") binaries) here; group 1 ($(wc -l <"$work/exes.1") binaries) in a second sandbox, shown after"
            sandbox 0 2>&1 | tee "$work/e2e.0.log"
            rc0=${PIPESTATUS[0]}
            wait "$pid1"
            rc1=$?
            echo "=== group 1:"
            cat "$work/e2e.1.log"
        fi
        set -e
        # The worse of the two statuses (a sandbox failure beats a failed test).
        rc=$(( rc0 > rc1 ? rc0 : rc1 ))
        # Binaries that exited non-zero (failed tests, or a crash, abort, timeout).
        n=${#problems[@]}
        while IFS= read -r line; do problems+=("end-to-end tests: ${line#hvrun-test: }"); done \
            < <(cat "$work"/e2e.*.log | grep -ao 'hvrun-test: .*' || true)
        case $rc in
            0) ;;
            1) [[ ${#problems[@]} -gt $n ]] || problems+=("end-to-end tests: a test binary failed") ;;
            124) problems+=("end-to-end tests: sandbox timed out") ;;
            *) problems+=("end-to-end tests: exited with status $rc (sandbox failure?)") ;;
        esac
    fi
fi

# --- summary ---------------------------------------------------------------------------
# libtest: "test result: ok. 3 passed; 0 failed; 0 ignored; ..." (colour codes stripped).
read -r passed failed < <(cat "$work"/*.log 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' |
    sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed;.*/\1 \2/p' |
    awk '{p += $1; f += $2} END {print p + 0, f + 0}')
echo
for p in "${problems[@]}"; do echo "FAILED: $p"; done
echo "$passed passed, $failed failed"
[[ ${#problems[@]} -eq 0 && $failed -eq 0 ]]
