//! Every heap allocator entry point (privileged: needs root and a built
//! memtrace; see `memtrace_tests::require_ebpf`).

use memtrace_tests::{Kind, Traced, scenario_test, scenarios, stack_allocs, stack_bytes};

scenario_test!(
    alloc_basic_malloc_calloc_free,
    scenarios::ALLOC_BASIC,
    |t: &Traced| {
        // Stacks are per call stack: two call sites in one function, and one
        // function called from two places, each make two stacks.
        let mut two_sites: Vec<(u64, u64)> = t
            .report
            .stacks_for(Kind::Heap, "leak_malloc_two_sites")
            .iter()
            .map(|s| (stack_bytes(s), stack_allocs(s)))
            .collect();
        two_sites.sort();
        assert_eq!(
            two_sites,
            [(10, 1), (20, 1)],
            "leak_malloc_two_sites: one stack per call site"
        );
        let twice: Vec<(u64, u64)> = t
            .report
            .stacks_for(Kind::Heap, "leak_called_twice")
            .iter()
            .map(|s| (stack_bytes(s), stack_allocs(s)))
            .collect();
        assert_eq!(
            twice,
            [(64, 1), (64, 1)],
            "leak_called_twice: one stack per caller site"
        );
    }
);

scenario_test!(alloc_realloc_family, scenarios::ALLOC_REALLOC);

scenario_test!(alloc_realloc_chains, scenarios::ALLOC_CHAIN);

scenario_test!(alloc_aligned_family, scenarios::ALLOC_ALIGNED);

scenario_test!(alloc_malloc_zero, scenarios::ALLOC_ZERO);

scenario_test!(
    huge_allocations_count_once_as_heap,
    scenarios::HUGE,
    |t: &Traced| {
        // glibc's internal mmap/mremap/munmap of these chunks is not "mmap".
        let mmap_bytes = t.report.kind_bytes(Kind::Mmap);
        assert!(
            mmap_bytes < 1 << 20,
            "{mmap_bytes} bytes of mmap regions outstanding in a program that never calls mmap:\n{}",
            t.report.describe()
        );
    }
);
