//! One traced process: its outstanding heap blocks and mmap regions, per
//! stack aggregates, counters and histograms.

use crate::fastmap::FastMap;

use hdrhistogram::Histogram;

use super::heap::{Entry, Heap};
use super::mmap::Regions;
use crate::decode::StackRef;

/// Heap block or anonymous mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Heap,
    Mmap,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Heap => "heap",
            Kind::Mmap => "mmap",
        }
    }
}

/// What one allocating stack still holds, and has done.
#[derive(Clone, Debug, PartialEq)]
pub struct StackAgg {
    pub stack: StackRef,
    pub kind: Kind,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub total_allocations: u64,
    pub total_bytes: u64,
    /// Estimated outstanding bytes and allocations (equal to the counted
    /// ones unless sampling).
    pub est_bytes: f64,
    pub est_allocations: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounters {
    /// Allocations seen (heap and mmap, realloc included).
    pub allocations: u64,
    pub allocated_bytes: u64,
    /// Releases of tracked blocks (free, realloc's old block, munmap of a
    /// whole tracked region).
    pub frees: u64,
    pub freed_bytes: u64,
    /// Frees (and reallocs) of addresses never seen allocated.
    pub untracked_frees: u64,
    /// Allocations at an address still held: the free in between was lost.
    pub missed_frees: u64,
    /// Allocations not tracked because the tracker's bound was reached.
    pub dropped: u64,
}

pub struct Process {
    pub pid: u32,
    /// Number of execs seen (0 for the image memtrace first saw).
    pub generation: u32,
    pub first_ns: u64,
    pub last_ns: u64,
    pub exited_ns: Option<u64>,
    /// Command name, when the kernel told it (exec, exit).
    pub comm: Option<String>,
    pub(super) heap: Heap,
    pub(super) regions: Regions,
    pub stacks: Vec<StackAgg>,
    stack_index: FastMap<(StackRef, Kind), u32>,
    pub counters: ProcCounters,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Estimated outstanding bytes and allocations (sampling).
    pub est_bytes: f64,
    pub est_allocations: f64,
    /// Mean bytes between samples (0: not sampling). Set before the first
    /// event and never changed: heap blocks' weights are computed from it
    /// (and their size) both when they are allocated and when freed.
    pub sample_bytes: u64,
    /// Sizes of every allocation, bytes.
    pub sizes: Histogram<u64>,
    /// Lifetimes of freed blocks, microseconds.
    pub lifetimes_us: Histogram<u64>,
    /// Whether the tracker has room for new allocations (set by it before
    /// each event).
    pub(super) room: bool,
}

fn histogram() -> Histogram<u64> {
    // Two significant figures, auto-resizing: a few KiB per process.
    let mut h = Histogram::new(2).unwrap_or_else(|_| unreachable_histogram());
    h.auto(true);
    h
}

#[cold]
fn unreachable_histogram() -> Histogram<u64> {
    // Histogram::new only fails for sigfig > 5.
    Histogram::new_with_bounds(1, 2, 0).unwrap_or_else(|_| std::process::abort())
}

impl Process {
    pub fn new(pid: u32, ts: u64) -> Self {
        Self {
            pid,
            generation: 0,
            first_ns: ts,
            last_ns: ts,
            exited_ns: None,
            comm: None,
            heap: Heap::default(),
            regions: Regions::default(),
            stacks: Vec::new(),
            stack_index: FastMap::default(),
            counters: ProcCounters::default(),
            outstanding_bytes: 0,
            outstanding_allocations: 0,
            est_bytes: 0.0,
            est_allocations: 0.0,
            sample_bytes: 0,
            sizes: histogram(),
            lifetimes_us: histogram(),
            room: true,
        }
    }

    /// Outstanding entries held: heap blocks and mapping pieces.
    pub fn entries(&self) -> usize {
        self.heap.len() + self.regions.len()
    }

    pub(super) fn stack_idx(&mut self, stack: StackRef, kind: Kind) -> u32 {
        if let Some(&i) = self.stack_index.get(&(stack, kind)) {
            return i;
        }
        let i = self.stacks.len() as u32;
        self.stacks.push(StackAgg {
            stack,
            kind,
            outstanding_bytes: 0,
            outstanding_allocations: 0,
            total_allocations: 0,
            total_bytes: 0,
            est_bytes: 0.0,
            est_allocations: 0.0,
        });
        self.stack_index.insert((stack, kind), i);
        i
    }

    /// How many allocations of `size` bytes one sampled allocation stands
    /// for: the inverse of its probability 1 - exp(-size/N).
    pub fn weight(&self, size: u64) -> f64 {
        if self.sample_bytes == 0 {
            return 1.0;
        }
        let p = -(-(size.max(1) as f64) / self.sample_bytes as f64).exp_m1();
        if p > 0.0 { 1.0 / p } else { 1.0 }
    }

    /// Account a new outstanding allocation of `bytes` to stack `idx`.
    pub(super) fn add(&mut self, idx: u32, bytes: u64, new_allocation: bool, weight: f64) {
        let s = &mut self.stacks[idx as usize];
        s.outstanding_bytes += bytes;
        self.outstanding_bytes += bytes;
        s.est_bytes += bytes as f64 * weight;
        self.est_bytes += bytes as f64 * weight;
        if new_allocation {
            s.est_allocations += weight;
            self.est_allocations += weight;
            s.outstanding_allocations += 1;
            s.total_allocations += 1;
            s.total_bytes += bytes;
            self.outstanding_allocations += 1;
            self.counters.allocations += 1;
            self.counters.allocated_bytes += bytes;
            let _ = self.sizes.record(bytes);
        }
    }

    /// Account the release of `bytes` from stack `idx`; `last_piece` when
    /// the allocation is gone entirely.
    pub(super) fn sub(&mut self, idx: u32, bytes: u64, last_piece: bool, weight: f64) {
        let s = &mut self.stacks[idx as usize];
        s.outstanding_bytes = s.outstanding_bytes.saturating_sub(bytes);
        self.outstanding_bytes = self.outstanding_bytes.saturating_sub(bytes);
        s.est_bytes = (s.est_bytes - bytes as f64 * weight).max(0.0);
        self.est_bytes = (self.est_bytes - bytes as f64 * weight).max(0.0);
        self.counters.freed_bytes += bytes;
        if last_piece {
            s.est_allocations = (s.est_allocations - weight).max(0.0);
            self.est_allocations = (self.est_allocations - weight).max(0.0);
            s.outstanding_allocations = s.outstanding_allocations.saturating_sub(1);
            self.outstanding_allocations = self.outstanding_allocations.saturating_sub(1);
            self.counters.frees += 1;
        }
    }

    fn touch(&mut self, ts: u64) {
        self.last_ns = self.last_ns.max(ts);
    }

    pub fn alloc(&mut self, addr: u64, size: u64, stack: StackRef, ts: u64) {
        self.touch(ts);
        if let Some(old) = self.heap.remove(addr) {
            self.counters.missed_frees += 1;
            self.sub(old.stack, old.size, true, self.weight(old.size));
        }
        if !self.room {
            self.counters.dropped += 1;
            return;
        }
        let idx = self.stack_idx(stack, Kind::Heap);
        let weight = self.weight(size);
        self.add(idx, size, true, weight);
        self.heap.insert(
            addr,
            Entry {
                size,
                stack: idx,
                ts_ns: ts,
            },
        );
    }

    pub fn free(&mut self, addr: u64, ts: u64) {
        self.touch(ts);
        match self.heap.remove(addr) {
            Some(b) => {
                self.sub(b.stack, b.size, true, self.weight(b.size));
                let _ = self.lifetimes_us.record(ts.saturating_sub(b.ts_ns) / 1_000);
            }
            None => self.counters.untracked_frees += 1,
        }
    }

    pub fn realloc(&mut self, old: u64, addr: u64, size: u64, stack: StackRef, ts: u64) {
        self.free(old, ts);
        self.alloc(addr, size, stack, ts);
    }

    /// Age of the oldest outstanding allocation of each stack, as the
    /// minimum timestamp per stack index.
    pub fn oldest_per_stack(&self) -> Vec<Option<u64>> {
        let mut v = vec![None::<u64>; self.stacks.len()];
        let mut note = |idx: u32, ts: u64| {
            let slot = &mut v[idx as usize];
            *slot = Some(slot.map_or(ts, |t| t.min(ts)));
        };
        for b in self.heap.iter() {
            note(b.stack, b.ts_ns);
        }
        for r in self.regions.iter() {
            note(r.stack, r.ts_ns);
        }
        v
    }

    /// Outstanding bytes allocated before `ts`.
    pub fn bytes_older_than(&self, ts: u64) -> u64 {
        let heap = self.heap.iter().filter(|b| b.ts_ns < ts).map(|b| b.size);
        let maps = self
            .regions
            .iter()
            .filter(|r| r.ts_ns < ts)
            .map(|r| r.bytes());
        heap.chain(maps).sum()
    }

    /// Timestamp of the oldest outstanding allocation.
    pub fn oldest_ns(&self) -> Option<u64> {
        let heap = self.heap.iter().map(|b| b.ts_ns);
        let maps = self.regions.iter().map(|r| r.ts_ns);
        heap.chain(maps).min()
    }
}
