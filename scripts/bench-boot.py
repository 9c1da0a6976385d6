#!/usr/bin/env python3
"""Boot benchmark: hvrun against QEMU (-M microvm -accel kvm), same kernel and initrd,
in one run on the same KVM. Prints figures side by side; asserts nothing.

    scripts/bench-boot.sh            # builds what it needs, runs this in the sandbox

Measured per VMM (median of --runs boots):
  - wall time from process start to the init marker, and to the process's exit
    (the guest powers off right after the `uptime` check);
  - guest uptime when init ran the check (/proc/uptime);
  - hvrun only: VM exits per boot by reason (--exit-stats);
  - host CPU time the VMM process used over 10 s of an idle guest (`sleep` check).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time

MARKER = b"HVRUN-INIT-OK"


def cpu_seconds(pid):
    """utime + stime of a process and all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Run:
    """One VMM process; its console lines time-stamped as they arrive."""

    def __init__(self, argv):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = []
        self.stderr = b""
        self.marker_at = None
        t = threading.Thread(target=self._read, daemon=True)
        t.start()
        e = threading.Thread(target=self._read_err, daemon=True)
        e.start()
        self.threads = [t, e]

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            self.lines.append((now, line))
            if self.marker_at is None and MARKER in line:
                self.marker_at = now

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def wait_marker(self, timeout):
        end = time.monotonic() + timeout
        while self.marker_at is None and time.monotonic() < end and self.proc.poll() is None:
            time.sleep(0.01)
        return self.marker_at

    def finish(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        ended = time.monotonic()
        for t in self.threads:
            t.join(5)
        return ended

    def value(self, key):
        for _, line in self.lines:
            m = re.search(key.encode() + rb"=([0-9.]+)", line)
            if m:
                return float(m.group(1))
        return None


def boot_once(argv):
    r = Run(argv)
    r.wait_marker(300)
    ended = r.finish(300)
    if r.marker_at is None:
        sys.exit(f"no init marker from {argv[0]}:\n{b''.join(l for _, l in r.lines).decode(errors='replace')}"
                 f"\n{r.stderr.decode(errors='replace')}")
    return {
        "marker": r.marker_at - r.start,
        "exit": ended - r.start,
        "uptime": r.value("HVRUN-UPTIME"),
        "status": r.proc.returncode,
        "stderr": r.stderr.decode(errors="replace"),
    }


def idle_cpu(argv, seconds=10.0):
    """CPU seconds the VMM used while its guest sleeps for `seconds`."""
    r = Run(argv)
    if r.wait_marker(300) is None:
        sys.exit(f"no init marker from {argv[0]} (idle run)")
    if not wait_line(r, b"HVRUN-UPTIME-BEFORE", 60):
        sys.exit("the sleep check did not start")
    time.sleep(1.0)  # let the shell settle into its sleep
    before = cpu_seconds(r.proc.pid)
    time.sleep(seconds)
    used = cpu_seconds(r.proc.pid) - before
    r.finish(120)
    return used


def wait_line(r, needle, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(needle in l for _, l in r.lines):
            return True
        time.sleep(0.05)
    return False


def exits_by_reason(stderr):
    """The --exit-stats table: {reason: count}."""
    table = {}
    for line in stderr.splitlines():
        m = re.match(r"^([A-Z_0-9]+)\s+(\d+)\s", line)
        if m and m.group(1) != "exit":
            table[m.group(1)] = int(m.group(2))
    return table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hvrun", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mem", default="512M")
    a = ap.parse_args()

    cmdline = "console=ttyS0"
    hvrun = lambda check: [a.hvrun, "--mem", a.mem, "--exit-stats", "--cmdline", f"{cmdline} {check}", a.kernel, a.initrd]
    qemu = lambda check: ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", a.mem,
                          "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                          "-serial", "stdio", "-kernel", a.kernel, "-initrd", a.initrd,
                          "-append", f"{cmdline} {check}"]

    results = {}
    for name, argv in (("hvrun", hvrun), ("qemu", qemu)):
        boots = [boot_once(argv("hvrun.check=uptime")) for _ in range(a.runs)]
        results[name] = {
            "marker": statistics.median(b["marker"] for b in boots),
            "exit": statistics.median(b["exit"] for b in boots),
            "uptime": statistics.median(b["uptime"] for b in boots if b["uptime"] is not None),
            "status": [b["status"] for b in boots],
            "idle": idle_cpu(argv("hvrun.check=sleep hvrun.sleep=14")),
            "stderr": boots[-1]["stderr"],
        }

    h, q = results["hvrun"], results["qemu"]
    print(f"boot benchmark: {a.runs} boots each (median), kernel {os.path.basename(a.kernel)}, {a.mem}")
    print(f"{'':38} {'hvrun':>10} {'qemu microvm':>13} {'hvrun/qemu':>11}")
    for key, label, unit in (("marker", "wall time to init marker", "s"), ("exit", "wall time to exit", "s"),
                             ("uptime", "guest uptime at init's check", "s"),
                             ("idle", "host CPU over 10 s of idle guest", "s")):
        ratio = h[key] / q[key] if q[key] else float("nan")
        print(f"{label:38} {h[key]:>9.3f}{unit} {q[key]:>12.3f}{unit} {ratio:>10.2f}x")
    print(f"{'exit statuses':38} {str(h['status']):>10} {str(q['status']):>13}")
    exits = exits_by_reason(h["stderr"])
    print("hvrun exits per boot by reason: " + ", ".join(f"{k} {v}" for k, v in exits.items()))


if __name__ == "__main__":
    main()
