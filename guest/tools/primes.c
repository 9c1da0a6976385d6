/*
 * primes: a CPU-bound benchmark in the manner of sysbench's CPU test, for the `bench-smp`
 * check. Each of THREADS threads repeats one "event" for SECONDS: count the primes up to
 * 10000 by trial division up to the square root. No memory traffic, no system calls in
 * the loop: it measures how fast the vCPUs execute guest code, not the VMM's exits.
 *
 *   primes THREADS SECONDS
 *
 * Prints: HVRUN-PRIMES threads=T seconds=S events=E events_per_s=R
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define LIMIT 10000
/* Primes up to 10000: the answer every event must get. */
#define PRIMES_UP_TO_LIMIT 1229

static atomic_int stop;
static atomic_int wrong;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int event(void)
{
    int count = 0;
    for (int n = 2; n <= LIMIT; n++) {
        int prime = 1;
        for (int d = 2; d * d <= n; d++) {
            if (n % d == 0) {
                prime = 0;
                break;
            }
        }
        count += prime;
    }
    return count;
}

static void *worker(void *arg)
{
    unsigned long *events = arg;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        if (event() != PRIMES_UP_TO_LIMIT)
            atomic_store(&wrong, 1);
        (*events)++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: primes THREADS SECONDS\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    double seconds = atof(argv[2]);
    if (threads < 1 || threads > 256 || seconds <= 0) {
        fprintf(stderr, "primes: bad arguments\n");
        return 2;
    }
    pthread_t tid[256];
    unsigned long events[256] = {0};
    double start = now();
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&tid[i], NULL, worker, &events[i]) != 0) {
            fprintf(stderr, "primes: pthread_create failed\n");
            return 1;
        }
    }
    struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&stop, 1);
    unsigned long total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        total += events[i];
    }
    double elapsed = now() - start;
    printf("HVRUN-PRIMES threads=%d seconds=%.2f events=%lu events_per_s=%.1f\n", threads, elapsed, total,
           total / elapsed);
    if (atomic_load(&wrong)) {
        fprintf(stderr, "primes: an event computed the wrong count\n");
        return 1;
    }
    return 0;
}
