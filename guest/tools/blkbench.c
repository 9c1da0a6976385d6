/*
 * blkbench: the guest side of scripts/bench-disk.sh. Times block device I/O with O_DIRECT
 * (no guest page cache), one request in flight at a time, and prints one result line:
 *
 *   HVRUN-BENCH key=value ...
 *
 *   blkbench write    DEV MIB BS_KIB SEED   sequential write of MIB MiB from offset 0 in
 *                                           BS_KIB KiB requests, then fsync (a virtio FLUSH);
 *                                           the time includes the fsync
 *   blkbench read     DEV MIB BS_KIB        sequential read of the same range
 *   blkbench verify   DEV MIB SEED          untimed: the range holds what `write` wrote
 *   blkbench randread DEV SECONDS           4 KiB reads at random 4 KiB-aligned offsets of
 *                                           the whole device for SECONDS: IOPS, latency
 *
 * What `write` writes: every 4 KiB block starts with its byte offset and the SEED (two
 * little-endian u64); the rest is the same fixed bytes in every block (fill_pattern): a
 * block read back from a wrong offset or an earlier run does not match. scripts/bench-disk.py checks the same
 * stamps in the host's image file. MB/s is 10^6 bytes per second; time is CLOCK_MONOTONIC.
 * Exit status: 0, or 1 with a line "HVRUN-BENCH-ERROR ..." on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096u
/* Latency histogram for randread: 1 us buckets up to this, then one overflow bucket. */
#define HIST_US 100000u

static void fail(const char *what, const char *detail)
{
    printf("HVRUN-BENCH-ERROR %s: %s\n", what, detail);
    fflush(stdout);
    exit(1);
}

static void fail_errno(const char *what) { fail(what, strerror(errno)); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t number(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v == 0)
        fail("bad number", what);
    return v;
}

/* xorshift64*: fast, deterministic, good enough for offsets and fill bytes. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void *aligned_buffer(size_t size)
{
    void *p;
    if (posix_memalign(&p, BLOCK, size))
        fail("out of memory", "posix_memalign");
    return p;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* The bytes after the stamp: the same in every 4 KiB block, whatever the request size,
 * and in every run: 512 outputs of the generator from this state, little-endian. */
static void fill_pattern(unsigned char *buf, size_t size)
{
    uint64_t state = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < BLOCK; i += 8)
        put_le64(buf + i, next_random(&state));
    for (size_t i = BLOCK; i < size; i += BLOCK)
        memcpy(buf + i, buf, BLOCK);
}

static void stamp(unsigned char *buf, size_t size, uint64_t offset, uint64_t seed)
{
    for (size_t i = 0; i < size; i += BLOCK) {
        put_le64(buf + i, offset + i);
        put_le64(buf + i + 8, seed);
    }
}

static int open_dev(const char *dev, int flags)
{
    int fd = open(dev, flags | O_DIRECT);
    if (fd < 0)
        fail_errno(dev);
    return fd;
}

/* A block device's size; a regular file's works too (trying the tool on the host). */
static uint64_t dev_size(int fd)
{
    struct stat st;
    uint64_t size;
    if (fstat(fd, &st))
        fail_errno("fstat");
    if (S_ISREG(st.st_mode))
        return (uint64_t)st.st_size;
    if (ioctl(fd, BLKGETSIZE64, &size))
        fail_errno("BLKGETSIZE64");
    return size;
}

static void full_io(int write, int fd, unsigned char *buf, size_t size, uint64_t offset)
{
    ssize_t n = write ? pwrite(fd, buf, size, (off_t)offset) : pread(fd, buf, size, (off_t)offset);
    if (n < 0)
        fail_errno(write ? "pwrite" : "pread");
    if ((size_t)n != size)
        fail(write ? "pwrite" : "pread", "short transfer");
}

static void check_range(int fd, uint64_t bytes)
{
    if (dev_size(fd) < bytes)
        fail("range", "larger than the device");
}

static void sequential(int write, const char *dev, uint64_t mib, uint64_t bs_kib, uint64_t seed)
{
    uint64_t bytes = mib << 20, bs = bs_kib << 10;
    if (bs % BLOCK || bytes % bs)
        fail("bad size", "BS_KIB must be a multiple of 4 and divide MIB MiB");
    int fd = open_dev(dev, write ? O_WRONLY : O_RDONLY);
    check_range(fd, bytes);
    unsigned char *buf = aligned_buffer(bs);
    fill_pattern(buf, bs);
    double t0 = now(), t1;
    for (uint64_t off = 0; off < bytes; off += bs) {
        if (write)
            stamp(buf, bs, off, seed);
        full_io(write, fd, buf, bs, off);
    }
    t1 = now();
    double flush = 0;
    if (write) {
        if (fsync(fd))
            fail_errno("fsync");
        flush = now() - t1;
        t1 = now();
    }
    double s = t1 - t0;
    const char *name = write ? "seq_write" : "seq_read";
    printf("HVRUN-BENCH %s_MBps=%.1f %s_s=%.3f %s_bytes=%" PRIu64 " %s_bs=%" PRIu64,
           name, (double)bytes / s / 1e6, name, s, name, bytes, name, bs);
    if (write)
        printf(" flush_ms=%.2f", flush * 1e3);
    printf("\n");
    close(fd);
}

static void verify(const char *dev, uint64_t mib, uint64_t seed)
{
    uint64_t bytes = mib << 20, chunk = 1 << 20;
    int fd = open_dev(dev, O_RDONLY);
    check_range(fd, bytes);
    unsigned char *buf = aligned_buffer(chunk), *want = aligned_buffer(chunk);
    fill_pattern(want, chunk);
    uint64_t bad = 0, first_bad = 0;
    for (uint64_t off = 0; off < bytes; off += chunk) {
        full_io(0, fd, buf, chunk, off);
        stamp(want, chunk, off, seed);
        for (uint64_t i = 0; i < chunk; i += BLOCK) {
            if (memcmp(buf + i, want + i, BLOCK)) {
                if (!bad)
                    first_bad = off + i;
                bad++;
            }
        }
    }
    if (bad)
        printf("HVRUN-BENCH verify=bad verify_bad_blocks=%" PRIu64 " verify_first_bad=%" PRIu64 "\n",
               bad, first_bad);
    else
        printf("HVRUN-BENCH verify=ok verify_bytes=%" PRIu64 "\n", bytes);
    close(fd);
    if (bad)
        exit(1);
}

static void randread(const char *dev, uint64_t seconds)
{
    int fd = open_dev(dev, O_RDONLY);
    uint64_t blocks = dev_size(fd) / BLOCK;
    if (!blocks)
        fail("device", "smaller than 4 KiB");
    unsigned char *buf = aligned_buffer(BLOCK);
    static uint32_t hist[HIST_US + 1];
    uint64_t state = 0x2545F4914F6CDD1DULL ^ blocks, ops = 0;
    double t0 = now(), end = t0 + (double)seconds, t = t0, max = 0;
    while (t < end) {
        uint64_t off = (next_random(&state) % blocks) * BLOCK;
        full_io(0, fd, buf, BLOCK, off);
        double t2 = now(), lat = t2 - t;
        t = t2;
        uint64_t us = (uint64_t)(lat * 1e6);
        hist[us < HIST_US ? us : HIST_US]++;
        if (lat > max)
            max = lat;
        ops++;
    }
    double s = t - t0;
    /* Percentiles: the upper edge of the bucket the op falls into. */
    uint64_t p50 = 0, p99 = 0, seen = 0;
    for (uint32_t us = 0; us <= HIST_US; us++) {
        seen += hist[us];
        if (!p50 && seen * 2 >= ops)
            p50 = us + 1;
        if (!p99 && seen * 100 >= ops * 99) {
            p99 = us + 1;
            break;
        }
    }
    printf("HVRUN-BENCH rand_read_iops=%.0f rand_read_ops=%" PRIu64 " rand_read_s=%.3f"
           " rand_read_lat_avg_us=%.1f rand_read_lat_p50_us=%" PRIu64 " rand_read_lat_p99_us=%" PRIu64
           " rand_read_lat_max_us=%.0f\n",
           (double)ops / s, ops, s, s / (double)ops * 1e6, p50, p99, max * 1e6);
    close(fd);
}

static void usage(void)
{
    fprintf(stderr, "usage: blkbench write DEV MIB BS_KIB SEED | read DEV MIB BS_KIB |"
                    " verify DEV MIB SEED | randread DEV SECONDS\n");
    exit(2);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3)
        usage();
    const char *mode = argv[1], *dev = argv[2];
    if (!strcmp(mode, "write") && argc == 6)
        sequential(1, dev, number(argv[3], "MIB"), number(argv[4], "BS_KIB"), number(argv[5], "SEED"));
    else if (!strcmp(mode, "read") && argc == 5)
        sequential(0, dev, number(argv[3], "MIB"), number(argv[4], "BS_KIB"), 0);
    else if (!strcmp(mode, "verify") && argc == 5)
        verify(dev, number(argv[3], "MIB"), number(argv[4], "SEED"));
    else if (!strcmp(mode, "randread") && argc == 4)
        randread(dev, number(argv[3], "SECONDS"));
    else
        usage();
    return 0;
}
