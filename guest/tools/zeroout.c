/*
 * zeroout: makes a byte range of a block device read as zeroes with the device's own
 * WRITE_ZEROES command, for the `disk` check (guest/checks/disk, hvrun.disk=trim).
 *
 *   zeroout DEV OFFSET LENGTH        (bytes, multiples of 512)
 *
 * Why a tool: busybox has no `blkdiscard -z` or `fallocate -p`. fallocate() with
 * PUNCH_HOLE | KEEP_SIZE on a block device is a write-zeroes request (that may unmap)
 * and, unlike the BLKZEROOUT ioctl, never falls back to writing pages of zeroes: it
 * fails with EOPNOTSUPP when the device has no write-zeroes command, so success shows
 * that the device took the command.
 * Exit status: 0, or 1 with "zeroout: what: why" on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long long number(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0) {
        fprintf(stderr, "zeroout: bad %s '%s'\n", what, s);
        exit(1);
    }
    return v;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: zeroout DEV OFFSET LENGTH\n");
        return 1;
    }
    long long offset = number(argv[2], "offset");
    long long length = number(argv[3], "length");
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        fprintf(stderr, "zeroout: open %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0) {
        fprintf(stderr, "zeroout: fallocate %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    return 0;
}
