/*
 * pingpong: the cost of waking a thread on another CPU, for the `bench-smp` check. Two
 * threads, pinned to CPUs A and B, pass a token back and forth through a futex for
 * SECONDS. Each side sleeps in FUTEX_WAIT between turns, so each pass is a wake-up of a
 * thread on an idle CPU: the kernel sends that CPU a reschedule IPI, which on a VMM with
 * a user-space APIC is an ICR write exit on one vCPU, a kick, and the other vCPU leaving
 * HLT and taking the interrupt.
 *
 *   pingpong A B SECONDS
 *
 * Prints: HVRUN-PINGPONG cpus=A,B round_trips=N us_per_round_trip=U
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Whose turn it is: 0 the first thread's, 1 the second's; 2 ends both. */
static atomic_int turn;
static atomic_int done;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void futex_wait(atomic_int *addr, int value)
{
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

static void futex_wake(atomic_int *addr)
{
    syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}

struct side {
    int cpu;
    int me;
    unsigned long passes;
};

static void *play(void *arg)
{
    struct side *s = arg;
    if (pin(s->cpu) != 0) {
        perror("pingpong: sched_setaffinity");
        exit(1);
    }
    for (;;) {
        int t = atomic_load(&turn);
        if (t == 2)
            return NULL;
        if (t != s->me) {
            futex_wait(&turn, t);
            continue;
        }
        s->passes++;
        atomic_store(&turn, atomic_load(&done) ? 2 : 1 - s->me);
        futex_wake(&turn);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: pingpong CPU-A CPU-B SECONDS\n");
        return 2;
    }
    struct side a = {atoi(argv[1]), 0, 0}, b = {atoi(argv[2]), 1, 0};
    double seconds = atof(argv[3]);
    pthread_t ta, tb;
    double start = now();
    pthread_create(&ta, NULL, play, &a);
    pthread_create(&tb, NULL, play, &b);
    struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&done, 1);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    double elapsed = now() - start;
    unsigned long round_trips = (a.passes + b.passes) / 2;
    printf("HVRUN-PINGPONG cpus=%d,%d round_trips=%lu us_per_round_trip=%.1f\n", a.cpu, b.cpu, round_trips,
           round_trips ? elapsed * 1e6 / round_trips : 0.0);
    return round_trips ? 0 : 1;
}
