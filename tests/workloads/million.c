/*
 * One million malloc/free pairs with exactly ten leaks of 777 bytes,
 * interleaved (one every 100000 iterations).
 */
#include "common.h"

NOINLINE void noleak_churn(size_t n)
{
    void *p = malloc(n);
    escape(p);
    free(p);
}

NOINLINE void leak_ten(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

int main(void)
{
    for (int i = 0; i < 1000000; i++) {
        noleak_churn(16 + (size_t)(i % 512));
        if (i % 100000 == 99999)
            leak_ten(777);
    }
    truth_dump();
    return 0;
}
