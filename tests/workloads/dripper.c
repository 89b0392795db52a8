/* Leaks 10,000 bytes every 10 ms until its stdin closes: a steady leaker
 * for the dashboard's end-to-end test. */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void *volatile keep[1 << 20];

__attribute__((noinline)) void drip(int i)
{
    keep[i & ((1 << 20) - 1)] = malloc(10000);
}

int main(void)
{
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (int i = 0;; i++) {
        drip(i);
        next.tv_nsec += 10 * 1000 * 1000;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        char c;
        if (read(0, &c, 1) == 0)
            return 0;
    }
}
