/*
 * exec: leaks (heap and mmap), then replaces itself with another image.
 *
 *   exec_leaker TARGET [ARGS...]                exec from the main thread
 *   exec_leaker --from-thread TARGET [ARGS...]  exec from a second thread
 *                                               (the kernel kills the old
 *                                               leader; the pid survives)
 *
 * Nothing leaked before the exec may be charged to the new image: the
 * report describes the final image only (its exe, comm and leaks).
 */
#include "common.h"

NOINLINE void noleak_before_exec(size_t n)
{
    keep(malloc(n));
}

NOINLINE void noleak_before_exec_many(int times, size_t n)
{
    for (int i = 0; i < times; i++)
        keep(malloc(n));
}

NOINLINE void noleak_before_exec_mmap(size_t pages)
{
    void *p = mmap(NULL, pages * page_size(), ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
}

static char **target_argv;

static void do_exec(void)
{
    execv(target_argv[0], target_argv);
    fail("execv %s: %s", target_argv[0], strerror(errno));
}

static void *exec_thread(void *arg)
{
    (void)arg;
    do_exec();
    return NULL;
}

int main(int argc, char **argv)
{
    int from_thread = 0;
    int i = 1;
    if (i < argc && strcmp(argv[i], "--from-thread") == 0) {
        from_thread = 1;
        i++;
    }
    if (i >= argc)
        fail("usage: exec_leaker [--from-thread] TARGET [ARGS...]");
    target_argv = &argv[i];

    noleak_before_exec(5555);
    noleak_before_exec_many(100, 64);
    noleak_before_exec_mmap(3);

    if (from_thread) {
        pthread_t t;
        if (pthread_create(&t, NULL, exec_thread, NULL) != 0)
            fail("pthread_create");
        pthread_join(t, NULL);
        fail("exec thread returned");
    }
    do_exec();
    return 1;
}
