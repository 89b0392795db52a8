/*
 * laps LAPS PAIRS: the tight loop (malloc(64)/free pairs on one thread) in
 * LAPS laps of PAIRS pairs, each lap timed with CLOCK_MONOTONIC. After the
 * work phase it prints one line per lap, `lap <start_ns> <end_ns>`, then
 * the usual `work_ns=... calls=...` line. Run under `memtrace report
 * --floor-phases`, whose switch times share the clock, the laps tell the
 * floor from tracing within one process.
 */
#include "bench.h"

int main(int argc, char **argv) {
    long laps = arg_long(argc, argv, 1, 1500);
    long pairs = arg_long(argc, argv, 2, 2000);
    uint64_t *t = malloc((size_t)(laps + 1) * sizeof *t);
    if (!t) {
        perror("malloc");
        return 1;
    }
    gate();
    t[0] = now_ns();
    for (long l = 0; l < laps; l++) {
        for (long i = 0; i < pairs; i++) {
            void *p = malloc(64);
            sink(p);
            free(p);
        }
        t[l + 1] = now_ns();
    }
    for (long l = 0; l < laps; l++)
        printf("lap %llu %llu\n", (unsigned long long)t[l], (unsigned long long)t[l + 1]);
    report(t[laps] - t[0], (uint64_t)(2 * laps * pairs));
    return 0;
}
