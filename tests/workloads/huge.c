/*
 * Huge heap allocations. glibc serves them with mmap (and realloc of such a
 * chunk with mremap, free with munmap) internally; each must count exactly
 * once, as a heap allocation of the requested size, and never as an "mmap"
 * region.
 */
#include "common.h"

#define MiB ((size_t)1 << 20)

/* glibc's chunk header: the IS_MMAPPED bit of the size field. Used only to
   check the premise that these allocations really are mmap'd chunks. */
static int chunk_is_mmapped(void *p)
{
    if (under_valgrind())
        return 1;
    return (((size_t *)p)[-1] & 2) != 0;
}

NOINLINE void leak_huge_malloc(size_t n)
{
    void *p = malloc(n);
    keep(p);
    if (!chunk_is_mmapped(p))
        fail("malloc(%zu) was not served by mmap", n);
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_huge_calloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb, size);
    keep(p);
    if (!chunk_is_mmapped(p))
        fail("calloc was not served by mmap");
    TRUTH_HEAP(nmemb * size, 1);
}

NOINLINE void leak_huge_aligned(size_t align, size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, align, n) != 0)
        fail("posix_memalign(%zu, %zu) failed", align, n);
    keep(p);
    TRUTH_HEAP(n, 1);
}

NOINLINE void *noleak_huge_src(size_t n)
{
    void *p = malloc(n);
    keep(p);
    return p;
}

/* realloc of an mmap'd chunk: glibc uses mremap internally */
NOINLINE void leak_huge_realloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    keep(q);
    if (!chunk_is_mmapped(q))
        fail("realloc to %zu was not served by mmap", n);
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_huge_realloc_shrink(void *p, size_t n)
{
    keep(realloc(p, n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void noleak_huge_free(int times, size_t n)
{
    for (int i = 0; i < times; i++) {
        void *p = malloc(n);
        keep(p);
        free(p);
    }
}

int main(void)
{
    leak_huge_malloc(64 * MiB);
    leak_huge_calloc(8, 4 * MiB);
    leak_huge_aligned(MiB, 8 * MiB);
    leak_huge_realloc(noleak_huge_src(40 * MiB), 96 * MiB);
    leak_huge_realloc_shrink(noleak_huge_src(16 * MiB), MiB);
    noleak_huge_free(3, 64 * MiB);
    truth_dump();
    return 0;
}
