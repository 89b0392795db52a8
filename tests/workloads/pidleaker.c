/*
 * A long-running leaker for `memtrace report --pid`.
 *
 * Protocol (stdin/stdout pipes, no sleeps):
 *   1. allocates some blocks before anything can attach (never reported:
 *      memtrace only sees what happens after it attached), then writes
 *      "ready\n" to stdout;
 *   2. reads one command byte at a time from stdin:
 *        'l'  perform the leaks below, then write "done\n";
 *        'q'  (or EOF) write the ground truth and exit 0.
 *
 * Leaks of one 'l':
 *   leak_pid_heap               10 x 1000 bytes
 *   leak_pid_mmap               3 pages, anonymous mmap
 *   leak_pid_realloc_untracked  realloc of a pre-attach block to 3000 bytes
 *                               (the realloc site owns the resized block)
 *   noleak_pid_free_untracked   frees a pre-attach block (an untracked free)
 *   noleak_pid_churn            1000 malloc/free pairs
 *
 *   pidleaker busy   additionally runs a thread that churns malloc/free
 *                    (batches of 20 pairs, 1 ms apart: a steady load, not a
 *                    synchronisation) from before "ready" until 'q'.
 */
#include "common.h"

static void *pre_blocks[4];
static void *pre_realloc;
static void *pre_free;

NOINLINE void noleak_pid_before_attach(void)
{
    for (int i = 0; i < 4; i++) {
        pre_blocks[i] = malloc(5000);
        keep(pre_blocks[i]);
    }
    pre_realloc = malloc(100);
    keep(pre_realloc);
    pre_free = malloc(200);
    keep(pre_free);
}

NOINLINE void leak_pid_heap(int times, size_t n)
{
    for (int i = 0; i < times; i++)
        keep(malloc(n));
    TRUTH_HEAP((size_t)times * n, times);
}

NOINLINE void leak_pid_mmap(size_t pages)
{
    void *p = mmap(NULL, pages * page_size(), ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
    TRUTH_MMAP(pages * page_size(), 1);
}

NOINLINE void leak_pid_realloc_untracked(size_t n)
{
    pre_realloc = realloc(pre_realloc, n);
    keep(pre_realloc);
    TRUTH_HEAP(n, 1);
}

NOINLINE void noleak_pid_free_untracked(void)
{
    free(pre_free);
    pre_free = NULL;
}

NOINLINE void noleak_pid_churn(int times)
{
    for (int i = 0; i < times; i++) {
        void *p = malloc(32 + (size_t)i);
        escape(p);
        free(p);
    }
}

static volatile int stop_busy;

NOINLINE void *busy_churner(void *arg)
{
    (void)arg;
    while (!stop_busy) {
        noleak_pid_churn(20);
        usleep(1000);
    }
    return NULL;
}

static void say(const char *s)
{
    size_t n = strlen(s);
    if (write(1, s, n) != (ssize_t)n)
        fail("write to stdout failed");
}

int main(int argc, char **argv)
{
    int leaked = 0;
    int busy = argc > 1 && strcmp(argv[1], "busy") == 0;
    pthread_t busy_thread;
    noleak_pid_before_attach();
    if (busy && pthread_create(&busy_thread, NULL, busy_churner, NULL) != 0)
        fail("pthread_create");
    say("ready\n");
    for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("read stdin: %s", strerror(errno));
        if (n == 0 || c == 'q')
            break;
        if (c == 'l') {
            if (leaked++)
                fail("'l' sent twice");
            leak_pid_heap(10, 1000);
            leak_pid_mmap(3);
            leak_pid_realloc_untracked(3000);
            noleak_pid_free_untracked();
            noleak_pid_churn(1000);
            say("done\n");
        } else if (c != '\n') {
            fail("unknown command byte %d", c);
        }
    }
    if (busy) {
        stop_busy = 1;
        pthread_join(busy_thread, NULL);
    }
    truth_dump();
    return 0;
}
