/*
 * mixed CYCLES SIZE: a string-keyed chained hash table that grows to SIZE
 * entries and shrinks back to empty, CYCLES times. Keys are formatted
 * strings (malloc), nodes come from malloc, values grow by realloc, the
 * bucket array is calloc'ed on every resize, and a scratch string is built
 * by realloc and dropped per lookup. Every allocator call is counted.
 */
#include "bench.h"

#include <string.h>

static uint64_t calls;

static void *xmalloc(size_t n) {
    calls++;
    void *p = malloc(n);
    if (!p) abort();
    sink(p);
    return p;
}
static void *xcalloc(size_t k, size_t n) {
    calls++;
    void *p = calloc(k, n);
    if (!p) abort();
    sink(p);
    return p;
}
static void *xrealloc(void *old, size_t n) {
    calls++;
    void *p = realloc(old, n);
    if (!p) abort();
    sink(p);
    return p;
}
static void xfree(void *p) {
    calls++;
    free(p);
}

struct node {
    struct node *next;
    uint64_t hash;
    char *key;
    char *val;
    size_t vlen;
};

struct table {
    struct node **buckets;
    size_t nb, n;
};

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

static void resize(struct table *t, size_t nb) {
    struct node **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < t->nb; i++) {
        struct node *e = t->buckets[i];
        while (e) {
            struct node *next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    if (t->buckets) xfree(t->buckets);
    t->buckets = b;
    t->nb = nb;
}

static char *make_key(uint64_t k) {
    char buf[64];
    int len = snprintf(buf, sizeof buf, "key-%llu-%llx", (unsigned long long)k,
                       (unsigned long long)(k * 2654435761u));
    char *s = xmalloc((size_t)len + 1);
    memcpy(s, buf, (size_t)len + 1);
    return s;
}

static void insert(struct table *t, uint64_t k) {
    if (t->n + 1 > t->nb) resize(t, t->nb ? t->nb * 2 : 16);
    struct node *e = xmalloc(sizeof *e);
    e->key = make_key(k);
    e->hash = hash_str(e->key);
    /* The value grows in one to four realloc steps. */
    e->val = NULL;
    e->vlen = 0;
    int steps = 1 + (int)(next_rand() % 4);
    for (int j = 0; j < steps; j++) {
        size_t len = 16 + (next_rand() % 48);
        e->val = xrealloc(e->val, e->vlen + len);
        memset(e->val + e->vlen, 'a' + j, len);
        e->vlen += len;
    }
    size_t b = e->hash & (t->nb - 1);
    e->next = t->buckets[b];
    t->buckets[b] = e;
    t->n++;
}

static int erase(struct table *t, uint64_t k) {
    char *key = make_key(k); /* the lookup key is a temporary string */
    uint64_t h = hash_str(key);
    struct node **pp = &t->buckets[h & (t->nb - 1)];
    int found = 0;
    while (*pp) {
        struct node *e = *pp;
        if (e->hash == h && strcmp(e->key, key) == 0) {
            *pp = e->next;
            xfree(e->key);
            xfree(e->val);
            xfree(e);
            t->n--;
            found = 1;
            break;
        }
        pp = &e->next;
    }
    xfree(key);
    if (t->nb > 16 && t->n < t->nb / 4) resize(t, t->nb / 2);
    return found;
}

/* A scratch string built piecewise by realloc, then dropped. */
static void scratch(uint64_t k) {
    char *s = NULL;
    size_t len = 0;
    for (int j = 0; j < 3; j++) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%llu/", (unsigned long long)(k + (uint64_t)j));
        s = xrealloc(s, len + (size_t)n + 1);
        memcpy(s + len, buf, (size_t)n + 1);
        len += (size_t)n;
    }
    xfree(s);
}

int main(int argc, char **argv) {
    long cycles = arg_long(argc, argv, 1, 8);
    long size = arg_long(argc, argv, 2, 50000);
    struct table t = {0};
    gate();
    uint64_t t0 = now_ns();
    for (long c = 0; c < cycles; c++) {
        uint64_t base = (uint64_t)c * (uint64_t)size;
        for (long i = 0; i < size; i++) {
            insert(&t, base + (uint64_t)i);
            if ((i & 7) == 0) scratch(base + (uint64_t)i);
        }
        /* Shrink in a scrambled order (odd stride through the keys). */
        for (long i = 0; i < size; i++) {
            uint64_t k = base + (uint64_t)((i * 7919) % size);
            if (!erase(&t, k)) {
                fprintf(stderr, "workload premise failed: key %llu missing\n",
                        (unsigned long long)k);
                return 3;
            }
        }
    }
    uint64_t t1 = now_ns();
    if (t.n != 0) {
        fprintf(stderr, "workload premise failed: %zu entries left\n", t.n);
        return 3;
    }
    xfree(t.buckets);
    report(t1 - t0, calls);
    return 0;
}
