/*
 * Shared helpers of the memtrace test workloads.
 *
 * Conventions (the Rust harness in tests/src relies on them):
 *
 *  - Every allocation site is its own non-static NOINLINE function with a
 *    unique name, so the first frame of a memtrace stack (the function that
 *    called the allocator) identifies it:
 *      leak_*    still holds memory at exit: must be reported, exactly;
 *      noleak_*  allocates but frees (or must not be counted for another
 *                reason: before exec, in a forked child, file mapping,
 *                failed call, ...): must never be frames[0] of a reported
 *                stack.
 *  - Every leak_* function records what it leaves behind with TRUTH_*();
 *    when the environment variable MEMTRACE_TEST_TRUTH names a file, the
 *    workload writes the accumulated ground truth there just before it
 *    exits, one line per (kind, function): "heap leak_malloc 100 1".
 *    Writing it uses open/snprintf/write only: no allocation.
 *  - A workload that finds one of its premises false (an allocation that
 *    should succeed returned NULL, a realloc that should fail succeeded,
 *    ...) prints "workload premise failed: ..." on stderr and exits 3.
 *  - With MEMTRACE_TEST_VALGRIND set, the few things valgrind cannot run
 *    are skipped (see under_valgrind()).
 *  - On success a workload prints nothing (except sync lines of the
 *    --pid workload) and exits 0.
 *
 * Compiled with -O1 -g -fno-omit-frame-pointer -fno-inline
 * -fno-optimize-sibling-calls -pthread. NOINLINE adds noipa (no inlining, no
 * cloning such as leak_x.constprop.0, no IPA knowledge of the callee), and
 * every allocated pointer goes through keep()/escape(), opaque functions that
 * store it in a volatile global, so the compiler cannot elide an allocation.
 */
#ifndef MEMTRACE_WORKLOAD_COMMON_H
#define MEMTRACE_WORKLOAD_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__clang__)
#define NOINLINE __attribute__((noinline, used))
#else
#define NOINLINE __attribute__((noinline, noclone, noipa, used))
#endif

#ifdef __cplusplus
#define WL_EXTERN_C extern "C"
#else
#define WL_EXTERN_C
#endif

/* A size the compiler cannot reason about, guaranteed to make malloc fail. */
#define HUGE_FAIL_SIZE (SIZE_MAX / 2)

__attribute__((noreturn, format(printf, 1, 2))) static void
fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n = snprintf(buf, sizeof buf, "workload premise failed: ");
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write(2, buf, (size_t)n) < 0) {
        /* nothing left to do */
    }
    _exit(3);
}

/* ---- opaque sinks ---------------------------------------------------- */

#define WL_KEEP_MAX 8192
void *volatile wl_kept[WL_KEEP_MAX];
volatile unsigned wl_nkept;
void *volatile wl_escaped;
volatile size_t wl_size_box;
void *volatile wl_ptr_box;

/* Keep a leaked pointer reachable; fails if the allocation failed. */
WL_EXTERN_C NOINLINE void keep(void *p)
{
    if (p == NULL)
        fail("an allocation that must succeed returned NULL");
    unsigned i = __atomic_fetch_add(&wl_nkept, 1, __ATOMIC_RELAXED);
    wl_kept[i % WL_KEEP_MAX] = p;
}

/* Make a pointer escape before it is freed (no malloc/free pair elision). */
WL_EXTERN_C NOINLINE void escape(void *p)
{
    wl_escaped = p;
}

/* An opaque size / pointer value. */
WL_EXTERN_C NOINLINE size_t opaque_size(size_t n)
{
    wl_size_box = n;
    return wl_size_box;
}

WL_EXTERN_C NOINLINE void *opaque_ptr(void *p)
{
    wl_ptr_box = p;
    return wl_ptr_box;
}

__attribute__((unused)) static size_t page_size(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

/* True when the harness runs the workload under valgrind (the native
   cross-check of the heap ground truth): parts valgrind cannot run (pvalloc,
   a throwing operator new, glibc chunk-header premises) are skipped, and
   the ground truth written reflects what actually ran. */
__attribute__((unused)) static int under_valgrind(void)
{
    const char *v = getenv("MEMTRACE_TEST_VALGRIND");
    return v != NULL && *v != 0;
}

/* mmap of `len` bytes of anonymous private read/write memory (the caller's
   frame is the allocation site only when called directly; workloads call
   mmap() themselves in their own functions). */
#define ANON_PROT (PROT_READ | PROT_WRITE)
#define ANON_FLAGS (MAP_PRIVATE | MAP_ANONYMOUS)

/* ---- ground truth ---------------------------------------------------- */

struct wl_truth {
    const char *kind;
    const char *fn;
    long long bytes;
    long long count;
};

#define WL_TRUTH_MAX 128
static struct wl_truth wl_truth_tab[WL_TRUTH_MAX];
static int wl_truth_n;
static pthread_mutex_t wl_truth_lock = PTHREAD_MUTEX_INITIALIZER;

/* Add (bytes, count) still outstanding at exit to (kind, fn). */
__attribute__((unused)) static void truth(const char *kind, const char *fn, long long bytes, long long count)
{
    pthread_mutex_lock(&wl_truth_lock);
    int i;
    for (i = 0; i < wl_truth_n; i++)
        if (strcmp(wl_truth_tab[i].kind, kind) == 0 && strcmp(wl_truth_tab[i].fn, fn) == 0)
            break;
    if (i == wl_truth_n) {
        if (wl_truth_n == WL_TRUTH_MAX)
            fail("truth table full");
        wl_truth_tab[i].kind = kind;
        wl_truth_tab[i].fn = fn;
        wl_truth_n++;
    }
    wl_truth_tab[i].bytes += bytes;
    wl_truth_tab[i].count += count;
    pthread_mutex_unlock(&wl_truth_lock);
}

#define TRUTH_HEAP(bytes, count) truth("heap", __func__, (long long)(bytes), (long long)(count))
#define TRUTH_MMAP(bytes, count) truth("mmap", __func__, (long long)(bytes), (long long)(count))

/* Write the ground truth to $MEMTRACE_TEST_TRUTH (if set). No allocation. */
__attribute__((unused)) static void truth_dump(void)
{
    const char *path = getenv("MEMTRACE_TEST_TRUTH");
    if (path == NULL || *path == 0)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        fail("cannot create %s: %s", path, strerror(errno));
    pthread_mutex_lock(&wl_truth_lock);
    for (int i = 0; i < wl_truth_n; i++) {
        const struct wl_truth *t = &wl_truth_tab[i];
        if (t->bytes == 0 && t->count == 0)
            continue;
        char line[256];
        int n = snprintf(line, sizeof line, "%s %s %lld %lld\n", t->kind, t->fn, t->bytes, t->count);
        if (write(fd, line, (size_t)n) != n)
            fail("short write to %s", path);
    }
    pthread_mutex_unlock(&wl_truth_lock);
    close(fd);
}

#endif
