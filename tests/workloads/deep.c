/*
 * A leak at the bottom of a deep recursion, for the stack walk.
 *
 *   deep N   recurse N levels, then leak 4242 bytes at the bottom. Every
 *            level's frame holds ~600 bytes, so the stack spans pages and
 *            the walk must read more than one.
 */
#include "common.h"

NOINLINE void leak_deep(void)
{
    keep(malloc(4242));
    TRUTH_HEAP(4242, 1);
}

NOINLINE int recurse(int n)
{
    volatile char pad[600];
    pad[0] = (char)n;
    if (n > 0) {
        int r = recurse(n - 1); /* not a tail call: the frame stays */
        return r + pad[0];
    }
    leak_deep();
    return pad[0];
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 30;
    recurse(n);
    truth_dump();
    return 0;
}
