/* Prints the cost of one malloc+free pair (ns), one line per chunk of
 * pairs, until its stdin closes: a speedometer for "are probes still
 * planted in this process?". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void *volatile sink;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void)
{
    const int chunk = 100000;
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        long long t0 = now_ns();
        for (int i = 0; i < chunk; i++) {
            sink = malloc(64);
            free(sink);
        }
        printf("%lld\n", (now_ns() - t0) / chunk);
        char c;
        if (read(0, &c, 1) == 0)
            return 0; /* stdin closed: done */
    }
}
