/*
 * A C program built with -O2 and without frame pointers (the compilers'
 * default): its malloc wrappers keep no frame pointer, so only the
 * executable's unwind tables lead from the wrapper back to the function
 * that leaked. Built by the test with -O2 -fomit-frame-pointer.
 */
#include "common.h"

NOINLINE void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        abort();
    return p;
}

NOINLINE void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q)
        abort();
    return q;
}

/* A second wrapper level: a "new object" helper over xmalloc. */
NOINLINE void *new_node(size_t payload)
{
    char *p = xmalloc(payload + 24);
    p[0] = 1;
    return p;
}

NOINLINE void leak_wrapped(void)
{
    keep(xmalloc(1000));
    TRUTH_HEAP(1000, 1);
}

NOINLINE void leak_nodes(void)
{
    for (int i = 0; i < 4; i++)
        keep(new_node(40)); /* 64 each */
    TRUTH_HEAP(256, 4);
}

NOINLINE void leak_grown(void)
{
    char *p = xmalloc(10);
    p = xrealloc(p, 100);
    p = xrealloc(p, 3000);
    keep(p);
    TRUTH_HEAP(3000, 1);
}

int main(void)
{
    leak_wrapped();
    leak_nodes();
    leak_grown();
    truth_dump();
    return 0;
}
