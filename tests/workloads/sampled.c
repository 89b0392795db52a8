/* Ground truth for sampling (--sample-bytes): two leak sites large enough
 * that a 512 KiB sampling rate estimates them within a few percent, plus
 * churn (a million small pairs) and large blocks that are freed. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void *volatile sink;
static void *keep[300000];

__attribute__((noinline)) void *leak_small_blocks(void) { return malloc(4096); }
__attribute__((noinline)) void *leak_large_blocks(void) { return malloc(65536); }
__attribute__((noinline)) void *freed_large_blocks(void) { return malloc(262144); }
/* glibc serves these with mmap: only the heap block may be reported. */
__attribute__((noinline)) void *leak_huge_blocks(void) { return malloc(1 << 20); }
/* Called deeper than the (unsampled) malloc just before it. */
__attribute__((noinline)) void *leak_user_mmap(void)
{
    return mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

static void *idle(void *arg) { return arg; }

/* glibc maps the thread's stack (1 MiB and a guard page, MAP_STACK) from
 * deeper than the (unsampled) malloc just before it; joined, the stack stays
 * mapped in glibc's cache. */
__attribute__((noinline)) void start_thread(void)
{
    pthread_attr_t attr;
    pthread_t t;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    if (pthread_create(&t, &attr, idle, NULL) == 0)
        pthread_join(t, NULL);
    pthread_attr_destroy(&attr);
}

int main(void)
{
    int n = 0;
    for (int i = 0; i < 262144; i++) /* 1 GiB in 4 KiB blocks */
        keep[n++] = leak_small_blocks();
    for (int i = 0; i < 8192; i++) /* 512 MiB in 64 KiB blocks */
        keep[n++] = leak_large_blocks();
    for (int i = 0; i < 1000000; i++) {
        sink = malloc(64);
        free(sink);
    }
    for (int i = 0; i < 2048; i++) {
        sink = freed_large_blocks();
        free(sink);
    }
    for (int i = 0; i < 64; i++) /* 64 MiB, each block an mmap inside malloc */
        keep[n++] = leak_huge_blocks();
    for (int i = 0; i < 10; i++) {
        sink = malloc(64); /* unsampled (almost surely): its record stays */
        keep[n++] = leak_user_mmap();
    }
    sink = malloc(64); /* unsampled (almost surely): its record stays */
    start_thread();
    return keep[0] == NULL; /* keep `keep` alive */
}
