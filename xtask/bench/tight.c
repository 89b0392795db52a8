/*
 * tight PAIRS [THREADS]: each of THREADS threads (default 1) runs PAIRS
 * malloc(64)/free pairs back to back. calls = 2 * PAIRS * THREADS.
 */
#include "bench.h"

#include <pthread.h>

static long pairs;

static void *worker(void *arg) {
    (void)arg;
    for (long i = 0; i < pairs; i++) {
        void *p = malloc(64);
        sink(p);
        free(p);
    }
    return NULL;
}

int main(int argc, char **argv) {
    pairs = arg_long(argc, argv, 1, 2000000);
    long threads = arg_long(argc, argv, 2, 1);
    if (threads < 1 || threads > 64) {
        fprintf(stderr, "threads must be 1..64\n");
        return 2;
    }
    pthread_t tids[64];
    gate();
    uint64_t t0 = now_ns();
    if (threads == 1) {
        worker(NULL);
    } else {
        for (long t = 0; t < threads; t++)
            if (pthread_create(&tids[t], NULL, worker, NULL) != 0) {
                perror("pthread_create");
                return 1;
            }
        for (long t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    }
    uint64_t t1 = now_ns();
    report(t1 - t0, (uint64_t)(2 * pairs * threads));
    return 0;
}
