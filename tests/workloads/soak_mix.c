/*
 * soak_mix: the multi-process workload of the soak test (`cargo xtask soak`
 * and tests/tests/soak.rs; the checker is xtask/soak/engine.rs).
 *
 *   soak_mix parent DIR MAXSECS
 *
 * The parent (which never allocates) creates role symlinks to its own binary
 * in DIR, so each process's comm names its role, then keeps running:
 *
 *   - 3 long-lived leakers (comm soak-leak-20k, soak-leak-80k,
 *     soak-leak-200k) leaking fixed-size blocks at exactly 20000, 80000 and
 *     200000 bytes/s, and churning 2000 malloc/calloc/realloc/free
 *     operations per second each over 128 slots of 16..512 bytes;
 *   - short-lived children, 3 alive at a time, fork+exec'd continuously:
 *     each lives 0.1..2 s, churns 500 operations per second over 32 slots,
 *     and either leaks (comm soak-child-leak: 2..50 KB/s in 64..4096-byte
 *     blocks, and keeps its churn slots) or frees everything before exiting
 *     (comm soak-child-ok).
 *
 * Everything is paced by CLOCK_MONOTONIC absolute deadlines (10 ms ticks);
 * what is due (leaked blocks, churn operations) is computed from the time
 * elapsed since the process started, so a late tick catches up and the
 * leaked bytes at time t are exactly floor(rate * t / block) * block.
 *
 * Protocol with the checker:
 *   - SIGUSR1 to the parent freezes the workload: it stops spawning and
 *     forwards SIGUSR1 to every live child, which stops allocating, writes
 *     its ground truth and waits (holding its memory) to be killed; then the
 *     parent writes DIR/parent.truth ("live=SEQ:PID,..." and its counters).
 *   - SIGTERM to the parent kills the children (SIGTERM), reaps them, writes
 *     DIR/parent.final (CPU time of the whole workload) and exits.
 *   - Every worker writes DIR/t<SEQ>.truth (atomically, by rename) when it
 *     is frozen or just before it exits: one line of key=value pairs with
 *     its exact allocator counters as memtrace should count them (realloc
 *     counts one free and one allocation; sizes are the requested ones).
 *   - Watchdogs: every process dies after MAXSECS (alarm), the parent gets
 *     SIGTERM when the checker dies and the workers SIGKILL when the parent
 *     dies.
 *
 * Writing the ground truth uses open/snprintf/write/rename only: no
 * allocation. A failed premise prints "workload premise failed: ..." and
 * exits 3 (common.h).
 */
#include "common.h"

#include <limits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#define TICK_NS 10000000LL /* 10 ms */
#define NS 1000000000LL

#define LEAKERS 3
#define LEAKER_OPS 2000
#define LEAKER_SLOTS 128
#define CHILDREN_LIVE 3
#define CHILD_OPS 500
#define CHILD_SLOTS 32
#define SPAWN_GAP_NS 50000000LL /* at most one spawn per 50 ms */

static const struct {
    const char *comm;
    long long rate;  /* bytes per second */
    long long block; /* bytes per leaked block */
} leakers[LEAKERS] = {
    {"soak-leak-20k", 20000, 2000},
    {"soak-leak-80k", 80000, 8000},
    {"soak-leak-200k", 200000, 20000},
};
#define COMM_CHILD_LEAK "soak-child-leak"
#define COMM_CHILD_OK "soak-child-ok"

static volatile sig_atomic_t freeze_req;
static volatile sig_atomic_t term_req;

static void on_usr1(int sig)
{
    (void)sig;
    freeze_req = 1;
}

static void on_term(int sig)
{
    (void)sig;
    term_req = 1;
}

static void handle(int sig, void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a signal ends the sleep at once. */
    if (sigaction(sig, &sa, NULL) != 0)
        fail("sigaction: %s", strerror(errno));
}

static void block_signals(int how, sigset_t *old)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    sigaddset(&s, SIGTERM);
    if (sigprocmask(how, &s, old) != 0)
        fail("sigprocmask: %s", strerror(errno));
}

static long long now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * NS + ts.tv_nsec;
}

/* Sleep until an absolute CLOCK_MONOTONIC time (a signal cuts it short). */
static void sleep_until(long long deadline)
{
    struct timespec ts = {.tv_sec = deadline / NS, .tv_nsec = deadline % NS};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static long long parse_ll(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != 0 || v < 0)
        fail("bad %s: %s", what, s);
    return v;
}

/* Writes `line` to DIR/NAME atomically (temporary file, then rename). */
static void write_file(const char *dir, const char *name, const char *line, int n)
{
    char tmp[PATH_MAX], path[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        fail("cannot create %s: %s", tmp, strerror(errno));
    if (write(fd, line, (size_t)n) != n)
        fail("short write to %s", tmp);
    close(fd);
    if (rename(tmp, path) != 0)
        fail("cannot rename %s: %s", tmp, strerror(errno));
}

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

/* ---- worker: a leaker or a short-lived child ------------------------- */

/* What memtrace should count for this process. */
static struct {
    long long allocs, frees, out_allocs, out_bytes;
    long long reallocs, leaked_bytes, leaked_blocks, ops;
} counts;

static void *slot_p[LEAKER_SLOTS];
static size_t slot_n[LEAKER_SLOTS];

NOINLINE void *soak_alloc(size_t n, int zeroed)
{
    void *p = zeroed ? calloc(1, n) : malloc(n);
    if (p == NULL)
        fail("allocation of %zu bytes failed", n);
    *(volatile char *)p = 1;
    counts.allocs++;
    counts.out_allocs++;
    counts.out_bytes += (long long)n;
    return p;
}

NOINLINE void soak_free(void *p, size_t n)
{
    free(p);
    counts.frees++;
    counts.out_allocs--;
    counts.out_bytes -= (long long)n;
}

NOINLINE void *soak_realloc(void *p, size_t old_n, size_t n)
{
    void *q = realloc(p, n);
    if (q == NULL)
        fail("realloc to %zu bytes failed", n);
    *(volatile char *)q = 1;
    /* memtrace: a free of the old block and an allocation of the new. */
    counts.frees++;
    counts.allocs++;
    counts.reallocs++;
    counts.out_bytes += (long long)n - (long long)old_n;
    return q;
}

/* One churn operation on a random slot: fill it, or replace its block by
   free + malloc/calloc, or realloc it. */
NOINLINE void soak_churn(unsigned nslots)
{
    unsigned i = (unsigned)(rnd() % nslots);
    size_t n = 16 + (size_t)(rnd() % 497);
    unsigned kind = (unsigned)(rnd() % 8);
    if (slot_p[i] == NULL) {
        slot_p[i] = soak_alloc(n, kind == 0);
    } else if (kind == 1) {
        slot_p[i] = soak_realloc(slot_p[i], slot_n[i], n);
    } else {
        soak_free(slot_p[i], slot_n[i]);
        slot_p[i] = soak_alloc(n, kind == 0);
    }
    slot_n[i] = n;
    counts.ops++;
}

NOINLINE void leak_block(size_t n)
{
    keep(soak_alloc(n, 0));
    counts.leaked_bytes += (long long)n;
    counts.leaked_blocks++;
}

struct worker {
    const char *dir;
    const char *role;
    const char *comm;
    long long seq, rate, block, ops, slots, lifetime_ms, free_at_exit;
    long long start_boot_ns;
};

static void write_truth(const struct worker *w, const char *state)
{
    char name[64], line[1024];
    snprintf(name, sizeof name, "t%lld.truth", w->seq);
    int n = snprintf(line, sizeof line,
                     "seq=%lld pid=%d role=%s comm=%s state=%s allocs=%lld frees=%lld "
                     "out_allocs=%lld out_bytes=%lld reallocs=%lld leaked_bytes=%lld leaked_blocks=%lld "
                     "rate=%lld block=%lld ops=%lld start_boot_ns=%lld end_boot_ns=%lld\n",
                     w->seq, (int)getpid(), w->role, w->comm, state, counts.allocs, counts.frees,
                     counts.out_allocs, counts.out_bytes, counts.reallocs, counts.leaked_bytes,
                     counts.leaked_blocks,
                     w->rate, w->block, counts.ops, w->start_boot_ns, now_ns(CLOCK_BOOTTIME));
    write_file(w->dir, name, line, n);
}

static void worker_loop(struct worker *w)
{
    long long t0 = now_ns(CLOCK_MONOTONIC);
    w->start_boot_ns = now_ns(CLOCK_BOOTTIME);
    long long life_ns = w->lifetime_ms * 1000000LL;
    for (long long k = 1;; k++) {
        if (freeze_req) {
            write_truth(w, "frozen");
            for (;;)
                pause(); /* until SIGTERM/SIGKILL */
        }
        long long el = now_ns(CLOCK_MONOTONIC) - t0;
        if (life_ns > 0 && el >= life_ns)
            break;
        if (w->rate > 0) {
            /* el * rate fits: 2^63 ns * B/s is ~1.5e5 years at 1 MB/s. */
            long long due = (long long)((__int128)el * w->rate / ((__int128)w->block * NS));
            while (counts.leaked_blocks < due)
                leak_block((size_t)w->block);
        }
        long long due_ops = (long long)((__int128)el * w->ops / NS);
        while (counts.ops < due_ops)
            soak_churn((unsigned)w->slots);
        sleep_until(t0 + k * TICK_NS);
    }
    if (w->free_at_exit) {
        for (long long i = 0; i < w->slots; i++)
            if (slot_p[i] != NULL) {
                soak_free(slot_p[i], slot_n[i]);
                slot_p[i] = NULL;
            }
    }
    write_truth(w, "exited");
    _exit(0);
}

/* soak_mix worker DIR ROLE SEQ PPID MAXSECS RATE BLOCK OPS SLOTS LIFETIME_MS FREE_AT_EXIT */
static int worker_main(int argc, char **argv)
{
    if (argc != 13)
        fail("worker: expected 11 arguments, got %d", argc - 2);
    struct worker w = {
        .dir = argv[2],
        .role = argv[3],
        .seq = parse_ll(argv[4], "seq"),
        .rate = parse_ll(argv[7], "rate"),
        .block = parse_ll(argv[8], "block"),
        .ops = parse_ll(argv[9], "ops"),
        .slots = parse_ll(argv[10], "slots"),
        .lifetime_ms = parse_ll(argv[11], "lifetime"),
        .free_at_exit = parse_ll(argv[12], "free_at_exit"),
    };
    long long ppid = parse_ll(argv[5], "ppid");
    long long maxsecs = parse_ll(argv[6], "maxsecs");
    const char *slash = strrchr(argv[0], '/');
    w.comm = slash ? slash + 1 : argv[0];
    if (w.slots < 1 || w.slots > LEAKER_SLOTS || (w.rate > 0 && w.block < 1))
        fail("worker: bad slots/block");
    rng_state = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)w.seq * 0x100000001B3ULL);
    /* SIGUSR1 and SIGTERM arrive blocked (from the parent's fork). */
    handle(SIGUSR1, on_usr1);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        fail("prctl: %s", strerror(errno));
    if ((long long)getppid() != ppid)
        _exit(0); /* the parent is already gone */
    alarm((unsigned)maxsecs);
    block_signals(SIG_UNBLOCK, NULL);
    worker_loop(&w);
    return 0;
}

/* ---- parent ----------------------------------------------------------- */

#define MAX_PROCS 64

static struct {
    pid_t pid;
    long long seq;
    int leaker;
} procs[MAX_PROCS];
static int nprocs;

static struct {
    long long spawned, children_done, child_failures, leaker_deaths;
} pstat;

static char self_exe[PATH_MAX];

static void make_role_link(const char *dir, const char *comm)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, comm);
    unlink(path);
    if (symlink(self_exe, path) != 0)
        fail("symlink %s: %s", path, strerror(errno));
}

static void spawn(const char *dir, long long maxsecs, long long seq, const char *comm,
                  const char *role, long long rate, long long block, long long ops,
                  long long slots, long long lifetime_ms, long long free_at_exit)
{
    char path[PATH_MAX];
    char a[9][32];
    snprintf(path, sizeof path, "%s/%s", dir, comm);
    snprintf(a[0], sizeof a[0], "%lld", seq);
    snprintf(a[1], sizeof a[1], "%d", (int)getpid());
    snprintf(a[2], sizeof a[2], "%lld", maxsecs);
    snprintf(a[3], sizeof a[3], "%lld", rate);
    snprintf(a[4], sizeof a[4], "%lld", block);
    snprintf(a[5], sizeof a[5], "%lld", ops);
    snprintf(a[6], sizeof a[6], "%lld", slots);
    snprintf(a[7], sizeof a[7], "%lld", lifetime_ms);
    snprintf(a[8], sizeof a[8], "%lld", free_at_exit);
    char *argv[] = {path, "worker", (char *)dir, (char *)role, a[0], a[1], a[2], a[3],
                    a[4], a[5], a[6], a[7], a[8], NULL};
    if (nprocs == MAX_PROCS)
        fail("process table full");
    sigset_t old;
    block_signals(SIG_BLOCK, &old);
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Signals stay blocked across exec until the worker's handlers are
           in place. */
        execv(path, argv);
        _exit(127);
    }
    procs[nprocs].pid = pid;
    procs[nprocs].seq = seq;
    procs[nprocs].leaker = role[0] == 'l';
    nprocs++;
    pstat.spawned++;
    sigprocmask(SIG_SETMASK, &old, NULL);
}

/* Reap exited children; `counting`: judge how they ended. */
static void reap(int options, int counting)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, options)) > 0) {
        for (int i = 0; i < nprocs; i++) {
            if (procs[i].pid != pid)
                continue;
            if (counting) {
                if (procs[i].leaker)
                    pstat.leaker_deaths++;
                else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                    pstat.child_failures++;
            }
            if (!procs[i].leaker)
                pstat.children_done++;
            procs[i] = procs[--nprocs];
            break;
        }
    }
}

static int live_children(void)
{
    int n = 0;
    for (int i = 0; i < nprocs; i++)
        n += !procs[i].leaker;
    return n;
}

static void write_parent_file(const char *dir, const char *name, const char *extra)
{
    char line[4096];
    int n = snprintf(line, sizeof line,
                     "pid=%d spawned=%lld children_done=%lld child_failures=%lld "
                     "leaker_deaths=%lld %s\n",
                     (int)getpid(), pstat.spawned, pstat.children_done, pstat.child_failures,
                     pstat.leaker_deaths, extra);
    if (n >= (int)sizeof line)
        fail("parent line too long");
    write_file(dir, name, line, n);
}

static long long cpu_ms(int who)
{
    struct rusage ru;
    if (getrusage(who, &ru) != 0)
        return -1;
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000LL +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

static int parent_main(int argc, char **argv)
{
    if (argc != 4)
        fail("usage: soak_mix parent DIR MAXSECS");
    const char *dir = argv[2];
    long long maxsecs = parse_ll(argv[3], "maxsecs");
    handle(SIGUSR1, on_usr1);
    handle(SIGTERM, on_term);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0)
        fail("prctl: %s", strerror(errno));
    alarm((unsigned)maxsecs);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0)
        fail("readlink /proc/self/exe: %s", strerror(errno));
    self_exe[n] = 0;
    for (int i = 0; i < LEAKERS; i++)
        make_role_link(dir, leakers[i].comm);
    make_role_link(dir, COMM_CHILD_LEAK);
    make_role_link(dir, COMM_CHILD_OK);

    rng_state = 0x5EED50A4C0FFEEULL;
    long long seq = 0;
    for (int i = 0; i < LEAKERS; i++)
        spawn(dir, maxsecs, seq++, leakers[i].comm, "leaker", leakers[i].rate,
              leakers[i].block, LEAKER_OPS, LEAKER_SLOTS, 0, 0);

    long long t0 = now_ns(CLOCK_MONOTONIC);
    long long next_spawn = t0;
    for (long long k = 1; !freeze_req && !term_req; k++) {
        reap(WNOHANG, 1);
        long long now = now_ns(CLOCK_MONOTONIC);
        if (live_children() < CHILDREN_LIVE && now >= next_spawn) {
            int leaky = (int)(rnd() % 2);
            long long life = 100 + (long long)(rnd() % 1901);
            long long rate = leaky ? 2000 + (long long)(rnd() % 48001) : 0;
            long long block = 64 + (long long)(rnd() % 4033);
            spawn(dir, maxsecs, seq++, leaky ? COMM_CHILD_LEAK : COMM_CHILD_OK, "child", rate,
                  block, CHILD_OPS, CHILD_SLOTS, life, !leaky);
            next_spawn = now + SPAWN_GAP_NS;
        }
        sleep_until(t0 + k * TICK_NS);
    }
    if (!term_req) {
        /* Freeze: every live worker writes its truth and holds still. */
        char live[3000];
        int len = snprintf(live, sizeof live, "live=");
        for (int i = 0; i < nprocs; i++) {
            kill(procs[i].pid, SIGUSR1);
            if (len < (int)sizeof live - 40)
                len += snprintf(live + len, sizeof live - (size_t)len, "%s%lld:%d",
                                i ? "," : "", procs[i].seq, (int)procs[i].pid);
        }
        write_parent_file(dir, "parent.truth", live);
        while (!term_req) {
            reap(WNOHANG, 1);
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    for (int i = 0; i < nprocs; i++)
        kill(procs[i].pid, SIGTERM);
    reap(0, 0);
    char cpu[128];
    snprintf(cpu, sizeof cpu, "children_cpu_ms=%lld parent_cpu_ms=%lld", cpu_ms(RUSAGE_CHILDREN),
             cpu_ms(RUSAGE_SELF));
    write_parent_file(dir, "parent.final", cpu);
    _exit(0);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "parent") == 0)
        return parent_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "worker") == 0)
        return worker_main(argc, argv);
    fail("usage: soak_mix parent DIR MAXSECS");
}
