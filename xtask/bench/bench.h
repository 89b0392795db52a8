/*
 * Shared helpers of the `cargo xtask bench` workloads.
 *
 * Every workload:
 *  - waits for a gate before its work phase: it prints `ready`, then reads
 *    standard input up to the first newline or end of file. The bench
 *    harness keeps stdin open while it attaches a tracer to the waiting
 *    process (--pid, system-wide, bpftrace) and writes the newline once the
 *    probes are in; with stdin at /dev/null the gate opens at once;
 *  - times its work phase alone with CLOCK_MONOTONIC and prints
 *    `work_ns=<ns> calls=<allocator calls>` on stdout, so start-up and
 *    attach costs do not count.
 *
 * Compiled with -O2 -g -fno-omit-frame-pointer. GCC removes a malloc/free
 * pair whose pointer does not escape, so every pointer goes through
 * sink(), an opaque (noipa) function that stores it in a volatile global.
 */
#ifndef MEMTRACE_BENCH_H
#define MEMTRACE_BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__clang__)
#define OPAQUE __attribute__((noinline, used))
#else
#define OPAQUE __attribute__((noinline, noclone, noipa, used))
#endif

static void *volatile bench_sink_slot;

/* The compiler must assume p escapes (and may be read back). */
OPAQUE static void sink(void *p) { bench_sink_slot = p; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Says `ready` on stdout, then blocks until stdin yields a newline or end
 * of file. */
static void gate(void) {
    char c;
    fputs("ready\n", stdout);
    fflush(stdout);
    ssize_t n;
    while ((n = read(0, &c, 1)) == 1 && c != '\n') {
    }
}

__attribute__((unused)) static long arg_long(int argc, char **argv, int i, long def) {
    if (argc <= i) return def;
    char *end;
    long v = strtol(argv[i], &end, 10);
    if (*end != '\0' || v < 0) {
        fprintf(stderr, "bad argument %s\n", argv[i]);
        exit(2);
    }
    return v;
}

static void report(uint64_t work_ns, uint64_t calls) {
    printf("work_ns=%llu calls=%llu\n", (unsigned long long)work_ns,
           (unsigned long long)calls);
    fflush(stdout);
}

#endif
