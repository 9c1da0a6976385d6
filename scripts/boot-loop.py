#!/usr/bin/env python3
"""Boot loop: consecutive boots of one guest, hvrun alternating with QEMU microvm on the
same KVM, looking for boots that hang. Run by scripts/boot-loop.sh (in the sandbox when
the host's KVM is not hardware-backed).

    boot-loop.py --hvrun PATH --kernel K --initrd I [--boots N] [--deadline S] [--cpus N] [--no-qemu]
                 [--append ARGS]

--cpus N: both VMMs get N vCPUs (hvrun --cpus N, QEMU -smp N). --append: more kernel
command line for both (the default is quiet: only errors reach the console).

Each boot runs the guest's `uptime` check and must power off by itself within the
deadline. The console is drained the way a scripting user drains it: 64 KiB reads as
fast as they come. A boot still running at its deadline is a hang: hvrun is sent
SIGUSR1 (its state dump goes to stderr), its threads' backtraces are taken with gdb
when gdb is installed, then it is killed, and its console tail, dump and backtraces are
printed. Exit status: 0 when every boot powered off, 1 otherwise. The last line is
"N passed, N failed" (boots).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

MARKER = b"HVRUN-CHECK-STATUS=0"


class Boot:
    """One VMM process, its stdout and stderr drained by threads in 64 KiB reads."""

    def __init__(self, argv):
        self.argv = argv
        self.start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
        self.out = bytearray()
        self.err = bytearray()
        self.readers = [threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
                        threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True)]
        for r in self.readers:
            r.start()

    @staticmethod
    def _drain(pipe, buf):
        fd = pipe.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf.extend(chunk)

    def wait(self, deadline):
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False

    def finish(self):
        for r in self.readers:
            r.join(10)
        return time.monotonic() - self.start


def backtraces(pid):
    if shutil.which("gdb") is None:
        return "(gdb not installed: no backtraces)\n"
    r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "set pagination off",
                        "-ex", "thread apply all bt"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)
    return r.stdout.decode(errors="replace")


def report_hang(name, boot, dump):
    """Takes the state dump and backtraces of a hung VMM, then kills it."""
    pid = boot.proc.pid
    extra = ""
    if dump:
        before = len(boot.err)
        os.kill(pid, signal.SIGUSR1)
        end = time.monotonic() + 5
        while time.monotonic() < end and b"end of state dump" not in boot.err[before:]:
            time.sleep(0.05)
    extra = backtraces(pid)
    boot.proc.kill()
    boot.proc.wait()
    boot.finish()
    tail = boot.out[-3000:].decode(errors="replace")
    print(f"=== HANG: {name} (pid {pid}) still running at its deadline", flush=True)
    print(f"--- console (last 3000 bytes):\n{tail}")
    print(f"--- stderr (state dump):\n{boot.err.decode(errors='replace')}")
    print(f"--- backtraces:\n{extra}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hvrun", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--boots", type=int, default=10, help="hvrun boots (as many QEMU boots between them)")
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds one boot may take")
    ap.add_argument("--mem", default="256M")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--no-qemu", action="store_true", help="hvrun boots only")
    ap.add_argument("--no-dump", action="store_true", help="do not send SIGUSR1 to a hung hvrun")
    ap.add_argument("--append", default="", help="more kernel command line (e.g. loglevel=7 to see what hangs)")
    a = ap.parse_args()

    cmdline = f"console=ttyS0 panic=-1 quiet hvrun.check=uptime {a.append}".strip()
    hvrun = [a.hvrun, "--mem", a.mem, "--cpus", str(a.cpus), "--cmdline", cmdline, a.kernel, a.initrd]
    qemu = ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", a.mem, "-smp", str(a.cpus),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", a.kernel, "-initrd", a.initrd, "-append", cmdline]
    with_qemu = not a.no_qemu and shutil.which("qemu-system-x86_64") is not None
    if not a.no_qemu and not with_qemu:
        print("boot-loop: qemu-system-x86_64 not installed: hvrun boots only", flush=True)

    results = {"hvrun": [0, 0], "qemu": [0, 0]}   # passed, failed
    for i in range(a.boots):
        plan = (("qemu", qemu), ("hvrun", hvrun)) if with_qemu else (("hvrun", hvrun),)
        for name, argv in plan:
            boot = Boot(argv)
            if not boot.wait(time.monotonic() + a.deadline):
                report_hang(f"{name} boot {i + 1}", boot, dump=(name == "hvrun" and not a.no_dump))
                results[name][1] += 1
                continue
            took = boot.finish()
            ok = boot.proc.returncode == 0 and MARKER in boot.out
            results[name][0 if ok else 1] += 1
            print(f"boot-loop: {name} boot {i + 1}: {'ok' if ok else 'FAILED'} "
                  f"(status {boot.proc.returncode}, {took:.2f} s)", flush=True)
            if not ok:
                print(f"--- console:\n{boot.out[-3000:].decode(errors='replace')}\n--- stderr:\n"
                      f"{boot.err.decode(errors='replace')}", flush=True)

    for name, (p, f) in results.items():
        if p or f:
            print(f"boot-loop: {name}: {p} boots powered off, {f} failed or hung")
    passed = sum(p for p, _ in results.values())
    failed = sum(f for _, f in results.values())
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
