/*
 * Anonymous mmap regions ("kind": "mmap"), in independent modes:
 *
 *   mmap basic    whole regions: leaked, unmapped, file-backed, failed
 *   mmap partial  munmap of part of a region (middle, head, tail, holes)
 *   mmap mremap   mremap grow in place, move, shrink, failure
 *   mmap fixed    MAP_FIXED over part of an existing region
 *
 * Rules asserted by the tests:
 *  - only anonymous mappings count; bytes are the bytes still mapped;
 *  - a region that is partially unmapped is still ONE outstanding allocation
 *    (of its remaining bytes), however many pieces remain;
 *  - a region resized by a successful mremap belongs to the mremap call site
 *    (same rule as realloc); a failed mremap changes nothing;
 *  - MAP_FIXED over part of a region implicitly unmaps that part.
 */
#include "common.h"

static size_t PG;

static void unmap(void *p, size_t len)
{
    if (munmap(p, len) != 0)
        fail("munmap(%p, %zu) failed: %s", p, len, strerror(errno));
}

/* Premise check, independent of the bookkeeping: page i of p is mapped iff
   pattern[i] == 'M' (mincore fails with ENOMEM on unmapped pages). */
static void expect_pages(const char *what, const char *p, const char *pattern)
{
    unsigned char v;
    for (size_t i = 0; pattern[i]; i++) {
        int mapped = mincore((void *)(p + i * PG), PG, &v) == 0;
        if (!mapped && errno != ENOMEM)
            fail("mincore: %s", strerror(errno));
        if (mapped != (pattern[i] == 'M'))
            fail("%s: page %zu is %smapped, expected layout %s", what, i, mapped ? "" : "not ", pattern);
    }
}

/* ---------------------------------------------------------------- basic */

NOINLINE void leak_mmap_anon(size_t pages)
{
    void *p = mmap(NULL, pages * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(pages * PG, 1);
}

NOINLINE void leak_mmap_loop(int times)
{
    for (int i = 0; i < times; i++) {
        void *p = mmap(NULL, PG, ANON_PROT, ANON_FLAGS, -1, 0);
        if (p == MAP_FAILED)
            fail("mmap failed");
        keep(p);
    }
    TRUTH_MMAP((size_t)times * PG, times);
}

/* one function leaking both kinds */
NOINLINE void leak_mmap_and_heap(void)
{
    void *p = mmap(NULL, 2 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    keep(malloc(300));
    TRUTH_MMAP(2 * PG, 1);
    TRUTH_HEAP(300, 1);
}

NOINLINE void noleak_mmap_unmapped(void)
{
    void *p = mmap(NULL, 3 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    escape(p);
    unmap(p, 3 * PG);
}

/* unmapped one page at a time */
NOINLINE void noleak_mmap_pieces(void)
{
    char *p = mmap(NULL, 4 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    escape(p);
    unmap(p + 2 * PG, PG);
    unmap(p, PG);
    unmap(p + 3 * PG, PG);
    unmap(p + PG, PG);
}

/* a file mapping, leaked: not anonymous, never counted */
NOINLINE void noleak_mmap_file(void)
{
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail("open /proc/self/exe: %s", strerror(errno));
    void *p = mmap(NULL, PG, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        fail("file mmap failed: %s", strerror(errno));
    keep(p);
    close(fd);
}

/* failed mmap calls */
NOINLINE void noleak_mmap_fail(void)
{
    void *p = mmap(NULL, opaque_size(0), ANON_PROT, ANON_FLAGS, -1, 0);
    if (p != MAP_FAILED)
        fail("mmap of length 0 succeeded");
    p = mmap(NULL, opaque_size((size_t)1 << 62), ANON_PROT, ANON_FLAGS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED)
        fail("mmap of 2^62 bytes succeeded");
}

NOINLINE void mode_basic(void)
{
    leak_mmap_anon(5);
    leak_mmap_loop(4);
    leak_mmap_and_heap();
    noleak_mmap_unmapped();
    noleak_mmap_pieces();
    noleak_mmap_file();
    noleak_mmap_fail();
}

/* -------------------------------------------------------------- partial */

/* 10 pages; pages 4 and 5 are unmapped by noleak_munmap_range */
NOINLINE char *leak_mmap_partial_middle(void)
{
    char *p = mmap(NULL, 10 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(10 * PG, 1);
    return p;
}

NOINLINE char *leak_mmap_trim_head(void)
{
    char *p = mmap(NULL, 4 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(4 * PG, 1);
    return p;
}

NOINLINE char *leak_mmap_trim_tail(void)
{
    char *p = mmap(NULL, 4 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(4 * PG, 1);
    return p;
}

NOINLINE char *leak_mmap_holes(void)
{
    char *p = mmap(NULL, 8 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(8 * PG, 1);
    return p;
}

NOINLINE void noleak_munmap_range(const char *owner, char *p, size_t first_page, size_t pages)
{
    unmap(p + first_page * PG, pages * PG);
    truth("mmap", owner, -(long long)(pages * PG), 0);
}

/* Two adjacent regions from two sites, unmapped by one munmap call. */
NOINLINE char *noleak_span_a(void)
{
    char *p = mmap(NULL, 4 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    return p;
}

NOINLINE void noleak_span_b(char *at)
{
    void *q = mmap(at, 2 * PG, ANON_PROT, ANON_FLAGS | MAP_FIXED_NOREPLACE, -1, 0);
    if (q != at)
        fail("mmap MAP_FIXED_NOREPLACE at %p returned %p", (void *)at, q);
    keep(q);
}

NOINLINE void mode_partial(void)
{
    char *p = leak_mmap_partial_middle();
    noleak_munmap_range("leak_mmap_partial_middle", p, 4, 2);
    expect_pages("partial_middle", p, "MMMM..MMMM");

    p = leak_mmap_trim_head();
    noleak_munmap_range("leak_mmap_trim_head", p, 0, 1);
    expect_pages("trim_head", p, ".MMM");

    p = leak_mmap_trim_tail();
    noleak_munmap_range("leak_mmap_trim_tail", p, 2, 2);
    expect_pages("trim_tail", p, "MM..");

    p = leak_mmap_holes();
    noleak_munmap_range("leak_mmap_holes", p, 1, 1);
    noleak_munmap_range("leak_mmap_holes", p, 3, 1);
    noleak_munmap_range("leak_mmap_holes", p, 5, 1);
    expect_pages("holes", p, "M.M.M.MM");

    /* region A = 4 pages; its upper half is unmapped and replaced by region
       B; then all 4 pages go in one munmap */
    p = noleak_span_a();
    unmap(p + 2 * PG, 2 * PG);
    noleak_span_b(p + 2 * PG);
    expect_pages("span", p, "MMMM");
    unmap(p, 4 * PG);
    expect_pages("span", p, "....");
}

/* --------------------------------------------------------------- mremap */

NOINLINE char *noleak_mremap_src(size_t pages)
{
    char *p = mmap(NULL, pages * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    return p;
}

/* grow without MREMAP_MAYMOVE: must stay in place */
NOINLINE void leak_mremap_inplace(char *p, size_t old_pages, size_t new_pages)
{
    void *q = mremap(p, old_pages * PG, new_pages * PG, 0);
    if (q != p)
        fail("in-place mremap returned %p (%s)", q, strerror(errno));
    keep(q);
    TRUTH_MMAP(new_pages * PG, 1);
}

/* grow with MREMAP_MAYMOVE while the next page is taken: must move */
NOINLINE void leak_mremap_move(char *p, size_t old_pages, size_t new_pages)
{
    void *q = mremap(p, old_pages * PG, new_pages * PG, MREMAP_MAYMOVE);
    if (q == MAP_FAILED)
        fail("mremap failed: %s", strerror(errno));
    if (q == p)
        fail("mremap did not move");
    keep(q);
    TRUTH_MMAP(new_pages * PG, 1);
}

NOINLINE void leak_mremap_shrink(char *p, size_t old_pages, size_t new_pages)
{
    void *q = mremap(p, old_pages * PG, new_pages * PG, 0);
    if (q != p)
        fail("shrinking mremap returned %p", q);
    keep(q);
    TRUTH_MMAP(new_pages * PG, 1);
}

NOINLINE char *leak_mremap_fail_src(size_t pages)
{
    char *p = mmap(NULL, pages * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(pages * PG, 1);
    return p;
}

NOINLINE void noleak_mremap_fail(char *p, size_t pages)
{
    void *q = mremap(p, pages * PG, opaque_size((size_t)1 << 46), 0);
    if (q != MAP_FAILED)
        fail("mremap to 64 TiB in place succeeded");
}

NOINLINE char *noleak_blocker(char *at)
{
    char *q = mmap(at, PG, ANON_PROT, ANON_FLAGS | MAP_FIXED_NOREPLACE, -1, 0);
    if (q == MAP_FAILED && errno != EEXIST)
        fail("blocker mmap failed: %s", strerror(errno));
    return q;
}

NOINLINE void noleak_mremap_then_unmap(void)
{
    char *p = mmap(NULL, 2 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    void *q = mremap(p, 2 * PG, 64 * PG, MREMAP_MAYMOVE);
    if (q == MAP_FAILED)
        fail("mremap failed");
    escape(q);
    unmap(q, 64 * PG);
}

NOINLINE void mode_mremap(void)
{
    /* 8 pages reserved, the upper 6 unmapped again: the hole lets the
       2-page region grow back to 8 pages in place */
    char *p = noleak_mremap_src(8);
    unmap(p + 2 * PG, 6 * PG);
    leak_mremap_inplace(p, 2, 8);
    expect_pages("mremap_inplace", p, "MMMMMMMM");

    p = noleak_mremap_src(2);
    char *blk = noleak_blocker(p + 2 * PG);
    leak_mremap_move(p, 2, 6);
    if (blk != MAP_FAILED)
        unmap(blk, PG);

    p = noleak_mremap_src(8);
    leak_mremap_shrink(p, 8, 3);
    expect_pages("mremap_shrink", p, "MMM.....");

    p = leak_mremap_fail_src(2);
    noleak_mremap_fail(p, 2);
    expect_pages("mremap_fail", p, "MM");

    noleak_mremap_then_unmap();
}

/* ---------------------------------------------------------------- fixed */

NOINLINE char *leak_mmap_fixed_base(void)
{
    char *p = mmap(NULL, 4 * PG, ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(4 * PG, 1);
    return p;
}

/* MAP_FIXED over the upper 2 pages of the base region */
NOINLINE void leak_mmap_fixed_over(char *at)
{
    void *q = mmap(at, 2 * PG, ANON_PROT, ANON_FLAGS | MAP_FIXED, -1, 0);
    if (q != at)
        fail("MAP_FIXED mmap returned %p", q);
    keep(q);
    TRUTH_MMAP(2 * PG, 1);
    truth("mmap", "leak_mmap_fixed_base", -(long long)(2 * PG), 0);
}

NOINLINE void mode_fixed(void)
{
    char *p = leak_mmap_fixed_base();
    leak_mmap_fixed_over(p + 2 * PG);
    expect_pages("fixed", p, "MMMM");
}

int main(int argc, char **argv)
{
    PG = page_size();
    const char *mode = argc > 1 ? argv[1] : "basic";
    if (strcmp(mode, "basic") == 0)
        mode_basic();
    else if (strcmp(mode, "partial") == 0)
        mode_partial();
    else if (strcmp(mode, "mremap") == 0)
        mode_mremap();
    else if (strcmp(mode, "fixed") == 0)
        mode_fixed();
    else
        fail("unknown mode %s", mode);
    truth_dump();
    return 0;
}
