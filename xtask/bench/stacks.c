/*
 * stacks: 2^14 = 16384 distinct call paths, each leaking one malloc(24).
 * Path i recurses through DEPTH levels; at level l it goes through
 * step_a() or step_b() by bit l of i, so every path has its own stack.
 * The recursion is not a tail call (the result is used); the next step is
 * called through a volatile function table, so GCC cannot turn the
 * self-recursion into a loop (it does for a direct call, even with the
 * result used); noipa keeps it from inlining, cloning or folding the two
 * identical-looking steps.
 */
#include "bench.h"

#define DEPTH 14
#define PATHS (1u << DEPTH)

static void *leaked[PATHS];

OPAQUE static int leaf(unsigned i) {
    leaked[i] = malloc(24);
    sink(leaked[i]);
    return leaked[i] != NULL;
}

OPAQUE int step_a(int level, unsigned i);
OPAQUE int step_b(int level, unsigned i);

static int (*volatile const steps[2])(int, unsigned) = {step_b, step_a};

int step_a(int level, unsigned i) {
    if (level == DEPTH) return leaf(i) + 1; /* not a tail call */
    int r = steps[(i >> level) & 1](level + 1, i);
    return r + 1;
}

int step_b(int level, unsigned i) {
    if (level == DEPTH) return leaf(i) + 1; /* not a tail call */
    int r = steps[(i >> level) & 1](level + 1, i);
    return r + 2;
}

int main(void) {
    gate();
    uint64_t t0 = now_ns();
    unsigned ok = 0;
    for (unsigned i = 0; i < PATHS; i++) ok += steps[0](0, i) > 0;
    uint64_t t1 = now_ns();
    if (ok != PATHS) {
        fprintf(stderr, "workload premise failed\n");
        return 3;
    }
    report(t1 - t0, PATHS);
    return 0;
}
