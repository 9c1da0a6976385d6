#!/usr/bin/env bash
# deadline.sh SECONDS CMD...: runs CMD; if it is still running after SECONDS, asks every
# hvrun among it and its descendants for its state dump (SIGUSR1: vCPUs, APICs, IOAPIC,
# on hvrun's stderr), prints every thread's backtrace (with gdb, when installed) so that
# a hang can be diagnosed, then kills it and exits 124. Otherwise exits with CMD's status.
secs=$1
shift
"$@" &
pid=$!
(
    # Killed early when CMD ends: take the sleep along.
    trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    sleep "$secs" &
    nap=$!
    wait "$nap"
    kill -0 "$pid" 2>/dev/null || exit 0
    echo "deadline: $* still running after ${secs}s; thread backtraces:"
    # CMD and its descendants (a test's hvrun child is where a guest hang would be).
    procs=$pid
    frontier=$pid
    while [[ -n $frontier ]]; do
        frontier=$(for p in $frontier; do pgrep -P "$p"; done)
        procs="$procs $frontier"
    done
    for p in $procs; do
        if [[ $(cat "/proc/$p/comm" 2>/dev/null) == hvrun ]]; then
            kill -USR1 "$p" 2>/dev/null && sleep 1
        fi
    done
    for p in $procs; do
        echo "--- process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-200)"
        if command -v gdb >/dev/null; then
            gdb -p "$p" -batch -ex 'thread apply all bt 12' 2>&1 | grep -E '^(Thread|#)' | head -150
        fi
    done
    kill -9 $procs
) &
watchdog=$!
wait "$pid"
status=$?
kill "$watchdog" 2>/dev/null
wait "$watchdog" 2>/dev/null
# Killed by the watchdog (SIGKILL): report a timeout like timeout(1) does.
[[ $status -eq 137 ]] && status=124
exit "$status"
