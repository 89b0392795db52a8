/*
 * Threads.
 *
 *   threads join         four threads start together (barrier), each leaks
 *                        from its own function while churning malloc/free;
 *                        blocks allocated in one thread are freed by main;
 *                        all are joined.
 *   threads leader-exit  the main thread leaks, then pthread_exit()s while a
 *                        worker lives on; the worker waits until the leader
 *                        is a zombie, leaks, and ends the process with
 *                        exit(0). The process ends at that exit, not at the
 *                        leader's: the worker's leak must be reported.
 */
#include "common.h"

#define CHURN 20000

static pthread_barrier_t start_line;

NOINLINE void noleak_thread_churn(int n)
{
    for (int i = 0; i < n; i++) {
        void *p = malloc(16 + (size_t)(i * 37) % 2048);
        escape(p);
        free(p);
    }
}

NOINLINE void leak_thread_a(int n, size_t sz)
{
    for (int i = 0; i < n; i++)
        keep(malloc(sz));
    TRUTH_HEAP((size_t)n * sz, n);
}

NOINLINE void leak_thread_b(int n, size_t sz)
{
    for (int i = 0; i < n; i++)
        keep(malloc(sz));
    TRUTH_HEAP((size_t)n * sz, n);
}

NOINLINE void leak_thread_c(int n, size_t sz)
{
    for (int i = 0; i < n; i++)
        keep(calloc(1, sz));
    TRUTH_HEAP((size_t)n * sz, n);
}

NOINLINE void leak_thread_d(int n, size_t sz)
{
    for (int i = 0; i < n; i++)
        keep(malloc(sz));
    TRUTH_HEAP((size_t)n * sz, n);
}

#define CROSS 10
static void *cross[CROSS];

/* allocated in worker a, freed by main after the join */
NOINLINE void noleak_cross_thread_alloc(void)
{
    for (int i = 0; i < CROSS; i++) {
        cross[i] = malloc(4000);
        keep(cross[i]);
    }
}

NOINLINE void leak_main_thread(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

/* Each worker interleaves its leaks with churn. */
NOINLINE void *worker_a(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&start_line);
    for (int r = 0; r < 10; r++) {
        noleak_thread_churn(CHURN / 10);
        leak_thread_a(10, 100);
    }
    noleak_cross_thread_alloc();
    return NULL;
}

NOINLINE void *worker_b(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&start_line);
    for (int r = 0; r < 10; r++) {
        leak_thread_b(10, 200);
        noleak_thread_churn(CHURN / 10);
    }
    return NULL;
}

NOINLINE void *worker_c(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&start_line);
    for (int r = 0; r < 10; r++) {
        noleak_thread_churn(CHURN / 10);
        leak_thread_c(5, 300);
    }
    return NULL;
}

NOINLINE void *worker_d(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&start_line);
    for (int r = 0; r < 5; r++) {
        leak_thread_d(5, 4096);
        noleak_thread_churn(CHURN / 5);
    }
    return NULL;
}

NOINLINE void mode_join(void)
{
    void *(*fns[4])(void *) = {worker_a, worker_b, worker_c, worker_d};
    pthread_t t[4];
    if (pthread_barrier_init(&start_line, NULL, 5) != 0)
        fail("pthread_barrier_init");
    for (int i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, fns[i], NULL) != 0)
            fail("pthread_create");
    pthread_barrier_wait(&start_line);
    leak_main_thread(50);
    noleak_thread_churn(CHURN);
    for (int i = 0; i < 4; i++)
        if (pthread_join(t[i], NULL) != 0)
            fail("pthread_join");
    for (int i = 0; i < CROSS; i++)
        free(cross[i]);
    truth_dump();
}

/* ---------------------------------------------------------- leader-exit */

static pid_t leader;

/* 'Z' once the (exited) leader thread is a zombie; no allocation. */
static char leader_state(void)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)leader);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 'Z'; /* gone entirely */
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 'Z';
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' ? rp[2] : '?';
}

NOINLINE void leak_leader_before_exit(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_after_leader_exit(int n, size_t sz)
{
    for (int i = 0; i < n; i++)
        keep(malloc(sz));
    TRUTH_HEAP((size_t)n * sz, n);
}

NOINLINE void *worker_outliving_leader(void *arg)
{
    (void)arg;
    /* wait for the leader to be a zombie: a condition, not a delay */
    for (unsigned long spins = 0; leader_state() != 'Z'; spins++) {
        if (spins > 50u * 1000 * 1000)
            fail("the leader thread never exited");
        sched_yield();
    }
    leak_after_leader_exit(3, 999);
    truth_dump();
    exit(0);
}

NOINLINE void mode_leader_exit(void)
{
    leader = getpid();
    leak_leader_before_exit(77);
    pthread_t t;
    if (pthread_create(&t, NULL, worker_outliving_leader, NULL) != 0)
        fail("pthread_create");
    pthread_exit(NULL);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "join";
    if (strcmp(mode, "join") == 0)
        mode_join();
    else if (strcmp(mode, "leader-exit") == 0)
        mode_leader_exit();
    else
        fail("unknown mode %s", mode);
    return 0;
}
