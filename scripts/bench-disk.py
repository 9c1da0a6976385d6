#!/usr/bin/env python3
"""Disk benchmark: hvrun's virtio-mmio block device against QEMU's virtio-blk
(-M microvm -accel kvm), same kernel, initramfs, memory and disk image, in one run on
the same KVM. Prints figures side by side; asserts nothing.

    scripts/bench-disk.sh            # builds what it needs, runs this in the sandbox

Measured from inside the guest by the `bench-disk` check (guest/checks/bench-disk,
guest/tools/blkbench.c), O_DIRECT, one request in flight:
  - sequential write of --mib MiB in --bs KiB requests, then fsync (a virtio FLUSH),
    the fsync included: MB/s (10^6 bytes/s);
  - sequential read of the same range: MB/s;
  - 4 KiB reads at random aligned offsets of the whole disk for --secs seconds: IOPS,
    median and 99th percentile latency.
Also: the VMM's host CPU time and wall time per run (boot and power-off included).

The image is a file under --dir (default /tmp), --disk-mib MiB of non-zero data, made
here and used by every run of both VMMs. They run alternately (hvrun, QEMU, hvrun, ...);
the table shows medians over --runs runs each. After each run the image is read back on
the host: the blocks the guest wrote must hold this run's stamps (a new seed per run).

Caching, the same for both: hvrun reads and writes the image with pread/pwrite through
the host's page cache and fsyncs on FLUSH; QEMU is given the same (cache=writeback, its
default, with aio=threads). The image was just written, so reads come from the host's
page cache: what is compared is the virtualization path, not the storage. The host
cache is not dropped (the sandbox cannot; in the sandbox /tmp is a tmpfs, and fsync
costs nothing there).
"""
import argparse
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

BLOCK = 4096


def pattern():
    """The 4 KiB block blkbench writes, after its 16 stamp bytes (fill_pattern)."""
    mask = (1 << 64) - 1
    state, out = 0x9E3779B97F4A7C15, bytearray()
    for _ in range(BLOCK // 8):
        state ^= state >> 12
        state = (state ^ (state << 25)) & mask
        state ^= state >> 27
        out += struct.pack("<Q", (state * 0x2545F4914F6CDD1D) & mask)
    return bytes(out[16:])


def make_image(path, mib):
    """mib MiB of data that is neither zero nor what blkbench writes."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def check_image(path, mib, seed):
    """None if the first mib MiB of the image hold what blkbench wrote with seed, else
    what is wrong."""
    tail = pattern()
    bad, first = 0, None
    with open(path, "rb") as f:
        for chunk_at in range(0, mib << 20, 1 << 20):
            data = f.read(1 << 20)
            for i in range(0, len(data), BLOCK):
                off, s = struct.unpack_from("<QQ", data, i)
                if off != chunk_at + i or s != seed or data[i + 16:i + BLOCK] != tail:
                    bad += 1
                    first = chunk_at + i if first is None else first
            if len(data) < 1 << 20:
                return f"image shorter than {mib} MiB"
    return None if not bad else f"{bad} blocks of 4 KiB in the image differ from what the guest wrote (first at byte {first})"


class Run:
    """One VMM process: its console kept, its CPU time from wait4."""

    def __init__(self, argv, timeout):
        self.argv = argv
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = [], []
        readers = [threading.Thread(target=self._read, args=(proc.stdout, self.out), daemon=True),
                   threading.Thread(target=self._read, args=(proc.stderr, self.err), daemon=True)]
        for t in readers:
            t.start()
        self.timed_out = False

        def kill():
            self.timed_out = True
            proc.kill()

        killer = threading.Timer(timeout, kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        self.wall = time.monotonic() - start
        self.cpu = usage.ru_utime + usage.ru_stime
        self.status = os.waitstatus_to_exitcode(status)
        proc.returncode = self.status
        for t in readers:
            t.join(10)

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.decode(errors="replace").rstrip("\r\n"))

    def results(self):
        """Every key=value of the HVRUN-BENCH lines."""
        values = {}
        for line in self.out:
            m = re.search(r"HVRUN-BENCH (.*)", line)
            if m:
                for k, v in re.findall(r"(\w+)=(\S+)", m.group(1)):
                    try:
                        values[k] = float(v)
                    except ValueError:
                        values[k] = v
        return values

    def done(self):
        return any("HVRUN-BENCH-DONE" in l for l in self.out)

    def evidence(self, lines=40):
        """The end of the console and all of stderr, for a failed run."""
        text = "\n".join(f"  console| {l}" for l in self.out[-lines:])
        if self.err:
            text += "\n" + "\n".join(f"  stderr | {l}" for l in self.err[-lines:])
        return text


METRICS = (  # key, label, unit, format, higher is better
    ("seq_write_MBps", "sequential write", "MB/s", "{:.1f}", True),
    ("seq_read_MBps", "sequential read", "MB/s", "{:.1f}", True),
    ("rand_read_iops", "4 KiB random read", "IOPS", "{:.0f}", True),
    ("rand_read_lat_p50_us", "4 KiB random read latency, median", "us", "{:.0f}", False),
    ("rand_read_lat_p99_us", "4 KiB random read latency, 99th pct", "us", "{:.0f}", False),
    ("flush_ms", "FLUSH (fsync) after the write", "ms", "{:.2f}", False),
    ("cpu", "VMM host CPU time per run", "s", "{:.2f}", False),
    ("wall", "wall time per run, boot to exit", "s", "{:.1f}", False),
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hvrun", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--runs", type=int, default=3, help="runs of each VMM, alternating (default 3)")
    ap.add_argument("--mem", default="512M", help="guest memory (default 512M)")
    ap.add_argument("--mib", type=int, default=128, help="MiB written, then read, sequentially (default 128)")
    ap.add_argument("--bs", type=int, default=1024, help="sequential request size in KiB (default 1024)")
    ap.add_argument("--secs", type=int, default=10, help="seconds of random reads (default 10)")
    ap.add_argument("--disk-mib", type=int, default=256, help="image size in MiB (default 256)")
    ap.add_argument("--dir", default="/tmp", help="where the image is made (default /tmp)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds one run may take (default 900)")
    ap.add_argument("--only", choices=("hvrun", "qemu"), help="run one VMM only")
    a = ap.parse_args()
    if a.mib > a.disk_mib:
        sys.exit("bench-disk: --mib is larger than --disk-mib")

    fd, image = tempfile.mkstemp(prefix="hvrun-bench-disk.", suffix=".img", dir=a.dir)
    os.close(fd)
    try:
        t = time.monotonic()
        make_image(image, a.disk_mib)
        print(f"bench-disk: image {image}, {a.disk_mib} MiB, made in {time.monotonic() - t:.1f}s", file=sys.stderr)
        run_all(a, image)
    finally:
        os.unlink(image)


def run_all(a, image):
    cmdline = "console=ttyS0"

    def check(seed):
        return f"hvrun.check=bench-disk hvrun.mib={a.mib} hvrun.bs={a.bs} hvrun.secs={a.secs} hvrun.seed={seed}"

    vmms = {
        "hvrun": lambda seed: [a.hvrun, "--mem", a.mem, "--disk", image, "--cmdline", f"{cmdline} {check(seed)}",
                               a.kernel, a.initrd],
        # Modern virtio-mmio (version 2, as hvrun's): QEMU's default is the legacy one.
        "qemu": lambda seed: ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", a.mem,
                              "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                              "-serial", "stdio", "-kernel", a.kernel, "-initrd", a.initrd,
                              "-append", f"{cmdline} {check(seed)}",
                              "-global", "virtio-mmio.force-legacy=false",
                              "-drive", f"file={image},format=raw,if=none,id=d0,cache=writeback,aio=threads",
                              "-device", "virtio-blk-device,drive=d0"],
    }
    names = [a.only] if a.only else list(vmms)
    samples = {n: [] for n in names}
    info = {}
    failures = {n: 0 for n in names}
    seed = int(time.time()) % 1000000 * 100
    for i in range(a.runs):
        for name in names:
            seed += 1
            r = Run(vmms[name](seed), a.timeout)
            values = r.results()
            problem = None
            if r.timed_out:
                problem = f"timed out after {a.timeout}s"
            elif not r.done():
                problem = f"no HVRUN-BENCH-DONE (exit status {r.status})"
            elif r.status != 0:
                problem = f"exit status {r.status}"
            else:
                problem = check_image(image, a.mib, seed)
            line = " ".join(f"{k}={values[k]:g}" for k, *_ in METRICS if isinstance(values.get(k), float))
            print(f"bench-disk: run {i + 1}/{a.runs} {name}: {line} cpu={r.cpu:.2f}s wall={r.wall:.1f}s"
                  + (f" FAILED: {problem}" if problem else ""), file=sys.stderr)
            if problem:
                failures[name] += 1
                print(r.evidence(), file=sys.stderr)
                continue
            for l in r.err[:10]:
                print(f"  stderr | {l}", file=sys.stderr)
            values["cpu"], values["wall"] = r.cpu, r.wall
            samples[name].append(values)
            info[name] = {k: values.get(k) for k in ("max_sectors_kb", "max_segments", "write_cache", "scheduler")}

    def figures(name, key):
        return [s[key] for s in samples.get(name, []) if isinstance(s.get(key), float)]

    def median(name, key):
        xs = figures(name, key)
        return statistics.median(xs) if xs else None

    def spread(name, key, fmt):
        xs = figures(name, key)
        return f"{fmt.format(min(xs))}-{fmt.format(max(xs))}" if xs else "-"

    print(f"disk benchmark: median of {a.runs} runs each, alternating; kernel {os.path.basename(a.kernel)}, "
          f"{a.mem}, image {a.disk_mib} MiB raw in {a.dir}; O_DIRECT, queue depth 1; "
          f"sequential {a.mib} MiB in {a.bs} KiB requests; random reads for {a.secs}s")
    print(f"{'metric':36} {'unit':>5} {'hvrun':>10} {'QEMU':>10} {'hvrun/QEMU':>11}  {'better':6}"
          f"  {'hvrun min-max':>15} {'QEMU min-max':>15}")
    for key, label, unit, fmt, higher in METRICS:
        h, q = median("hvrun", key), median("qemu", key)
        cell = lambda v: fmt.format(v) if v is not None else "-"
        ratio = f"{h / q:.2f}x" if h is not None and q else "-"
        print(f"{label:36} {unit:>5} {cell(h):>10} {cell(q):>10} {ratio:>11}  {'higher' if higher else 'lower':6}"
              f"  {spread('hvrun', key, fmt):>15} {spread('qemu', key, fmt):>15}")
    print(f"{'successful runs':36} {'':>5} {len(samples.get('hvrun', [])):>10} {len(samples.get('qemu', [])):>10}")
    for name in names:
        if name in info:
            print(f"guest's view of the {name} disk: " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                              for k, v in info[name].items()))
    sys.exit(1 if any(failures.values()) else 0)


if __name__ == "__main__":
    main()
