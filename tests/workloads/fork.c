/*
 * fork: the parent leaks before and after fork; the child leaks (heap and
 * mmap), churns, frees its copy of the parent's pre-fork block, and exits.
 * Only the parent (the traced CMD) counts: the child's allocations must not
 * appear, and the child's free of the inherited block must not un-count the
 * parent's block.
 */
#include "common.h"
#include <sys/wait.h>

NOINLINE void *leak_before_fork(size_t n)
{
    void *p = malloc(n);
    keep(p);
    TRUTH_HEAP(n, 1);
    return p;
}

NOINLINE void noleak_in_child(int times, size_t n)
{
    for (int i = 0; i < times; i++)
        keep(malloc(n));
}

NOINLINE void noleak_child_mmap(void)
{
    void *p = mmap(NULL, 2 * page_size(), ANON_PROT, ANON_FLAGS, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap failed");
    keep(p);
}

NOINLINE void noleak_child_churn(int times)
{
    for (int i = 0; i < times; i++) {
        void *p = malloc(64);
        escape(p);
        free(p);
    }
}

NOINLINE void noleak_child_frees_parent_block(void *p)
{
    free(p);
}

NOINLINE void leak_after_fork(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

int main(void)
{
    void *inherited = leak_before_fork(3333);
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        noleak_in_child(2, 12345);
        noleak_child_mmap();
        noleak_child_churn(1000);
        noleak_child_frees_parent_block(inherited);
        _exit(0);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        fail("waitpid: %s", strerror(errno));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("child failed (status %#x)", status);
    /* likely reuses the child's addresses, in this address space */
    leak_after_fork(4444);
    truth_dump();
    return 0;
}
