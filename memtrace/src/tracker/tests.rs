use super::*;
use crate::decode::{AllocFn, Event, Meta, StackRef};

const P: u32 = 100;
const S1: StackRef = StackRef { id: 1 };
const S2: StackRef = StackRef { id: 2 };

fn meta(ts: u64) -> Meta {
    Meta {
        pid: P,
        tid: P,
        ts_ns: ts,
    }
}
fn alloc(addr: u64, size: u64, stack: StackRef) -> Event {
    Event::Alloc {
        meta: meta(1),
        func: AllocFn::Malloc,
        addr,
        size,
        stack,
    }
}
fn free(addr: u64) -> Event {
    Event::Free {
        meta: meta(2),
        addr,
    }
}
fn run(evs: &[Event]) -> Tracker {
    let mut t = Tracker::new();
    for e in evs {
        t.on_event(e);
    }
    t
}
fn proc_of(t: &Tracker) -> &Process {
    t.get(P).expect("process tracked")
}
/// (outstanding bytes, outstanding allocations) of `stack`, `kind`.
fn held(p: &Process, stack: StackRef, kind: Kind) -> (u64, u64) {
    p.stacks
        .iter()
        .find(|s| s.stack == stack && s.kind == kind)
        .map_or((0, 0), |s| (s.outstanding_bytes, s.outstanding_allocations))
}

#[test]
fn alloc_and_free() {
    let t = run(&[alloc(0x10, 100, S1), alloc(0x20, 50, S2), free(0x10)]);
    let p = proc_of(&t);
    assert_eq!((p.outstanding_bytes, p.outstanding_allocations), (50, 1));
    assert_eq!(held(p, S1, Kind::Heap), (0, 0));
    assert_eq!(held(p, S2, Kind::Heap), (50, 1));
    assert_eq!(p.counters.allocations, 2);
    assert_eq!(p.counters.frees, 1);
    assert_eq!(p.counters.untracked_frees, 0);
}

#[test]
fn unknown_free_is_counted_not_dropped() {
    let t = run(&[alloc(0x10, 8, S1), free(0x999)]);
    let p = proc_of(&t);
    assert_eq!(p.counters.untracked_frees, 1);
    assert_eq!(p.outstanding_bytes, 8);
}

#[test]
fn realloc_moves_ownership_to_realloc_site() {
    let t = run(&[
        alloc(0x10, 8, S1),
        Event::Realloc {
            meta: meta(3),
            old_addr: 0x10,
            addr: 0x40,
            size: 64,
            stack: S2,
        },
    ]);
    let p = proc_of(&t);
    assert_eq!(held(p, S1, Kind::Heap), (0, 0));
    assert_eq!(held(p, S2, Kind::Heap), (64, 1));
    assert_eq!((p.outstanding_bytes, p.outstanding_allocations), (64, 1));
}

#[test]
fn realloc_in_place_and_of_unknown_block() {
    let t = run(&[
        alloc(0x10, 8, S1),
        Event::Realloc {
            meta: meta(3),
            old_addr: 0x10,
            addr: 0x10,
            size: 16,
            stack: S1,
        },
        Event::Realloc {
            meta: meta(4),
            old_addr: 0x777,
            addr: 0x80,
            size: 4,
            stack: S2,
        },
    ]);
    let p = proc_of(&t);
    assert_eq!(held(p, S1, Kind::Heap), (16, 1));
    assert_eq!(held(p, S2, Kind::Heap), (4, 1));
    assert_eq!(p.counters.untracked_frees, 1);
}

#[test]
fn reused_address_counts_missed_free() {
    let t = run(&[alloc(0x10, 8, S1), alloc(0x10, 32, S2)]);
    let p = proc_of(&t);
    assert_eq!(p.counters.missed_frees, 1);
    assert_eq!((p.outstanding_bytes, p.outstanding_allocations), (32, 1));
}

#[test]
fn exec_starts_afresh_and_exit_freezes() {
    let mut t = run(&[alloc(0x10, 8, S1)]);
    t.on_event(&Event::Exec {
        meta: meta(5),
        old_tid: P,
        comm: Default::default(),
    });
    t.on_event(&alloc(0x20, 3, S2));
    t.on_event(&Event::Exit {
        meta: meta(9),
        comm: Default::default(),
    });
    assert_eq!(t.live().count(), 0);
    let p = proc_of(&t);
    assert_eq!(p.exited_ns, Some(9));
    assert_eq!(p.generation, 1);
    assert_eq!((p.outstanding_bytes, p.outstanding_allocations), (3, 1));
    assert_eq!(held(p, S1, Kind::Heap), (0, 0));
}

/// Sampling: at exit, the blocks the process still held, in this image and
/// in those exec replaced, are handed over for the kernel's sampled set to
/// forget; without sampling, nothing is.
#[test]
fn exit_hands_over_sampled_blocks() {
    let script = |sample: u64| {
        let mut t = Tracker::new();
        t.set_sample_bytes(sample);
        for e in [alloc(0x10, 8, S1), alloc(0x30, 8, S1), free(0x30)] {
            t.on_event(&e);
        }
        t.on_event(&Event::Exec {
            meta: meta(5),
            old_tid: P,
            comm: Default::default(),
        });
        t.on_event(&alloc(0x20, 3, S2));
        // Not handed over before the exit: the new image may still reuse
        // the old one's addresses.
        assert!(t.take_dead_sampled().is_empty());
        t.on_event(&Event::Exit {
            meta: meta(9),
            comm: Default::default(),
        });
        let mut dead = t.take_dead_sampled();
        dead.sort_unstable();
        (dead, t.take_dead_sampled())
    };
    assert_eq!(script(512 << 10), (vec![(P, 0x10), (P, 0x20)], Vec::new()));
    assert_eq!(script(0), (Vec::new(), Vec::new()));
}

#[test]
fn filter_ignores_other_processes() {
    let mut t = Tracker::with_filter(vec![7]);
    t.on_event(&alloc(0x10, 8, S1));
    assert!(t.get(P).is_none());
}

fn mmap(addr: u64, len: u64, stack: StackRef) -> Event {
    Event::Mmap {
        meta: meta(1),
        addr,
        len,
        flags: 0x22,
        stack,
    }
}
fn munmap(addr: u64, len: u64) -> Event {
    Event::Munmap {
        meta: meta(2),
        addr,
        len,
    }
}
const PG: u64 = 4096;

#[test]
fn partial_munmap_keeps_the_rest() {
    let base = 0x7f00_0000_0000;
    let t = run(&[mmap(base, 10 * PG, S1), munmap(base + 4 * PG, 2 * PG)]);
    let p = proc_of(&t);
    // Two pieces of one allocation remain.
    assert_eq!(held(p, S1, Kind::Mmap), (8 * PG, 1));
    assert_eq!(p.regions.len(), 2);
    let t = run(&[
        mmap(base, 10 * PG, S1),
        munmap(base + 4 * PG, 2 * PG),
        munmap(base, 4 * PG),
        munmap(base + 6 * PG, 4 * PG),
    ]);
    let p = proc_of(&t);
    assert_eq!(held(p, S1, Kind::Mmap), (0, 0));
    assert_eq!(p.counters.frees, 1);
}

#[test]
fn mmap_sizes_are_as_requested() {
    let base = 0x7f00_0000_0000;
    let t = run(&[mmap(base, 10_000, S1), munmap(base, PG)]);
    let p = proc_of(&t);
    assert_eq!(held(p, S1, Kind::Mmap), (10_000 - PG, 1));
}

#[test]
fn file_mapping_not_tracked_but_overlays_cut() {
    let base = 0x7f00_0000_0000;
    let file_fixed = Event::Mmap {
        meta: meta(3),
        addr: base,
        len: PG,
        flags: 0x12,
        stack: S2,
    };
    let t = run(&[mmap(base, 4 * PG, S1), file_fixed]);
    let p = proc_of(&t);
    assert_eq!(held(p, S1, Kind::Mmap), (3 * PG, 1));
    assert_eq!(held(p, S2, Kind::Mmap), (0, 0));
}

#[test]
fn mremap_moves_to_the_mremap_call_site() {
    let (a, b) = (0x7f00_0000_0000, 0x7f10_0000_0000);
    let t = run(&[
        mmap(a, 2 * PG, S1),
        Event::Mremap {
            meta: meta(5),
            old_addr: a,
            old_len: 2 * PG,
            addr: b,
            len: 8 * PG,
            stack: S2,
        },
    ]);
    let p = proc_of(&t);
    assert_eq!(held(p, S1, Kind::Mmap), (0, 0));
    assert_eq!(held(p, S2, Kind::Mmap), (8 * PG, 1));
    assert_eq!(
        (p.outstanding_bytes, p.outstanding_allocations),
        (8 * PG, 1)
    );
    assert_eq!(p.oldest_ns(), Some(5));
}

#[test]
fn mremap_of_untracked_region_is_ignored() {
    let t = run(&[
        alloc(0x10, 1, S1),
        Event::Mremap {
            meta: meta(5),
            old_addr: 0x5000,
            old_len: PG,
            addr: 0x9000,
            len: PG,
            stack: S2,
        },
    ]);
    let p = proc_of(&t);
    assert_eq!(p.outstanding_bytes, 1);
}

#[test]
fn oldest_per_stack() {
    let mut t = Tracker::new();
    for (ts, addr, st) in [(5, 0x10, S1), (3, 0x20, S1), (9, 0x30, S2)] {
        t.on_event(&Event::Alloc {
            meta: meta(ts),
            func: AllocFn::Malloc,
            addr,
            size: 1,
            stack: st,
        });
    }
    let p = proc_of(&t);
    let oldest = p.oldest_per_stack();
    assert_eq!(oldest, vec![Some(3), Some(9)]);
    assert_eq!(p.oldest_ns(), Some(3));
}

#[test]
fn lifetimes_recorded_on_free() {
    let mut t = Tracker::new();
    t.on_event(&Event::Alloc {
        meta: meta(0),
        func: AllocFn::Malloc,
        addr: 1,
        size: 1,
        stack: S1,
    });
    t.on_event(&Event::Free {
        meta: meta(5_000_000),
        addr: 1,
    });
    let p = proc_of(&t);
    assert_eq!(p.lifetimes_us.len(), 1);
    assert!(p.lifetimes_us.value_at_quantile(0.5) >= 4_900);
}

#[test]
fn allocation_bound_drops_and_counts() {
    let mut t = Tracker::new();
    t.set_limits(Limits {
        allocations: 2,
        processes: 10,
    });
    for i in 0..5 {
        t.on_event(&alloc(0x100 + i, 10, S1));
    }
    let p = proc_of(&t);
    assert_eq!((p.outstanding_allocations, p.counters.dropped), (2, 3));
    assert_eq!(t.held(), 2);
    // Freeing makes room again; frees of dropped blocks are untracked.
    t.on_event(&free(0x100));
    t.on_event(&free(0x104));
    t.on_event(&alloc(0x200, 10, S2));
    let p = proc_of(&t);
    assert_eq!(p.counters.untracked_frees, 1);
    assert_eq!(p.outstanding_allocations, 2);
    assert_eq!(t.held(), 2);
}

#[test]
fn process_bound_counts_dropped_events() {
    let mut t = Tracker::new();
    t.set_limits(Limits {
        allocations: 100,
        processes: 1,
    });
    t.on_event(&alloc(0x10, 1, S1));
    t.on_event(&Event::Alloc {
        meta: Meta {
            pid: 7,
            tid: 7,
            ts_ns: 1,
        },
        func: AllocFn::Malloc,
        addr: 0x10,
        size: 1,
        stack: S1,
    });
    assert!(t.get(7).is_none());
    assert_eq!(t.totals.dropped_process_events, 1);
}

#[test]
fn held_follows_exec_exit_and_retention() {
    let mut t = run(&[
        alloc(0x10, 1, S1),
        alloc(0x20, 1, S1),
        mmap(0x7000_0000, PG, S1),
    ]);
    let other = Meta {
        pid: 9,
        tid: 9,
        ts_ns: 1,
    };
    t.on_event(&Event::Alloc {
        meta: other,
        func: AllocFn::Malloc,
        addr: 1,
        size: 1,
        stack: S1,
    });
    assert_eq!(t.held(), 4);
    t.on_event(&Event::Exec {
        meta: meta(3),
        old_tid: P,
        comm: Default::default(),
    });
    assert_eq!(t.held(), 1);
    t.on_event(&Event::Free {
        meta: other,
        addr: 1,
    });
    t.on_event(&alloc(0x30, 1, S1));
    t.on_event(&Event::Exit {
        meta: meta(4),
        comm: Default::default(),
    });
    assert_eq!(t.held(), 1);
    t.retain_exited(|_| false);
    assert_eq!(t.held(), 0);
}

#[test]
fn block_packing_round_trips() {
    use heap::Block;
    let sizes = [0, 1, 16, 4096, (1 << 32) + 7, Block::MAX_SIZE];
    let stacks = [0, 1, 255, 1 << 16, (1 << 23) + 3, Block::MAX_STACK];
    for size in sizes {
        for stack in stacks {
            let b = Block::pack(size, stack, 42).expect("fits inline");
            assert_eq!(
                (b.size(), b.stack(), b.ts_ns),
                (Some(size), Some(stack), 42)
            );
        }
    }
    assert_eq!(Block::MAX_SIZE, (1 << 40) - 2);
    assert_eq!(Block::MAX_STACK, (1 << 24) - 1);
    // What does not fit is refused, never truncated.
    assert_eq!(Block::pack(Block::MAX_SIZE + 1, 0, 0), None);
    assert_eq!(Block::pack(u64::MAX, 0, 0), None);
    assert_eq!(Block::pack(1, Block::MAX_STACK + 1, 0), None);
    assert_eq!(Block::pack(1, u32::MAX, 0), None);
}

#[test]
fn heap_spills_what_does_not_fit_and_keeps_it_exact() {
    use heap::{Entry, Heap};
    let mut h = Heap::default();
    let e = |size, stack, ts_ns| Entry { size, stack, ts_ns };
    let small = e(16, 3, 1);
    let huge = e((3 << 40) + 5, 7, 2);
    let deep = e(24, (1 << 24) + 9, 3);
    let both = e(u64::MAX, u32::MAX, 4);
    for (addr, x) in [(0x10, small), (0x20, huge), (0x30, deep), (0x40, both)] {
        h.insert(addr, x);
    }
    assert_eq!((h.len(), h.spilled_len()), (4, 3));
    let mut all: Vec<_> = h.iter().collect();
    all.sort_by_key(|x| x.ts_ns);
    assert_eq!(all, vec![small, huge, deep, both]);
    // Replacing a spilled block by an inline one drops its spill record.
    h.insert(0x20, e(8, 1, 5));
    assert_eq!((h.len(), h.spilled_len()), (4, 2));
    assert_eq!(h.remove(0x20), Some(e(8, 1, 5)));
    assert_eq!(h.remove(0x30), Some(deep));
    assert_eq!(h.remove(0x40), Some(both));
    assert_eq!(h.remove(0x40), None);
    assert_eq!(h.remove(0x10), Some(small));
    assert_eq!((h.len(), h.spilled_len()), (0, 0));
}

#[test]
fn heap_shards_spread_aligned_addresses() {
    use heap::{Entry, Heap};
    // Pointers of one size class, page- and MiB-aligned ones, and a mix.
    for (base, stride) in [
        (0x5555_0000_0010, 16),
        (0x7f00_0000_0000, 4096),
        (0x7f00_0000_0000, 1 << 20),
        (0x1000, 48),
    ] {
        let mut h = Heap::default();
        let n = 16_000;
        for i in 0..n {
            let e = Entry {
                size: 16,
                stack: 0,
                ts_ns: i,
            };
            h.insert(base + i * stride, e);
        }
        assert_eq!(h.len(), n as usize);
        let lens = h.shard_lens();
        // 1000 each when even: no shard far off.
        assert!(
            lens.iter().all(|&l| (800..1200).contains(&l)),
            "stride {stride}: {lens:?}"
        );
        for i in 0..n {
            assert_eq!(h.remove(base + i * stride).map(|e| e.ts_ns), Some(i));
        }
        assert_eq!(h.len(), 0);
    }
}

#[test]
fn huge_block_keeps_exact_byte_counts() {
    // 2 TiB + 3 bytes: past what a block holds inline.
    let huge = (2 << 40) + 3;
    let t = run(&[alloc(0x10, huge, S1), alloc(0x20, 100, S2)]);
    let p = proc_of(&t);
    assert_eq!(p.heap.spilled_len(), 1);
    assert_eq!(
        (p.outstanding_bytes, p.outstanding_allocations),
        (huge + 100, 2)
    );
    assert_eq!(held(p, S1, Kind::Heap), (huge, 1));
    assert_eq!(p.bytes_older_than(2), huge + 100);
    assert_eq!(p.counters.allocated_bytes, huge + 100);
    assert_eq!(p.est_bytes, (huge + 100) as f64);
    let t = run(&[alloc(0x10, huge, S1), alloc(0x20, 100, S2), free(0x10)]);
    let p = proc_of(&t);
    assert_eq!((p.outstanding_bytes, p.outstanding_allocations), (100, 1));
    assert_eq!(held(p, S1, Kind::Heap), (0, 0));
    assert_eq!(p.counters.freed_bytes, huge);
    assert_eq!(p.heap.spilled_len(), 0);
    // A huge block reallocated in place to a small one, and back.
    let t = run(&[
        alloc(0x10, huge, S1),
        Event::Realloc {
            meta: meta(3),
            old_addr: 0x10,
            addr: 0x10,
            size: 64,
            stack: S2,
        },
    ]);
    let p = proc_of(&t);
    assert_eq!((p.outstanding_bytes, p.counters.freed_bytes), (64, huge));
    assert_eq!(held(p, S2, Kind::Heap), (64, 1));
    assert_eq!(p.heap.spilled_len(), 0);
}

/// The sampling weight as memtrace computed and stored it (as an f32 in
/// every block) before blocks stopped storing it.
fn stored_weight(size: u64, sample_bytes: u64) -> f32 {
    if sample_bytes == 0 {
        return 1.0;
    }
    let p = -(-(size.max(1) as f64) / sample_bytes as f64).exp_m1();
    (if p > 0.0 { 1.0 / p } else { 1.0 }) as f32
}

#[test]
fn sampling_weights_and_estimates_unchanged() {
    const N: u64 = 512 * 1024;
    let sizes = [
        0,
        1,
        16,
        1000,
        4096,
        100_000,
        N,
        3 * N,
        1 << 30,
        (1 << 40) + 1,
    ];
    for n in [0, 1, 4096, N] {
        let mut p = Process::new(P, 0);
        p.sample_bytes = n;
        for s in sizes {
            // Bit for bit what was stored, and the f64 it was computed as.
            assert_eq!(p.weight(s) as f32, stored_weight(s, n), "size {s}, N {n}");
        }
    }
    let mut t = Tracker::new();
    t.set_sample_bytes(N);
    for (i, &s) in sizes.iter().enumerate() {
        t.on_event(&alloc(0x1000 * (i as u64 + 1), s, S1));
    }
    // Estimates as the stored weights gave them.
    let mut est_bytes = 0.0;
    let mut est_allocs = 0.0;
    for &s in &sizes {
        let w = f64::from(stored_weight(s, N));
        est_bytes += s as f64 * w;
        est_allocs += w;
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    let p = proc_of(&t);
    assert!(
        close(p.est_bytes, est_bytes),
        "{} vs {est_bytes}",
        p.est_bytes
    );
    assert!(close(p.est_allocations, est_allocs));
    // Freeing takes back what allocating added.
    for i in 0..sizes.len() {
        t.on_event(&free(0x1000 * (i as u64 + 1)));
    }
    let p = proc_of(&t);
    assert!(p.est_bytes.abs() < 1e-3 && p.est_allocations.abs() < 1e-9);
    assert_eq!(p.outstanding_bytes, 0);
}
