/*
 * fork_sampled: a parent and its forked child both free the same address.
 * The parent allocates a block, forks; the child frees its copy and exits;
 * the parent frees its own copy after the child is gone, then leaks one
 * block of 7,777 bytes, says "ready" on stdout and waits for stdin to close.
 * Traced system-wide with sampling, only the 7,777 bytes may remain
 * outstanding in the parent: its free of the shared address must still be
 * seen after the child freed the same address.
 */
#include "common.h"
#include <sys/wait.h>

NOINLINE void *shared_before_fork(size_t n)
{
    void *p = malloc(n);
    keep(p);
    return p;
}

NOINLINE void noleak_child_frees_copy(void *p)
{
    free(p);
}

NOINLINE void parent_frees_own_copy(void *p)
{
    free(p);
}

NOINLINE void leak_after_child(size_t n)
{
    keep(malloc(n));
}

int main(void)
{
    void *shared = shared_before_fork(opaque_size(5555));
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        noleak_child_frees_copy(shared);
        _exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("child did not exit cleanly");
    parent_frees_own_copy(shared);
    leak_after_child(opaque_size(7777));
    if (write(1, "ready\n", 6) != 6)
        fail("write ready");
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}
