/*
 * pattern: writes LENGTH pseudo-random bytes made from SEED to stdout, for the `disk`
 * check (guest/checks/disk).
 *
 *   pattern SEED LENGTH
 *
 * Why not /dev/urandom: until the kernel's random generator is initialised, a read of it
 * waits for entropy, which took from 30 s to over 4 minutes in the test sandbox. And
 * with a known seed the host can compute every byte the guest wrote: tests/tests/disk.rs
 * has the same generator (`pattern`). The generator: x = SEED * 0x9e3779b97f4a7c15 | 1,
 * then for each 8 bytes, xorshift64 (x ^= x << 13; x ^= x >> 7; x ^= x << 17) and x in
 * little-endian order; the last 8 are cut to LENGTH.
 * Exit status: 0, or 1 with "pattern: why" on stderr.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t number(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end) {
        fprintf(stderr, "pattern: bad %s '%s'\n", what, s);
        exit(1);
    }
    return v;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: pattern SEED LENGTH\n");
        return 1;
    }
    uint64_t x = number(argv[1], "seed") * 0x9e3779b97f4a7c15ull | 1;
    uint64_t left = number(argv[2], "length");
    static unsigned char buf[65536];
    while (left > 0) {
        size_t n = 0;
        while (n < sizeof buf && n < left) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for (int i = 0; i < 8 && n < sizeof buf && n < left; i++)
                buf[n++] = (unsigned char)(x >> (8 * i));
        }
        if (fwrite(buf, 1, n, stdout) != n) {
            fprintf(stderr, "pattern: write: %s\n", strerror(errno));
            return 1;
        }
        left -= n;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "pattern: write: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}
