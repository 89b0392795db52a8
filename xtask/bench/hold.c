/*
 * hold N: after the gate, allocates N malloc(16) blocks and keeps them,
 * prints `held=N`, then waits for a second gate (a newline or end of file
 * on stdin) and exits without freeing them.
 */
#include "bench.h"

int main(int argc, char **argv) {
    long n = arg_long(argc, argv, 1, 1000000);
    gate();
    uint64_t t0 = now_ns();
    void **blocks = malloc((size_t)(n ? n : 1) * sizeof *blocks);
    if (!blocks) abort();
    sink(blocks);
    for (long i = 0; i < n; i++) {
        blocks[i] = malloc(16);
        if (!blocks[i]) abort();
    }
    sink(blocks[n ? n - 1 : 0]);
    uint64_t t1 = now_ns();
    printf("held=%ld\n", n);
    report(t1 - t0, (uint64_t)n + 1);
    gate();
    return 0;
}
