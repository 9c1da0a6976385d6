#!/usr/bin/env python3
"""SMP benchmark: hvrun --cpus N against QEMU -M microvm -smp N -accel kvm, same kernel
and initramfs, in one run on the same KVM, for each N of --cpus. Prints the figures
side by side; asserts nothing.

    scripts/bench-smp.sh [--cpus 1,2,4] [--secs S]

Per VMM and N (one boot each, running the `bench-smp` check, guest/checks/bench-smp):
  - wall time from process start to the init marker (the APs come up on the way);
  - the prime-counting CPU test (sysbench-like events per second) on 1 thread and on N;
  - the futex ping-pong between CPUs 0 and 1: microseconds per round trip, each pass a
    wake-up of an idle CPU by IPI.
Where the host has fewer CPUs than N (the sandbox has one), N vCPUs share them and the
N-thread figure cannot scale: it is printed anyway.
"""
import argparse
import os
import re
import subprocess
import sys
import time

MARKER = b"HVRUN-INIT-OK"


def boot(argv, timeout):
    """Runs one VMM to its end; returns (seconds to the init marker, console text)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker_at = None
    out = []
    deadline = start + timeout
    for line in proc.stdout:
        out.append(line)
        if marker_at is None and MARKER in line:
            marker_at = time.monotonic() - start
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait()
    text = b"".join(out).decode(errors="replace").replace("\r", "")
    if marker_at is None or "HVRUN-CHECK-STATUS=0" not in text:
        sys.exit(f"{argv[0]}: the bench-smp check did not finish cleanly:\n{text[-3000:]}")
    return marker_at, text


def figures(text):
    f = {}
    for m in re.finditer(r"HVRUN-PRIMES threads=(\d+) .*events_per_s=([\d.]+)", text):
        f[f"primes{m.group(1)}"] = float(m.group(2))
    m = re.search(r"HVRUN-PINGPONG .*us_per_round_trip=([\d.]+)", text)
    if m:
        f["pingpong"] = float(m.group(1))
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hvrun", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--cpus", default="1,2,4")
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--mem", default="512M")
    a = ap.parse_args()
    check = f"console=ttyS0 hvrun.check=bench-smp hvrun.secs={a.secs}"

    def hvrun(n):
        return [a.hvrun, "--mem", a.mem, "--cpus", str(n), "--cmdline", check, a.kernel, a.initrd]

    def qemu(n):
        return ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", a.mem,
                "-smp", str(n), "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                "-serial", "stdio", "-kernel", a.kernel, "-initrd", a.initrd, "-append", check]

    rows = []
    for n in [int(x) for x in a.cpus.split(",")]:
        for name, argv in (("hvrun", hvrun(n)), ("qemu", qemu(n))):
            marker, text = boot(argv, 300 + 4 * a.secs)
            rows.append((n, name, marker, figures(text)))
            print(f"bench-smp: {name} with {n} vCPUs done", flush=True)

    print(f"SMP benchmark: kernel {os.path.basename(a.kernel)}, {a.mem}, {a.secs} s per figure, "
          f"host CPUs {os.cpu_count()}")
    print(f"{'vCPUs':>5} {'VMM':>6} {'init (s)':>9} {'primes/s 1 thr':>15} {'primes/s N thr':>15} {'ping-pong us':>13}")
    for n, name, marker, f in rows:
        def cell(key, fmt):
            return format(f[key], fmt) if key in f else "-"
        print(f"{n:>5} {name:>6} {marker:>9.2f} {cell('primes1', '.1f'):>15} {cell(f'primes{n}', '.1f') if n > 1 else '-':>15}"
              f" {cell('pingpong', '.1f'):>13}")


if __name__ == "__main__":
    main()
