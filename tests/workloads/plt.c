/*
 * Takes malloc's and free's addresses. Built as a non-PIE executable
 * (the discovery test does), that gives it canonical PLT entries: dynamic
 * symbols `malloc` and `free` that are undefined yet have an address.
 * They are not an allocator, and probing them would single-step every
 * call.
 */
#include "common.h"

static void *(*volatile alloc_fn)(size_t);
static void (*volatile free_fn)(void *);

NOINLINE void leak_through_pointer(int times, size_t n)
{
    for (int i = 0; i < times; i++)
        keep(alloc_fn(n));
    TRUTH_HEAP((size_t)times * n, times);
}

NOINLINE void noleak_through_pointer(void)
{
    for (int i = 0; i < 100; i++)
        free_fn(alloc_fn(48));
}

int main(void)
{
    /* Taken in code (not in a static initializer): non-PIE code refers to
     * the functions by absolute address, which makes the linker give them
     * canonical PLT entries. */
    alloc_fn = malloc;
    free_fn = free;
    leak_through_pointer(4, 321);
    noleak_through_pointer();
    truth_dump();
    return 0;
}
