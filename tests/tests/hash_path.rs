//! The in-flight hash map, used by threads whose id is past the end of the
//! per-thread array (hosts with a large `pid_max`): with
//! `MEMTRACE_THREAD_SLOTS=1` every thread goes there, and the ground truth
//! must not change (privileged).

use memtrace_tests::{require_ebpf, run_scenario, scenarios, serial};

#[test]
fn every_thread_through_the_hash_map() {
    if !require_ebpf() {
        return;
    }
    let _serial = serial();
    // SAFETY: the only test of this binary sets the variable before any
    // thread of its own reads the environment.
    unsafe { std::env::set_var("MEMTRACE_THREAD_SLOTS", "1") };
    for s in [
        &scenarios::THREADS,
        &scenarios::ALLOC_REALLOC,
        &scenarios::ALLOC_CHAIN,
        &scenarios::MMAP_MREMAP,
        &scenarios::HUGE,
        &scenarios::CXX,
    ] {
        // Asserts the report against the scenario's exact ground truth.
        run_scenario(s);
    }
}
