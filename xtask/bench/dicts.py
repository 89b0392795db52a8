# dicts.py SIZE ROUNDS: a real allocation-heavy program nobody here wrote
# (CPython), building and dropping large dicts. Keys are strings, values
# lists of 80 pointers (640 bytes: above pymalloc's 512-byte limit, so
# every value's item array comes from malloc); the dict's own tables grow
# by malloc/free as it fills. Prints work_ns like the C workloads, and
# units = SIZE * ROUNDS; calls is unknown (0): the harness takes the
# allocator calls per unit from memtrace's reports.
import sys
import time

size = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
# The gate: read stdin up to a newline or end of file.
print("ready", flush=True)
sys.stdin.buffer.readline()
t0 = time.perf_counter_ns()
for r in range(rounds):
    d = {}
    for i in range(size):
        d["k%d-%d" % (r, i)] = [i] * 80
    for i in range(0, size, 2):
        del d["k%d-%d" % (r, i)]
    d = None
t1 = time.perf_counter_ns()
print("work_ns=%d calls=0 units=%d" % (t1 - t0, size * rounds), flush=True)
