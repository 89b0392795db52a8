//! Ground truth of every workload run: what each leak site (frames[0]
//! function) still holds at exit, and which allocation sites run but must
//! never be reported.
//!
//! The same tables are checked three ways: against the workload's own
//! bookkeeping when it runs natively (`tests/native.rs`, unprivileged),
//! against the symbols of the compiled binaries, and against memtrace's
//! report (the privileged tests).
//!
//! Page size is assumed to be 4096 (checked by [`crate::check_page_size`]).

use crate::report::Kind;

/// Exact outstanding memory of one leak site.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub kind: Kind,
    /// frames[0].function of the stacks (summed over all its stacks).
    pub func: &'static str,
    pub bytes: u64,
    pub allocs: u64,
    /// When set, frames[1].function of each of those stacks.
    pub caller: Option<&'static str>,
}

pub const fn heap(func: &'static str, bytes: u64, allocs: u64) -> Expect {
    Expect {
        kind: Kind::Heap,
        func,
        bytes,
        allocs,
        caller: None,
    }
}

pub const fn mmap(func: &'static str, bytes: u64, allocs: u64) -> Expect {
    Expect {
        kind: Kind::Mmap,
        func,
        bytes,
        allocs,
        caller: None,
    }
}

impl Expect {
    /// Require frames[1] (the leak site's caller) to be `caller`.
    pub const fn from(mut self, caller: &'static str) -> Expect {
        self.caller = Some(caller);
        self
    }
}

/// The image the traced process runs when it exits.
#[derive(Clone, Copy, Debug)]
pub enum Image {
    /// The scenario's workload itself.
    Workload,
    /// Another compiled workload (exec'd).
    OtherWorkload(&'static str),
    /// A system binary (exec'd).
    Path(&'static str),
}

/// One run of a workload, and its ground truth.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// Workload name: tests/workloads/<name>.c or .cpp.
    pub workload: &'static str,
    /// Arguments; `@name` stands for the path of compiled workload `name`.
    pub args: &'static [&'static str],
    /// Bytes written to the workload's stdin (native runs).
    pub stdin: &'static str,
    /// What the workload prints on stdout (native runs).
    pub stdout: &'static str,
    /// The image at exit (exe, comm, module of the leak frames).
    pub image: Image,
    /// Source file of the leak sites (basename of frames[0].file).
    pub source: &'static str,
    /// Every leak site, exactly. Any other `leak_*`/`noleak_*` function as
    /// frames[0] of a reported stack is a failure.
    pub expect: &'static [Expect],
    /// Allocation sites that run but must not be reported (`noleak_*`).
    pub absent: &'static [&'static str],
    /// Upper bound of summary.untracked_frees in a `-- CMD` run. 0 for
    /// single-threaded programs (everything is seen from the start; free(NULL)
    /// is not a free). A thread that exits (glibc's tcache_thread_shutdown)
    /// calls free on its tcache, which glibc allocated without calling
    /// malloc, and again on every chunk cached in it (already freed once):
    /// up to [`TCACHE_SHUTDOWN_FREES`] legitimate untracked frees per
    /// exiting thread.
    pub max_untracked_frees: u64,
}

impl Scenario {
    const fn new(name: &'static str, workload: &'static str) -> Scenario {
        Scenario {
            name,
            workload,
            args: &[],
            stdin: "",
            stdout: "",
            image: Image::Workload,
            source: "",
            expect: &[],
            absent: &[],
            max_untracked_frees: 0,
        }
    }

    /// Names of the other workloads this scenario needs (from `@name` args
    /// and the final image).
    pub fn referenced_workloads(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .args
            .iter()
            .filter_map(|a| a.strip_prefix('@'))
            .collect();
        if let Image::OtherWorkload(w) = self.image
            && !v.contains(&w)
        {
            v.push(w);
        }
        v
    }
}

/// Frees glibc 2.36 makes when a thread exits: 64 tcache bins of up to 7
/// chunks, plus the tcache itself.
pub const TCACHE_SHUTDOWN_FREES: u64 = 64 * 7 + 1;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

pub const ALLOC_BASIC: Scenario = Scenario {
    args: &["basic"],
    source: "allocators.c",
    expect: &[
        heap("leak_malloc", 100, 1).from("mode_basic"),
        heap("leak_malloc_loop", 5 * 1000, 5).from("mode_basic"),
        // two call sites in one function: 10 + 20
        heap("leak_malloc_two_sites", 30, 2).from("mode_basic"),
        // called from two places in main: 2 x 64
        heap("leak_called_twice", 128, 2).from("mode_basic"),
        // calloc(10, 100)
        heap("leak_calloc", 1000, 1).from("mode_basic"),
        // 10 x 256 allocated, 4 freed
        heap("leak_some_freed", 6 * 256, 6).from("mode_basic"),
    ],
    absent: &[
        "noleak_free_some",
        "noleak_malloc_free",
        "noleak_calloc_free",
        "noleak_free_null",
        "noleak_malloc_fail",
        "noleak_calloc_fail",
    ],
    ..Scenario::new("alloc_basic", "allocators")
};

pub const ALLOC_REALLOC: Scenario = Scenario {
    args: &["realloc"],
    source: "allocators.c",
    expect: &[
        // malloc(100) in noleak_realloc_src, realloc'd to 1000 here
        heap("leak_realloc_grow", 1000, 1).from("mode_realloc"),
        // 100 -> 200000 (past the mmap threshold)
        heap("leak_realloc_grow_huge", 200_000, 1).from("mode_realloc"),
        // 5000 -> 50
        heap("leak_realloc_shrink", 50, 1).from("mode_realloc"),
        // realloc(NULL, 300)
        heap("leak_realloc_null", 300, 1).from("mode_realloc"),
        // realloc(p, SIZE_MAX/2) failed: p (400) stays with its allocator
        heap("leak_realloc_fail_src", 400, 1).from("mode_realloc"),
        // reallocarray(NULL, 10, 48)
        heap("leak_reallocarray_null", 480, 1).from("mode_realloc"),
        // malloc(64) -> reallocarray(p, 25, 40)
        heap("leak_reallocarray_grow", 1000, 1).from("mode_realloc"),
        // reallocarray(p, SIZE_MAX/2, 4) overflowed: p (123) stays
        heap("leak_reallocarray_fail_src", 123, 1).from("mode_realloc"),
    ],
    absent: &[
        "noleak_realloc_src",
        "noleak_realloc_zero",
        "noleak_realloc_fail",
        "noleak_reallocarray_overflow",
        "noleak_realloc_then_free",
    ],
    ..Scenario::new("alloc_realloc", "allocators")
};

pub const ALLOC_CHAIN: Scenario = Scenario {
    args: &["chain"],
    source: "allocators.c",
    expect: &[
        // 16 -> 32 -> ... -> 16384 (alternating step_a/step_b) -> 5000 here
        heap("leak_chain_last", 5000, 1).from("mode_chain"),
        // malloc(16) then 100 reallocs in the same function: 16 * 101
        heap("leak_chain_loop", 1616, 1).from("mode_chain"),
        // 100000 -> 300000 -> 1000 -> 10 here
        heap("leak_chain_shrink_last", 10, 1).from("mode_chain"),
        // three blocks finally realloc'd here to 111, 222, 333
        heap("leak_chain_multi", 666, 3).from("mode_chain"),
    ],
    absent: &[
        "noleak_chain_start",
        "noleak_chain_step_a",
        "noleak_chain_step_b",
    ],
    ..Scenario::new("alloc_chain", "allocators")
};

pub const ALLOC_ALIGNED: Scenario = Scenario {
    args: &["aligned"],
    source: "allocators.c",
    expect: &[
        heap("leak_posix_memalign", 3000, 1).from("mode_aligned"),
        heap("leak_aligned_alloc", 1024, 1).from("mode_aligned"),
        heap("leak_memalign", 200, 1).from("mode_aligned"),
        heap("leak_valloc", 5000, 1).from("mode_aligned"),
        // requested 100 (glibc reserves a whole page)
        heap("leak_pvalloc", 100, 1).from("mode_aligned"),
    ],
    absent: &[
        "noleak_posix_memalign_fail",
        "noleak_aligned_free",
        "noleak_aligned_fail",
    ],
    ..Scenario::new("alloc_aligned", "allocators")
};

pub const ALLOC_ZERO: Scenario = Scenario {
    args: &["zero"],
    source: "allocators.c",
    expect: &[
        // 2 x malloc(0): 0 bytes, 2 live blocks
        heap("leak_malloc_zero", 0, 2).from("mode_zero"),
        heap("leak_malloc", 8, 1).from("mode_zero"),
    ],
    ..Scenario::new("alloc_zero", "allocators")
};

pub const HUGE: Scenario = Scenario {
    source: "huge.c",
    expect: &[
        heap("leak_huge_malloc", 64 * MIB, 1).from("main"),
        // calloc(8, 4 MiB)
        heap("leak_huge_calloc", 32 * MIB, 1).from("main"),
        // posix_memalign(1 MiB, 8 MiB)
        heap("leak_huge_aligned", 8 * MIB, 1).from("main"),
        // 40 MiB -> 96 MiB (glibc: mremap of the chunk)
        heap("leak_huge_realloc", 96 * MIB, 1).from("main"),
        // 16 MiB -> 1 MiB
        heap("leak_huge_realloc_shrink", MIB, 1).from("main"),
    ],
    absent: &["noleak_huge_src", "noleak_huge_free"],
    ..Scenario::new("huge", "huge")
};

pub const MMAP_BASIC: Scenario = Scenario {
    args: &["basic"],
    source: "mmap.c",
    expect: &[
        mmap("leak_mmap_anon", 5 * PAGE, 1).from("mode_basic"),
        mmap("leak_mmap_loop", 4 * PAGE, 4).from("mode_basic"),
        mmap("leak_mmap_and_heap", 2 * PAGE, 1).from("mode_basic"),
        heap("leak_mmap_and_heap", 300, 1).from("mode_basic"),
    ],
    absent: &[
        "noleak_mmap_unmapped",
        "noleak_mmap_pieces",
        "noleak_mmap_file",
        "noleak_mmap_fail",
    ],
    ..Scenario::new("mmap_basic", "mmap")
};

pub const MMAP_PARTIAL: Scenario = Scenario {
    args: &["partial"],
    source: "mmap.c",
    expect: &[
        // 10 pages, pages 4-5 unmapped: 8 pages left, still one allocation
        mmap("leak_mmap_partial_middle", 8 * PAGE, 1).from("mode_partial"),
        // 4 pages, first unmapped
        mmap("leak_mmap_trim_head", 3 * PAGE, 1).from("mode_partial"),
        // 4 pages, last 2 unmapped
        mmap("leak_mmap_trim_tail", 2 * PAGE, 1).from("mode_partial"),
        // 8 pages, pages 1, 3, 5 unmapped
        mmap("leak_mmap_holes", 5 * PAGE, 1).from("mode_partial"),
    ],
    absent: &["noleak_munmap_range", "noleak_span_a", "noleak_span_b"],
    ..Scenario::new("mmap_partial", "mmap")
};

pub const MMAP_MREMAP: Scenario = Scenario {
    args: &["mremap"],
    source: "mmap.c",
    expect: &[
        // 2 pages grown in place to 8 (the mremap site owns it)
        mmap("leak_mremap_inplace", 8 * PAGE, 1).from("mode_mremap"),
        // 2 pages moved and grown to 6
        mmap("leak_mremap_move", 6 * PAGE, 1).from("mode_mremap"),
        // 8 pages shrunk to 3
        mmap("leak_mremap_shrink", 3 * PAGE, 1).from("mode_mremap"),
        // mremap to 64 TiB failed: 2 pages stay with the mmap site
        mmap("leak_mremap_fail_src", 2 * PAGE, 1).from("mode_mremap"),
    ],
    absent: &[
        "noleak_mremap_src",
        "noleak_mremap_fail",
        "noleak_blocker",
        "noleak_mremap_then_unmap",
    ],
    ..Scenario::new("mmap_mremap", "mmap")
};

pub const MMAP_FIXED: Scenario = Scenario {
    args: &["fixed"],
    source: "mmap.c",
    expect: &[
        // 4 pages, upper 2 replaced by a MAP_FIXED mapping
        mmap("leak_mmap_fixed_base", 2 * PAGE, 1).from("mode_fixed"),
        mmap("leak_mmap_fixed_over", 2 * PAGE, 1).from("mode_fixed"),
    ],
    ..Scenario::new("mmap_fixed", "mmap")
};

pub const THREADS: Scenario = Scenario {
    args: &["join"],
    source: "threads.c",
    expect: &[
        heap("leak_thread_a", 100 * 100, 100).from("worker_a"),
        heap("leak_thread_b", 100 * 200, 100).from("worker_b"),
        heap("leak_thread_c", 50 * 300, 50).from("worker_c"),
        heap("leak_thread_d", 25 * 4096, 25).from("worker_d"),
        heap("leak_main_thread", 50, 1).from("mode_join"),
    ],
    absent: &["noleak_thread_churn", "noleak_cross_thread_alloc"],
    // four workers exit
    max_untracked_frees: 4 * TCACHE_SHUTDOWN_FREES,
    ..Scenario::new("threads", "threads")
};

pub const THREADS_LEADER_EXIT: Scenario = Scenario {
    args: &["leader-exit"],
    source: "threads.c",
    expect: &[
        heap("leak_leader_before_exit", 77, 1).from("mode_leader_exit"),
        // after the leader thread exited; the process ends later
        heap("leak_after_leader_exit", 3 * 999, 3).from("worker_outliving_leader"),
    ],
    // the leader thread exits
    max_untracked_frees: TCACHE_SHUTDOWN_FREES,
    ..Scenario::new("threads_leader_exit", "threads")
};

pub const FORK: Scenario = Scenario {
    source: "fork.c",
    expect: &[
        // the child frees its copy; the parent's stays
        heap("leak_before_fork", 3333, 1).from("main"),
        heap("leak_after_fork", 4444, 1).from("main"),
    ],
    absent: &[
        "noleak_in_child",
        "noleak_child_mmap",
        "noleak_child_churn",
        "noleak_child_frees_parent_block",
    ],
    ..Scenario::new("fork", "fork")
};

/// The command's own leaks in `fork_tree` (its children's are checked by
/// tests/children.rs).
pub const FORK_TREE: Scenario = Scenario {
    source: "fork_tree.c",
    expect: &[
        heap("leak_in_command", 1111, 1).from("main"),
        // child A frees its copy; the command's stays
        heap("leak_inherited", 4096, 1).from("main"),
        heap("leak_after_children", 4444, 1).from("main"),
    ],
    absent: &[
        "noleak_kid_frees_inherited",
        "noleak_kid_forked",
        "noleak_kid_grandchild",
        "noleak_kid_spawned",
    ],
    ..Scenario::new("fork_tree", "fork_tree")
};

/// Every signal delivered through memtrace's ptrace stops, then a leak.
pub const SIGNALS: Scenario = Scenario {
    source: "signals.c",
    expect: &[heap("leak_after_signals", 321, 1).from("main")],
    ..Scenario::new("signals", "signals")
};

const EXEC_ABSENT: &[&str] = &[
    "noleak_before_exec",
    "noleak_before_exec_many",
    "noleak_before_exec_mmap",
    "noleak_after_exec_churn",
];

const EXEC_TARGET_LEAKS: &[Expect] = &[
    heap("leak_after_exec", 6666, 1).from("main"),
    mmap("leak_after_exec_mmap", 2 * PAGE, 1).from("main"),
];

pub const EXEC: Scenario = Scenario {
    args: &["@exec_target"],
    image: Image::OtherWorkload("exec_target"),
    source: "exec_target.c",
    expect: EXEC_TARGET_LEAKS,
    absent: EXEC_ABSENT,
    ..Scenario::new("exec", "exec_leaker")
};

pub const EXEC_FROM_THREAD: Scenario = Scenario {
    args: &["--from-thread", "@exec_target"],
    image: Image::OtherWorkload("exec_target"),
    source: "exec_target.c",
    expect: EXEC_TARGET_LEAKS,
    absent: EXEC_ABSENT,
    ..Scenario::new("exec_from_thread", "exec_leaker")
};

pub const EXEC_TRUE: Scenario = Scenario {
    args: &["/bin/true"],
    image: Image::Path("/bin/true"),
    expect: &[],
    absent: &[
        "noleak_before_exec",
        "noleak_before_exec_many",
        "noleak_before_exec_mmap",
    ],
    ..Scenario::new("exec_true", "exec_leaker")
};

pub const CXX: Scenario = Scenario {
    source: "cxx.cpp",
    expect: &[
        // 3 x new Obj40
        heap("leak_new_object", 3 * 40, 3).from("main"),
        heap("leak_new_array", 1000, 1).from("main"),
        heap("leak_new_nothrow", 300, 1).from("main"),
        // operator new(size_t, align_val_t): sizeof = 128
        heap("leak_new_aligned", 128, 1).from("main"),
        // new WithDtor[4]: 4 * 24 + 8-byte cookie
        heap("leak_new_array_cookie", 104, 1).from("main"),
        // new Obj40 + malloc(60)
        heap("leak_new_and_malloc", 100, 2).from("main"),
        // new Obj40[2], in namespace wl (demangled name)
        heap("wl::leak_cxx_mangled", 80, 1).from("main"),
    ],
    absent: &["noleak_new_delete", "noleak_new_fail"],
    ..Scenario::new("cxx", "cxx")
};

/// [`CXX`] without the throwing operator new (for allocators whose own
/// operator new gets a return probe).
pub const CXX_NO_THROW: Scenario = Scenario {
    name: "cxx_no_throw",
    args: &["no-throw"],
    absent: &["noleak_new_delete"],
    ..CXX
};

pub const MILLION: Scenario = Scenario {
    source: "million.c",
    expect: &[heap("leak_ten", 7770, 10).from("main")],
    absent: &["noleak_churn"],
    ..Scenario::new("million", "million")
};

pub const QUICK: Scenario = Scenario {
    source: "quick.c",
    expect: &[heap("leak_quick", 3333, 3).from("main")],
    ..Scenario::new("quick", "quick")
};

pub const QUICK_EXIT: Scenario = Scenario {
    args: &["_exit"],
    source: "quick.c",
    expect: &[heap("leak_quick", 3333, 3).from("main")],
    ..Scenario::new("quick_exit", "quick")
};

/// A leak under 30 levels of recursion whose frames span pages: the whole
/// stack fits the 64 frames kept.
pub const DEEP: Scenario = Scenario {
    args: &["30"],
    source: "deep.c",
    expect: &[heap("leak_deep", 4242, 1).from("recurse")],
    ..Scenario::new("deep", "deep")
};

/// The same under 100 levels: the stack is cut at 64 frames, the leak is
/// still the leaf's.
pub const DEEPER: Scenario = Scenario {
    args: &["100"],
    source: "deep.c",
    expect: &[heap("leak_deep", 4242, 1).from("recurse")],
    ..Scenario::new("deeper", "deep")
};

/// malloc called through a pointer (a canonical PLT entry when built
/// non-PIE: see tests/discovery.rs).
pub const PLT: Scenario = Scenario {
    source: "plt.c",
    expect: &[heap("leak_through_pointer", 4 * 321, 4).from("main")],
    absent: &["noleak_through_pointer"],
    ..Scenario::new("plt", "plt")
};

/// An allocator dlopen()ed after start (mimalloc's mi_malloc, through dlsym).
pub const DLOPEN: Scenario = Scenario {
    source: "dlopen_alloc.c",
    expect: &[
        heap("leak_before_dlopen", 1234, 1).from("main"),
        heap("leak_dlopen_malloc", 5 * 700, 5).from("main"),
    ],
    absent: &["noleak_dlopen_churn"],
    ..Scenario::new("dlopen", "dlopen_alloc")
};

const PID_LEAKS: &[Expect] = &[
    heap("leak_pid_heap", 10 * 1000, 10).from("main"),
    mmap("leak_pid_mmap", 3 * PAGE, 1).from("main"),
    // realloc of a block allocated before attach
    heap("leak_pid_realloc_untracked", 3000, 1).from("main"),
];

const PID_ABSENT: &[&str] = &[
    "noleak_pid_before_attach",
    "noleak_pid_free_untracked",
    "noleak_pid_churn",
];

/// The `--pid` target, run by the pid tests with their own protocol (the
/// leaks of one 'l' command; what it did before attach is not seen).
pub const PID: Scenario = Scenario {
    stdin: "lq",
    stdout: "ready\ndone\n",
    source: "pidleaker.c",
    expect: PID_LEAKS,
    absent: PID_ABSENT,
    ..Scenario::new("pid", "pidleaker")
};

/// As [`PID`], with a thread churning malloc/free all the time (also while
/// memtrace attaches).
pub const PID_BUSY: Scenario = Scenario {
    args: &["busy"],
    stdin: "lq",
    stdout: "ready\ndone\n",
    source: "pidleaker.c",
    expect: PID_LEAKS,
    absent: PID_ABSENT,
    ..Scenario::new("pid_busy", "pidleaker")
};

/// Every scenario (the native self-consistency test walks them all).
pub const ALL: &[&Scenario] = &[
    &ALLOC_BASIC,
    &ALLOC_REALLOC,
    &ALLOC_CHAIN,
    &ALLOC_ALIGNED,
    &ALLOC_ZERO,
    &HUGE,
    &MMAP_BASIC,
    &MMAP_PARTIAL,
    &MMAP_MREMAP,
    &MMAP_FIXED,
    &THREADS,
    &THREADS_LEADER_EXIT,
    &FORK,
    &FORK_TREE,
    &SIGNALS,
    &EXEC,
    &EXEC_FROM_THREAD,
    &EXEC_TRUE,
    &CXX,
    &CXX_NO_THROW,
    &MILLION,
    &QUICK,
    &QUICK_EXIT,
    &DEEP,
    &DEEPER,
    &PLT,
    &DLOPEN,
    &PID,
    &PID_BUSY,
];
