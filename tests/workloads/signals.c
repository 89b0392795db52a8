/*
 * signals: under `report -- CMD` every signal the command takes passes
 * through a ptrace stop, and memtrace must deliver each one: 2,000 SIGUSR1
 * raised (each counted by its handler), 200 SIGUSR2 from a child process
 * (each waited for and acknowledged), then a leak after them.
 */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

static volatile sig_atomic_t usr1, usr2;

static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}

static void on_usr2(int sig)
{
    (void)sig;
    usr2++;
}

NOINLINE void leak_after_signals(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    for (int i = 0; i < 2000; i++)
        raise(SIGUSR1);
    if (usr1 != 2000)
        fail("%d of 2000 SIGUSR1 handled", (int)usr1);

    /* From another process: each kill is one signal, acknowledged. */
    int ack[2];
    if (pipe(ack) != 0)
        fail("pipe: %s", strerror(errno));
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, &old);
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0)
        fail("fork: %s", strerror(errno));
    if (child == 0) {
        char c;
        for (int i = 0; i < 200; i++) {
            kill(parent, SIGUSR2);
            if (read(ack[0], &c, 1) != 1)
                _exit(1);
        }
        _exit(0);
    }
    for (int i = 0; i < 200; i++) {
        /* Wait for exactly one SIGUSR2, run its handler, acknowledge. */
        sigsuspend(&old);
        if (write(ack[1], "k", 1) != 1)
            fail("write: %s", strerror(errno));
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("signalling child failed (status %#x)", status);
    if (usr2 != 200)
        fail("%d of 200 SIGUSR2 handled", (int)usr2);
    leak_after_signals(321);
    truth_dump();
    return 0;
}
