/*
 * fork_tree: the command leaks, then makes a tree of processes, each
 * leaking a known amount, and waits for them all:
 *   - child A (fork) frees its copy of a block the command still holds,
 *     leaks 2 x 3000 bytes, and forks grandchild G, which leaks 777 bytes;
 *   - child B (posix_spawn, a vfork: this program again with "spawned")
 *     leaks 555 bytes.
 * With `report --children` each process's report holds exactly its own
 * leaks; the command's holds only its own either way. Children's leak
 * sites are named noleak_kid_* (the command must not hold them; its ground
 * truth is its own), and the children leave with _exit, so only the command
 * writes the truth file.
 */
#include "common.h"
#include <spawn.h>
#include <sys/wait.h>

extern char **environ;

NOINLINE void leak_in_command(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

NOINLINE void *leak_inherited(size_t n)
{
    void *p = malloc(n);
    keep(p);
    TRUTH_HEAP(n, 1);
    return p;
}

NOINLINE void noleak_kid_frees_inherited(void *p)
{
    free(p);
}

NOINLINE void noleak_kid_forked(size_t n)
{
    keep(malloc(n));
}

NOINLINE void noleak_kid_grandchild(size_t n)
{
    keep(malloc(n));
}

NOINLINE void noleak_kid_spawned(size_t n)
{
    keep(malloc(n));
}

NOINLINE void leak_after_children(size_t n)
{
    keep(malloc(n));
    TRUTH_HEAP(n, 1);
}

static void wait_ok(pid_t pid, const char *what)
{
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        fail("waitpid %s: %s", what, strerror(errno));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("%s failed (status %#x)", what, status);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "spawned") == 0) {
        noleak_kid_spawned(555);
        _exit(0);
    }
    leak_in_command(1111);
    void *inherited = leak_inherited(4096);

    pid_t a = fork();
    if (a < 0)
        fail("fork: %s", strerror(errno));
    if (a == 0) {
        noleak_kid_frees_inherited(inherited);
        noleak_kid_forked(3000);
        noleak_kid_forked(3000);
        pid_t g = fork();
        if (g < 0)
            fail("fork: %s", strerror(errno));
        if (g == 0) {
            noleak_kid_grandchild(777);
            _exit(0);
        }
        wait_ok(g, "grandchild");
        _exit(0);
    }
    wait_ok(a, "child A");

    pid_t b;
    char *args[] = {argv[0], "spawned", NULL};
    int e = posix_spawn(&b, argv[0], NULL, NULL, args, environ);
    if (e != 0)
        fail("posix_spawn: %s", strerror(e));
    wait_ok(b, "child B");

    leak_after_children(4444);
    truth_dump();
    return 0;
}
