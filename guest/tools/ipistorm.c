/*
 * ipistorm: TLB shootdowns from every CPU at once, for the `smp-ipistorm` check. One
 * thread pinned to each online CPU; all share one address space. Each thread owns a
 * slice of PAGES shared pages that every other thread keeps reading, and per iteration:
 *  - mprotects its slice read-only and back (a protection change the other CPUs, which
 *    hold the pages in their TLBs, must see: a flush IPI to each);
 *  - maps a fresh shared mapping over its slice with MAP_FIXED (the old one is unmapped:
 *    another flush IPI to each), writes its new generation number into every page, then
 *    publishes the generation;
 *  - maps, touches and unmaps a scratch mapping of its own (one more shootdown);
 *  - reads every page of every other slice. A page may hold 0 (just replaced) or a
 *    generation at least the one its owner had published before the read; anything in
 *    between is a page the owner had already unmapped: a stale TLB entry, a flush IPI
 *    that was not delivered or not waited for.
 * The kernel sends those IPIs through smp_call_function_many and waits for every
 * target: a lost one is a soft lockup or an RCU stall in the guest's log.
 *
 *   ipistorm SECONDS
 *
 * Prints one line per thread, then a summary:
 *   "thread T cpu C iterations N stale S"   (C: where it ran last, sched_getcpu)
 *   "threads N total I stale S"
 * Exit status: 0 if every thread ran on its own CPU, made progress and saw nothing
 * stale; 1 otherwise (or "ipistorm: why" on stderr when it could not run).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGES 4
#define SCRATCH_PAGES 4
#define MAX_THREADS 64

static long page;
static int threads;
static char *slices;                    /* threads * PAGES pages */
static _Atomic uint64_t published[MAX_THREADS];
static atomic_int stop;

struct worker {
    pthread_t tid;
    int cpu;
    int ran_on;
    unsigned long iterations;
    unsigned long stale;
};

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static char *slice(int t)
{
    return slices + (size_t)t * PAGES * page;
}

static volatile uint64_t *word(int t, int p)
{
    return (volatile uint64_t *)(slice(t) + (size_t)p * page);
}

static void *run(void *arg)
{
    struct worker *w = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        die("ipistorm: sched_setaffinity");
    size_t len = (size_t)PAGES * page;
    uint64_t gen = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        char *own = slice(w->cpu);
        if (mprotect(own, len, PROT_READ) != 0 || mprotect(own, len, PROT_READ | PROT_WRITE) != 0)
            die("ipistorm: mprotect");
        gen++;
        if (mmap(own, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != own)
            die("ipistorm: mmap MAP_FIXED");
        for (int p = 0; p < PAGES; p++)
            *word(w->cpu, p) = gen;
        atomic_store_explicit(&published[w->cpu], gen, memory_order_release);

        char *scratch = mmap(NULL, SCRATCH_PAGES * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (scratch == MAP_FAILED)
            die("ipistorm: mmap");
        for (int p = 0; p < SCRATCH_PAGES; p++)
            scratch[(size_t)p * page] = 1;
        if (munmap(scratch, SCRATCH_PAGES * page) != 0)
            die("ipistorm: munmap");

        for (int t = 0; t < threads; t++) {
            if (t == w->cpu)
                continue;
            for (int p = 0; p < PAGES; p++) {
                uint64_t seen = atomic_load_explicit(&published[t], memory_order_acquire);
                uint64_t v = *word(t, p);
                if (v != 0 && v < seen)
                    w->stale++;
            }
        }
        w->iterations++;
    }
    w->ran_on = sched_getcpu();
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2 || atof(argv[1]) <= 0) {
        fprintf(stderr, "usage: ipistorm SECONDS\n");
        return 2;
    }
    double seconds = atof(argv[1]);
    page = sysconf(_SC_PAGESIZE);
    threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 2 || threads > MAX_THREADS) {
        fprintf(stderr, "ipistorm: needs 2 to %d online CPUs, has %d\n", MAX_THREADS, threads);
        return 1;
    }
    slices = mmap(NULL, (size_t)threads * PAGES * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slices == MAP_FAILED)
        die("ipistorm: mmap");
    static struct worker w[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        w[t].cpu = t;
        if (pthread_create(&w[t].tid, NULL, run, &w[t]) != 0) {
            fprintf(stderr, "ipistorm: pthread_create failed\n");
            return 1;
        }
    }
    struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&stop, 1);
    unsigned long total = 0, stale = 0;
    int ok = 1;
    for (int t = 0; t < threads; t++) {
        pthread_join(w[t].tid, NULL);
        printf("thread %d cpu %d iterations %lu stale %lu\n", t, w[t].ran_on, w[t].iterations, w[t].stale);
        total += w[t].iterations;
        stale += w[t].stale;
        if (w[t].ran_on != t || w[t].iterations == 0 || w[t].stale != 0)
            ok = 0;
    }
    printf("threads %d total %lu stale %lu\n", threads, total, stale);
    return ok ? 0 : 1;
}
