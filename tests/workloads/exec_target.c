/*
 * The image exec'd by exec_leaker. Its heap starts where the old image's
 * did, so its blocks likely reuse the old image's addresses.
 */
#include "common.h"

NOINLINE void leak_after_exec(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_after_exec_mmap(size_t pages)
{
    void *p = mmap(NULL, pages * page_size(), ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(pages * page_size(), 1);
}

/* same sizes as the old image's leaks, freed */
NOINLINE void noleak_after_exec_churn(void)
{
    for (int i = 0; i < 100; i++) {
        void *p = malloc(64);
        escape(p);
        free(p);
    }
    void *p = malloc(5555);
    escape(p);
    free(p);
}

int main(void)
{
    noleak_after_exec_churn();
    leak_after_exec(6666);
    leak_after_exec_mmap(2);
    truth_dump();
    return 0;
}
