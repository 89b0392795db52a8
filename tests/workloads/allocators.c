/*
 * Every glibc heap allocator entry point, in four independent modes:
 *
 *   allocators basic    malloc, calloc, free, free(NULL), failed allocations
 *   allocators realloc  realloc grow/shrink/NULL/0/failure, reallocarray
 *   allocators chain    blocks realloc'd many times
 *   allocators aligned  posix_memalign, aligned_alloc, memalign, valloc, pvalloc
 *   allocators zero     malloc(0)
 *
 * Attribution rule for realloc (and reallocarray), asserted by the tests:
 * a block resized by a successful realloc belongs to the call site of that
 * realloc, i.e. to the most recent successful realloc of the block; the
 * function that first allocated it no longer owns anything. A failed realloc
 * changes nothing: the old block stays with its previous owner.
 *
 * Sizes are the sizes requested: calloc(n, m) counts n*m, pvalloc(n) counts
 * n (not n rounded up to a page), realloc counts the new size.
 */
#include "common.h"
#include <malloc.h>

/* ---------------------------------------------------------------- basic */

NOINLINE void leak_malloc(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

/* One call site, executed `times` times. */
NOINLINE void leak_malloc_loop(int times, size_t n)
{
    for (int i = 0; i < times; i++)
        keep(malloc(n));
    TRUTH_HEAP((size_t)times * n, times);
}

/* Two distinct call sites in the same function: two stacks, one function. */
NOINLINE void leak_malloc_two_sites(size_t a, size_t b)
{
    keep(malloc(a));
    keep(malloc(b));
    TRUTH_HEAP(a + b, 2);
}

/* Called from two different places in main: two stacks, one frames[0]. */
NOINLINE void leak_called_twice(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_calloc(size_t nmemb, size_t size)
{
    keep(calloc(nmemb, size));
    TRUTH_HEAP(nmemb * size, 1);
}

/* Allocates `total` blocks, frees `freed` of them elsewhere. */
static void *partial_blocks[64];

NOINLINE void leak_some_freed(int total, size_t n)
{
    for (int i = 0; i < total; i++) {
        partial_blocks[i] = malloc(n);
        keep(partial_blocks[i]);
    }
    TRUTH_HEAP((size_t)total * n, total);
}

NOINLINE void noleak_free_some(int freed, size_t n)
{
    for (int i = 0; i < freed; i++)
        free(partial_blocks[i]);
    truth("heap", "leak_some_freed", -(long long)((size_t)freed * n), -freed);
}

NOINLINE void noleak_malloc_free(int times, size_t n)
{
    for (int i = 0; i < times; i++) {
        void *p = malloc(n);
        escape(p);
        free(p);
    }
}

NOINLINE void noleak_calloc_free(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb, size);
    escape(p);
    free(p);
}

NOINLINE void noleak_free_null(int times)
{
    for (int i = 0; i < times; i++)
        free(opaque_ptr(NULL));
}

NOINLINE void noleak_malloc_fail(void)
{
    void *p = malloc(opaque_size(HUGE_FAIL_SIZE));
    if (p != NULL)
        fail("malloc(SIZE_MAX/2) succeeded");
    p = malloc(opaque_size(SIZE_MAX));
    if (p != NULL)
        fail("malloc(SIZE_MAX) succeeded");
}

NOINLINE void noleak_calloc_fail(void)
{
    /* multiplication overflow */
    void *p = calloc(opaque_size(HUGE_FAIL_SIZE), opaque_size(4));
    if (p != NULL)
        fail("calloc(SIZE_MAX/2, 4) succeeded");
    /* no overflow, but too big */
    p = calloc(opaque_size(1), opaque_size(HUGE_FAIL_SIZE));
    if (p != NULL)
        fail("calloc(1, SIZE_MAX/2) succeeded");
}

NOINLINE void mode_basic(void)
{
    leak_malloc(100);
    leak_malloc_loop(5, 1000);
    leak_malloc_two_sites(10, 20);
    leak_called_twice(64);
    leak_calloc(10, 100);
    leak_some_freed(10, 256);
    noleak_free_some(4, 256);
    noleak_malloc_free(100, 500);
    noleak_calloc_free(3, 7);
    noleak_free_null(1000);
    noleak_malloc_fail();
    noleak_calloc_fail();
    leak_called_twice(64);
}

/* -------------------------------------------------------------- realloc */

NOINLINE void *noleak_realloc_src(size_t n)
{
    void *p = malloc(n);
    keep(p);
    return p;
}

/* grow (small) */
NOINLINE void leak_realloc_grow(void *p, size_t n)
{
    keep(realloc(p, n));
    TRUTH_HEAP(n, 1);
}

/* grow past the mmap threshold: glibc copies into a fresh mmap'd chunk */
NOINLINE void leak_realloc_grow_huge(void *p, size_t n)
{
    keep(realloc(p, n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_realloc_shrink(void *p, size_t n)
{
    keep(realloc(p, n));
    TRUTH_HEAP(n, 1);
}

/* realloc(NULL, n) is one allocation */
NOINLINE void leak_realloc_null(size_t n)
{
    keep(realloc(opaque_ptr(NULL), n));
    TRUTH_HEAP(n, 1);
}

/* realloc(p, 0) frees p (glibc returns NULL) */
NOINLINE void noleak_realloc_zero(void *p)
{
    void *q = realloc(p, opaque_size(0));
    if (q != NULL)
        fail("realloc(p, 0) returned non-NULL (expected glibc to free p)");
}

NOINLINE void *leak_realloc_fail_src(size_t n)
{
    void *p = malloc(n);
    keep(p);
    TRUTH_HEAP(n, 1);
    return p;
}

/* failed realloc: p stays allocated, owned by leak_realloc_fail_src */
NOINLINE void noleak_realloc_fail(void *p)
{
    void *q = realloc(p, opaque_size(HUGE_FAIL_SIZE));
    if (q != NULL)
        fail("realloc(p, SIZE_MAX/2) succeeded");
    escape(p);
}

NOINLINE void leak_reallocarray_null(size_t nmemb, size_t size)
{
    keep(reallocarray(opaque_ptr(NULL), nmemb, size));
    TRUTH_HEAP(nmemb * size, 1);
}

NOINLINE void leak_reallocarray_grow(void *p, size_t nmemb, size_t size)
{
    keep(reallocarray(p, nmemb, size));
    TRUTH_HEAP(nmemb * size, 1);
}

NOINLINE void *leak_reallocarray_fail_src(size_t n)
{
    void *p = malloc(n);
    keep(p);
    TRUTH_HEAP(n, 1);
    return p;
}

/* reallocarray overflow: fails with ENOMEM, p untouched */
NOINLINE void noleak_reallocarray_overflow(void *p)
{
    void *q = reallocarray(p, opaque_size(HUGE_FAIL_SIZE), opaque_size(4));
    if (q != NULL)
        fail("reallocarray(p, SIZE_MAX/2, 4) succeeded");
    escape(p);
}

NOINLINE void noleak_realloc_then_free(void)
{
    void *p = malloc(opaque_size(10));
    escape(p);
    p = realloc(p, opaque_size(20000));
    keep(p);
    p = realloc(p, opaque_size(200000)); /* mmap'd chunk */
    keep(p);
    free(p);
}

NOINLINE void mode_realloc(void)
{
    leak_realloc_grow(noleak_realloc_src(100), 1000);
    leak_realloc_grow_huge(noleak_realloc_src(100), 200000);
    leak_realloc_shrink(noleak_realloc_src(5000), 50);
    leak_realloc_null(300);
    noleak_realloc_zero(noleak_realloc_src(777));
    noleak_realloc_fail(leak_realloc_fail_src(400));
    leak_reallocarray_null(10, 48);
    leak_reallocarray_grow(noleak_realloc_src(64), 25, 40);
    noleak_reallocarray_overflow(leak_reallocarray_fail_src(123));
    noleak_realloc_then_free();
}

/* ---------------------------------------------------------------- chain */

NOINLINE void *noleak_chain_start(size_t n)
{
    void *p = malloc(n);
    keep(p);
    return p;
}

NOINLINE void *noleak_chain_step_a(void *p, size_t n)
{
    p = realloc(p, n);
    keep(p);
    return p;
}

NOINLINE void *noleak_chain_step_b(void *p, size_t n)
{
    p = realloc(p, n);
    keep(p);
    return p;
}

NOINLINE void leak_chain_last(void *p, size_t n)
{
    keep(realloc(p, n));
    TRUTH_HEAP(n, 1);
}

/* allocated and realloc'd 100 times within the same function */
NOINLINE void leak_chain_loop(int steps, size_t step)
{
    void *p = malloc(step);
    keep(p);
    for (int i = 1; i <= steps; i++) {
        p = realloc(p, step * (size_t)(i + 1));
        keep(p);
    }
    TRUTH_HEAP(step * (size_t)(steps + 1), 1);
}

/* the last realloc of the chain shrinks (most likely in place) */
NOINLINE void leak_chain_shrink_last(void *p, size_t n)
{
    keep(realloc(p, n));
    TRUTH_HEAP(n, 1);
}

/* three different blocks, each finally realloc'd here */
NOINLINE void leak_chain_multi(void *a, void *b, void *c)
{
    keep(realloc(a, 111));
    keep(realloc(b, 222));
    keep(realloc(c, 333));
    TRUTH_HEAP(666, 3);
}

NOINLINE void mode_chain(void)
{
    void *p = noleak_chain_start(16);
    size_t n = 16;
    for (int i = 0; i < 10; i++) {
        n *= 2;
        p = (i % 2) ? noleak_chain_step_b(p, n) : noleak_chain_step_a(p, n);
    }
    leak_chain_last(p, 5000);

    leak_chain_loop(100, 16);

    p = noleak_chain_start(100000);
    p = noleak_chain_step_a(p, 300000);
    p = noleak_chain_step_b(p, 1000);
    leak_chain_shrink_last(p, 10);

    void *a = noleak_chain_step_a(noleak_chain_start(10), 1000);
    void *b = noleak_chain_step_b(noleak_chain_start(20), 2000);
    void *c = noleak_chain_start(30);
    leak_chain_multi(a, b, c);
}

/* -------------------------------------------------------------- aligned */

static void *posix_memalign_block;

NOINLINE void leak_posix_memalign(size_t align, size_t n)
{
    void *p = NULL;
    int rc = posix_memalign(&p, align, n);
    if (rc != 0)
        fail("posix_memalign(%zu, %zu) failed: %d", align, n, rc);
    keep(p);
    posix_memalign_block = p;
    TRUTH_HEAP(n, 1);
}

/* Failing posix_memalign must not touch *memptr. The slot is preset to the
   address of the live block from leak_posix_memalign: a tracer that reads
   *memptr without checking the return value would re-attribute that block
   to this function. */
NOINLINE void noleak_posix_memalign_fail(void)
{
    void *p = posix_memalign_block;
    int rc = posix_memalign(&p, opaque_size(3), opaque_size(100));
    if (rc != EINVAL)
        fail("posix_memalign with alignment 3 returned %d, expected EINVAL", rc);
    if (p != posix_memalign_block)
        fail("failed posix_memalign changed *memptr");
    rc = posix_memalign(&p, opaque_size(64), opaque_size(HUGE_FAIL_SIZE));
    if (rc != ENOMEM)
        fail("posix_memalign(64, SIZE_MAX/2) returned %d, expected ENOMEM", rc);
    if (p != posix_memalign_block)
        fail("failed posix_memalign changed *memptr");
    escape(p);
}

/* glibc 2.36: aligned_alloc and memalign are the same function (same
   address); each call must still count once. */
NOINLINE void leak_aligned_alloc(size_t align, size_t n)
{
    keep(aligned_alloc(align, n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_memalign(size_t align, size_t n)
{
    keep(memalign(align, n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_valloc(size_t n)
{
    keep(valloc(n));
    TRUTH_HEAP(n, 1);
}

/* requested n; glibc rounds the block up to a whole page, memtrace counts n */
NOINLINE void leak_pvalloc(size_t n)
{
    keep(pvalloc(n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void noleak_aligned_free(void)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, opaque_size(100)) != 0)
        fail("posix_memalign failed");
    escape(p);
    free(p);
    p = aligned_alloc(128, opaque_size(256));
    escape(p);
    free(p);
    p = memalign(32, opaque_size(40));
    escape(p);
    free(p);
    p = valloc(opaque_size(10));
    escape(p);
    free(p);
    if (!under_valgrind()) {
        p = pvalloc(opaque_size(10));
        escape(p);
        free(p);
    }
}

NOINLINE void noleak_aligned_fail(void)
{
    if (aligned_alloc(64, opaque_size(HUGE_FAIL_SIZE)) != NULL)
        fail("aligned_alloc(64, SIZE_MAX/2) succeeded");
    if (memalign(64, opaque_size(HUGE_FAIL_SIZE)) != NULL)
        fail("memalign(64, SIZE_MAX/2) succeeded");
    if (valloc(opaque_size(HUGE_FAIL_SIZE)) != NULL)
        fail("valloc(SIZE_MAX/2) succeeded");
    if (!under_valgrind() && pvalloc(opaque_size(SIZE_MAX - 100)) != NULL)
        fail("pvalloc(SIZE_MAX-100) succeeded");
}

NOINLINE void mode_aligned(void)
{
    leak_posix_memalign(4096, 3000);
    noleak_posix_memalign_fail();
    leak_aligned_alloc(64, 1024);
    leak_memalign(256, 200);
    leak_valloc(5000);
    if (!under_valgrind()) /* valgrind aborts on pvalloc */
        leak_pvalloc(100);
    noleak_aligned_free();
    noleak_aligned_fail();
}

/* ----------------------------------------------------------------- zero */

/* malloc(0) returns a unique live block: 0 bytes, 1 allocation each */
NOINLINE void leak_malloc_zero(int times)
{
    for (int i = 0; i < times; i++)
        keep(malloc(opaque_size(0)));
    TRUTH_HEAP(0, times);
}

NOINLINE void mode_zero(void)
{
    leak_malloc_zero(2);
    leak_malloc(8);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "basic";
    if (strcmp(mode, "basic") == 0)
        mode_basic();
    else if (strcmp(mode, "realloc") == 0)
        mode_realloc();
    else if (strcmp(mode, "chain") == 0)
        mode_chain();
    else if (strcmp(mode, "aligned") == 0)
        mode_aligned();
    else if (strcmp(mode, "zero") == 0)
        mode_zero();
    else
        fail("unknown mode %s", mode);
    truth_dump();
    return 0;
}
