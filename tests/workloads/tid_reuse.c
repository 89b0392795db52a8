/*
 * tid_reuse: a thread that dies inside malloc, and a later process given
 * its thread id.
 *
 * `tid_reuse victim`: stderr must be a pipe nobody reads. A thread fills
 * it, then calls malloc_stats(), which blocks writing to it while holding
 * the main arena's lock; the main thread then calls malloc(4000) (above the
 * tcache sizes, so it takes that lock) and blocks inside it. The harness
 * sees the main thread waiting in futex and kills the process: its main
 * thread died inside malloc.
 *
 * `tid_reuse leaker`: started with the victim's pid (ns_last_pid), leaks two
 * blocks of 4,321 bytes from deep in its stack (below where the victim's
 * malloc was entered, the same layout with ASLR off), says "ready" and waits
 * for stdin to close. Every one of its calls must be traced.
 */
#include "common.h"
#include <fcntl.h>
#include <malloc.h>

static volatile pid_t stats_tid;

static void *stats(void *arg)
{
    (void)arg;
    int fl = fcntl(2, F_GETFL);
    if (fl < 0 || fcntl(2, F_SETFL, fl | O_NONBLOCK) < 0)
        fail("fcntl");
    static char buf[4096];
    while (write(2, buf, sizeof buf) > 0) {
    }
    while (write(2, buf, 1) > 0) {
    }
    if (fcntl(2, F_SETFL, fl) < 0)
        fail("fcntl");
    stats_tid = gettid();
    malloc_stats(); /* blocks in write(2) with the main arena locked */
    return NULL;
}

NOINLINE void victim_blocks_in_malloc(void)
{
    keep(malloc(opaque_size(4000)));
}

NOINLINE void *leak_deep(int n)
{
    if (n == 0) {
        void *p = malloc(opaque_size(4321));
        keep(p);
        return p;
    }
    void *r = leak_deep(n - 1);
    escape(r);
    return r;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "victim") == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, stats, NULL) != 0)
            fail("pthread_create");
        /* Wait, without allocating, until the thread is blocked in
           write(2) holding the lock: its /proc syscall file starts with 1
           (write). */
        while (stats_tid == 0)
            usleep(1000);
        char path[64], line[64];
        snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)stats_tid);
        for (;;) {
            int fd = open(path, O_RDONLY);
            if (fd < 0)
                fail("open %s", path);
            ssize_t n = read(fd, line, sizeof line - 1);
            close(fd);
            if (n > 1 && line[0] == '1' && line[1] == ' ')
                break;
            usleep(1000);
        }
        victim_blocks_in_malloc();
        fail("malloc returned while the arena was locked");
    }
    if (argc == 2 && strcmp(argv[1], "leaker") == 0) {
        leak_deep(16);
        leak_deep(16);
        if (write(1, "ready\n", 6) != 6)
            fail("write ready");
        char c;
        while (read(0, &c, 1) > 0) {
        }
        return 0;
    }
    fail("usage: tid_reuse victim|leaker");
}
