/*
 * Allocations made inside the C library on the program's behalf: glibc has
 * no frame pointers, so only its unwind tables lead from these back to the
 * program's function (strdup, strndup: one level; asprintf → vasprintf,
 * realpath → strdup: two).
 */
#include "common.h"

NOINLINE void leak_strdup(void)
{
    keep(strdup("0123456789abcdef0123456789")); /* 26 + 1 */
    TRUTH_HEAP(27, 1);
}

NOINLINE void leak_strndup(void)
{
    keep(strndup("abcdefghij", 4)); /* 4 + 1 */
    TRUTH_HEAP(5, 1);
}

NOINLINE void leak_asprintf(void)
{
    char *p = NULL;
    if (asprintf(&p, "%d:%s", 12345, "leak") == 10) /* 10 + 1 */
        keep(p);
    TRUTH_HEAP(11, 1);
}

NOINLINE void leak_realpath(void)
{
    keep(realpath("/", NULL)); /* "/" + 1 */
    TRUTH_HEAP(2, 1);
}

int main(void)
{
    leak_strdup();
    leak_strndup();
    leak_asprintf();
    leak_realpath();
    truth_dump();
    return 0;
}
