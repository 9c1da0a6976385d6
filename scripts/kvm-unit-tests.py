#!/usr/bin/env python3
"""kvm-unit-tests' x86 guests under hvrun and, side by side, under QEMU -accel kvm on the
same KVM. Runs where guests run at hardware speed (scripts/kvm-unit-tests.sh puts it
there). Prints one table: test, hvrun result, QEMU result; then, for --vmexit, the
cycles per exit of the vmexit benchmark for both.

A test's parameters come from the suite's unittests.cfg section of the same name: its
file, test_args (the kernel command line: hvrun --append, QEMU -append), smp and
qemu_params (QEMU only: hvrun has one vCPU and shows the host's CPU). Results follow
the suite's runner: the VMM's exit status S = (guest status << 1) | 1, so 1 is PASS,
77 SKIP (the guest's 38, i.e. 77 >> 1), other odd values FAIL; no status within the
section's timeout is TIMEOUT; anything else is the VMM's own failure.
"""
import argparse
import configparser
import os
import re
import shlex
import subprocess
import sys
import time

# The tests issue 10 names, in the suite's section names, emulator last (it brought the
# sandbox down under QEMU; it runs alone at the end). tscdeadline_latency and init have
# no (active) section: they run with no arguments.
DEFAULT_TESTS = [
    "x2apic", "xapic", "ioapic", "eventinj", "idt_test", "msr", "msr64", "tsc", "tsc_adjust",
    "tscdeadline_latency", "kvmclock_test", "realmode", "sieve", "memory", "setjmp", "smap",
    "pcid-enabled", "pcid-disabled", "pcid-asymmetric", "xsave", "syscall", "hypercall", "init",
    "smptest", "smptest3", "emulator",
]
# What CI runs: single-vCPU tests that pass under QEMU on the sandbox's KVM, and quickly.
QUICK_TESTS = ["ioapic", "smptest", "idt_test", "tsc", "setjmp", "sieve"]
# The exit-cost benchmark's cases (unittests.cfg vmexit_*), one run with all of them.
VMEXIT_CASES = ["cpuid", "vmcall", "mov_from_cr8", "mov_to_cr8", "inl_from_pmtimer", "inl_from_qemu",
                "ipi", "tscdeadline", "tscdeadline_immed", "toggle_cr0_wp", "toggle_cr4_pge"]
DEFAULT_TIMEOUT = 90
MEM = "256M"


def load_cfg(path):
    """unittests.cfg: an INI file whose values may be quoted."""
    cfg = configparser.ConfigParser(interpolation=None, strict=False)
    cfg.read(path)
    return cfg


def params(cfg, name):
    sec = cfg[name] if cfg.has_section(name) else {}
    file = sec.get("file", f"{name}.flat")
    args = sec.get("test_args", "").strip()
    if len(args) >= 2 and args[0] == args[-1] and args[0] in "'\"":
        args = args[1:-1]
    # kvmclock_test's `date +%s`: the suite's runner expands it with a shell.
    args = args.replace("`date +%s`", str(int(time.time())))
    return {
        "file": file,
        "args": args,
        "smp": int(sec.get("smp", "1")),
        "qemu_params": shlex.split(sec.get("qemu_params", "")),
        "timeout": int(re.sub(r"[^0-9]", "", sec.get("timeout", "")) or DEFAULT_TIMEOUT),
    }


def classify(status, output):
    summary = ""
    for line in output.splitlines():
        if line.startswith("SUMMARY:"):
            summary = line[len("SUMMARY:"):].strip()
    if status is None:
        return "TIMEOUT", summary
    if status == 1:
        return "PASS", summary
    if status == 77:
        return "SKIP", summary
    if status > 0 and status % 2 == 1:
        return "FAIL", summary
    return f"ERROR({status})", summary


def run(argv, timeout, log):
    start = time.monotonic()
    with open(log, "wb") as out:
        out.write(("$ " + shlex.join(argv) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = None
    wall = time.monotonic() - start
    with open(log, "rb") as f:
        output = f.read().decode(errors="replace").replace("\r", "")
    return status, output, wall


def hvrun_argv(hvrun, p, kernel):
    argv = [hvrun, "--testdev", "--mem", MEM, "--cpus", str(p["smp"])]
    if p["args"]:
        argv += ["--append", p["args"]]
    return argv + [kernel]


def qemu_argv(p, kernel):
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-smp", str(p["smp"]), "-m", MEM,
            "--no-reboot", "-nodefaults", "-device", "pc-testdev",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-display", "none", "-serial", "stdio",
            "-kernel", kernel]
    if p["args"]:
        argv += ["-append", p["args"]]
    return argv + p["qemu_params"]


def cell(result, summary, wall):
    return f"{result} ({summary}; {wall:.0f}s)" if summary else f"{result} ({wall:.0f}s)"


def show(lines, what, result, output):
    """The console's last `lines` lines; if hvrun stopped with a message (a crash and its
    register dump), the lines before that message and the message with its dump."""
    if not lines or result.startswith("PASS"):
        return
    text = output.splitlines()
    stop = next((i for i, l in enumerate(text) if l.startswith("hvrun: ") and "exited with status" not in l), None)
    part = text[max(0, stop - lines):stop + 40] if stop is not None else text[-lines:]
    print(f"--- {what}: {result}:")
    print("\n".join(part))
    print("---", flush=True)


def vmexit_figures(output):
    figures = {}
    for line in output.splitlines():
        m = re.match(r"^\s*(\w+) (\d+)$", line)
        if m:
            figures[m.group(1)] = int(m.group(2))
        m = re.match(r"^(\w+) \(skipped\)$", line)
        if m:
            figures[m.group(1)] = "skipped"
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, help="directory with the .flat files and unittests.cfg")
    ap.add_argument("--hvrun", required=True)
    ap.add_argument("--tests", help="comma-separated unittests.cfg sections (default: issue 10's list)")
    ap.add_argument("--quick", action="store_true", help="only the CI subset: " + ",".join(QUICK_TESTS))
    ap.add_argument("--no-qemu", action="store_true", help="hvrun only")
    ap.add_argument("--vmexit", action="store_true", help="also run the vmexit benchmark")
    ap.add_argument("--logs", default=None, help="keep each run's console here")
    ap.add_argument("--show", type=int, default=0, metavar="N",
                    help="print the last N console lines of every run that did not pass (the sandbox keeps no files)")
    ap.add_argument("--max-timeout", type=int, default=None, help="cap every test's timeout (seconds)")
    a = ap.parse_args()

    cfg = load_cfg(os.path.join(a.suite, "unittests.cfg"))
    tests = QUICK_TESTS if a.quick else (a.tests.split(",") if a.tests else DEFAULT_TESTS)
    logs = a.logs or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kvm-unit-tests.{os.getpid()}")
    os.makedirs(logs, exist_ok=True)
    qemu = not a.no_qemu
    if qemu and subprocess.run(["sh", "-c", "command -v qemu-system-x86_64"], capture_output=True).returncode:
        print("kvm-unit-tests: qemu-system-x86_64 not found: hvrun only")
        qemu = False

    rows = []
    for name in tests:
        p = params(cfg, name)
        if a.max_timeout:
            p["timeout"] = min(p["timeout"], a.max_timeout)
        kernel = os.path.join(a.suite, p["file"])
        if not os.path.exists(kernel):
            rows.append((name, p, "NOT RUN (no file)", "NOT RUN (no file)"))
            continue
        status, out, wall = run(hvrun_argv(a.hvrun, p, kernel), p["timeout"], f"{logs}/{name}.hvrun.log")
        h = cell(*classify(status, out), wall)
        show(a.show, f"{name} under hvrun", h, out)
        q = "-"
        if qemu:
            status, out, wall = run(qemu_argv(p, kernel), p["timeout"], f"{logs}/{name}.qemu.log")
            q = cell(*classify(status, out), wall)
            show(a.show, f"{name} under QEMU", q, out)
        rows.append((name, p, h, q))
        print(f"kvm-unit-tests: {name}: hvrun {h}, QEMU {q}", flush=True)

    print()
    print("| test | smp | args | hvrun | QEMU -accel kvm |")
    print("|---|---|---|---|---|")
    for name, p, h, q in rows:
        print(f"| {name} | {p['smp']} | {p['args'] or '-'} | {h} | {q} |")
    print(f"(consoles in {logs})")

    if a.vmexit:
        p = params(cfg, "vmexit_cpuid")
        p["args"] = " ".join(VMEXIT_CASES)
        p["smp"] = 2
        p["timeout"] = 600
        kernel = os.path.join(a.suite, p["file"])
        _, hout, _ = run(hvrun_argv(a.hvrun, p, kernel), p["timeout"], f"{logs}/vmexit.hvrun.log")
        hf = vmexit_figures(hout)
        qf = {}
        if qemu:
            _, qout, _ = run(qemu_argv(p, kernel), p["timeout"], f"{logs}/vmexit.qemu.log")
            qf = vmexit_figures(qout)
        print()
        print("| vmexit case | hvrun cycles/exit | QEMU cycles/exit |")
        print("|---|---|---|")
        for case in VMEXIT_CASES:
            print(f"| {case} | {hf.get(case, 'no figure')} | {qf.get(case, 'no figure') if qemu else '-'} |")

    failed = [n for n, _, h, _ in rows if not h.startswith(("PASS", "SKIP"))]
    print(f"kvm-unit-tests: hvrun passed {len(rows) - len(failed)} of {len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
