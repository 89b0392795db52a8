/*
 * An allocator that arrives after start: the program leaks through glibc,
 * then dlopen()s mimalloc (as a plugin carrying its own allocator would)
 * and allocates through its API (mi_malloc/mi_free) via dlsym. That
 * allocator is a different function in a different file from the libc one
 * memtrace saw at start: its allocations are only seen if memtrace attaches
 * to the new object before the program calls it. (jemalloc and glibc's
 * static TLS do not mix: it cannot be dlopen()ed.)
 *
 *   dlopen_alloc [--wait] [LIBRARY [MALLOC FREE]]
 *       default: libmimalloc.so.2 mi_malloc mi_free
 *       --wait: print "ready" and wait for a line on stdin before dlopen,
 *               print "loaded" and wait for another before allocating
 *               through it (the --pid test's synchronisation)
 */
#include "common.h"
#include <dlfcn.h>

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);

NOINLINE void leak_before_dlopen(void)
{
    keep(malloc(opaque_size(1234)));
    TRUTH_HEAP(1234, 1);
}

NOINLINE void leak_dlopen_malloc(malloc_fn m, int times, size_t n)
{
    for (int i = 0; i < times; i++)
        keep(m(opaque_size(n)));
    TRUTH_HEAP((size_t)times * n, times);
}

NOINLINE void noleak_dlopen_churn(malloc_fn m, free_fn f)
{
    for (int i = 0; i < 100; i++) {
        void *p = m(opaque_size(64 + (size_t)i));
        escape(p);
        f(p);
    }
}

static void wait_line(const char *say)
{
    puts(say);
    fflush(stdout);
    int c;
    while ((c = getchar()) != EOF && c != '\n') {
    }
}

int main(int argc, char **argv)
{
    int wait = argc > 1 && strcmp(argv[1], "--wait") == 0;
    if (wait) {
        argv++;
        argc--;
    }
    const char *lib = argc > 1 ? argv[1] : "libmimalloc.so.2";
    const char *mname = argc > 3 ? argv[2] : "mi_malloc";
    const char *fname = argc > 3 ? argv[3] : "mi_free";
    leak_before_dlopen();
    if (wait)
        wait_line("ready");
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        fail("dlopen %s: %s", lib, dlerror());
    malloc_fn m = (malloc_fn)dlsym(h, mname);
    free_fn f = (free_fn)dlsym(h, fname);
    if (m == NULL || f == NULL)
        fail("%s has no %s/%s", lib, mname, fname);
    if (wait)
        wait_line("loaded");
    leak_dlopen_malloc(m, 5, 700);
    noleak_dlopen_churn(m, f);
    truth_dump();
    return 0;
}
