/*
 * Leaks and exits within a few milliseconds.
 *
 *   quick          returns from main (exit handlers run)
 *   quick _exit    leaves with _exit(0) right after the leaks
 */
#include "common.h"

NOINLINE void leak_quick(int times, size_t n)
{
    for (int i = 0; i < times; i++)
        keep(malloc(n));
    TRUTH_HEAP((size_t)times * n, times);
}

int main(int argc, char **argv)
{
    leak_quick(3, 1111);
    truth_dump();
    if (argc > 1 && strcmp(argv[1], "_exit") == 0)
        _exit(0);
    return 0;
}
