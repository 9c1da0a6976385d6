/*
 * cpuwork: a fixed piece of CPU work with a known answer, for the `smp` check: counts
 * the primes below 50000 by trial division, with the CPU it ran on before and after
 * (sched_getcpu). The check pins it to one CPU with taskset, so both must be that CPU.
 *
 *   cpuwork
 *
 * Prints: "cpu C-BEFORE C-AFTER primes P" (P is 5133 when the CPU computed right).
 * Exit status: 0, or 1 with "cpuwork: why" on stderr.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>

#define LIMIT 50000

int main(void)
{
    int before = sched_getcpu();
    /* volatile: the compiler must not fold the loop into a constant. */
    volatile int limit = LIMIT;
    int count = 0;
    for (int n = 2; n < limit; n++) {
        int prime = 1;
        for (int d = 2; d * d <= n; d++) {
            if (n % d == 0) {
                prime = 0;
                break;
            }
        }
        count += prime;
    }
    int after = sched_getcpu();
    if (before < 0 || after < 0) {
        perror("cpuwork: sched_getcpu");
        return 1;
    }
    printf("cpu %d %d primes %d\n", before, after, count);
    return 0;
}
