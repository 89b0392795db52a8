/*
 * Allocations made inside the C library on the program's behalf: glibc has
 * no frame pointers, so only its unwind tables lead from these back to the
 * program's function (strdup, strndup: one level; asprintf → vasprintf,
 * realpath → strdup: two; a stream's buffer: six or more, two of them
 * calls through the stream's table of functions).
 */
#include "common.h"

#include <sys/stat.h>

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

/* The FILE (glibc's own size) of a stream left open. */
NOINLINE FILE *open_stream(const char *path, const char *mode)
{
    FILE *f = fopen(path, mode);
    if (!f)
        fail("fopen %s", path);
    return f;
}

/* glibc's buffer for a stream: BUFSIZ, or st_blksize when smaller. */
static long long stream_buffer_size(FILE *f)
{
    struct stat st;
    if (fstat(fileno(f), &st) != 0)
        fail("fstat");
    return st.st_blksize > 0 && st.st_blksize < BUFSIZ ? st.st_blksize : BUFSIZ;
}

/* The first write allocates the stream's buffer: fprintf → vfprintf →
 * (the stream's xsputn) → overflow → doallocbuf → (the stream's
 * doallocate) → malloc. */
NOINLINE void leak_stream_written(FILE *f)
{
    fprintf(f, "%d\n", 12345);
    TRUTH_HEAP(stream_buffer_size(f), 1);
}

/* The first read: fgets → getline → uflow → (the stream's underflow) →
 * doallocbuf → (the stream's doallocate) → malloc. */
NOINLINE void leak_stream_read(FILE *f)
{
    char line[16];
    if (!fgets(line, sizeof line, f))
        fail("fgets");
    TRUTH_HEAP(stream_buffer_size(f), 1);
}

int main(void)
{
    leak_strdup();
    leak_strndup();
    leak_asprintf();
    leak_realpath();
    /* Left open: exit flushes them and keeps their buffers. */
    leak_stream_written(open_stream("/dev/null", "w"));
    leak_stream_read(open_stream("/dev/zero", "r"));
    truth_dump();
    return 0;
}
