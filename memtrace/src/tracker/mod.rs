//! The tracker: a pure state machine from decoded events to per-process
//! tables of outstanding allocations. No I/O, no clocks: time comes from the
//! events, so unit tests drive it with plain event vectors.
//!
//! Rules (each has a unit test below):
//! - exec starts a process afresh: what the old image held is dropped;
//! - the leader's exit freezes the process's final state for the report;
//! - realloc is a free of the old block and an allocation of the new one,
//!   owned by the realloc call site; a realloc of an unknown block counts an
//!   untracked free;
//! - a free of an address never seen allocated counts `untracked_frees`;
//! - an allocation at an address still held means its free was lost: the old
//!   block is dropped and counted in `missed_frees`;
//! - anonymous mmap regions are tracked by page range; munmap may cut any
//!   part of them; mremap moves what it covers, keeping the original stack.

mod heap;
mod mmap;
mod process;

use crate::fastmap::FastMap;

pub use process::{Kind, ProcCounters, Process};

use crate::decode::Event;

/// Global counters, over all processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub decode_errors: u64,
    /// Events of processes not tracked because `Limits::processes` was
    /// reached.
    pub dropped_process_events: u64,
}

/// Bounds on what the tracker holds, so memtrace's own memory stays bounded
/// (a heap block takes 25 bytes of table, 30 to 60 with the tables' load,
/// ~60 bytes of peak RSS at a million blocks with their growth and the
/// allocator's slack; a mapping piece ~100; plus a few KiB per process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Outstanding allocations (heap blocks and mapping pieces) tracked over
    /// all processes; past it, new allocations are counted as dropped.
    pub allocations: usize,
    /// Processes (live and recently exited) tracked.
    pub processes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            allocations: 4_000_000,
            processes: 20_000,
        }
    }
}

#[derive(Default)]
pub struct Tracker {
    live: FastMap<u32, Process>,
    exited: Vec<Process>,
    pub totals: Totals,
    /// When set, only these processes are tracked (sorted).
    filter: Option<Vec<u32>>,
    limits: Limits,
    /// Outstanding entries held over all processes (live and exited).
    held: usize,
    /// Mean bytes between samples (0: every allocation is traced).
    sample_bytes: u64,
    /// Sampling: heap blocks of images that exec replaced, by process, kept
    /// until the process exits (the kernel's sampled set still holds them,
    /// and may see the new image reuse their addresses meanwhile).
    replaced: FastMap<u32, Vec<u64>>,
    /// Sampling: (process, address) of the heap blocks of processes that
    /// exited, for the kernel's sampled set to forget (`take_dead_sampled`).
    dead_sampled: Vec<(u32, u64)>,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Track only `pids` (events of other processes are ignored).
    pub fn with_filter(mut pids: Vec<u32>) -> Self {
        pids.sort_unstable();
        pids.dedup();
        Self {
            filter: Some(pids),
            ..Self::default()
        }
    }

    /// With a filter, track `pid` too (a child process being followed).
    pub fn watch(&mut self, pid: u32) {
        if let Some(f) = &mut self.filter
            && let Err(i) = f.binary_search(&pid)
        {
            f.insert(i, pid);
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Allocations are sampled every `n` bytes on average: weigh each by
    /// the inverse of its probability of being sampled.
    pub fn set_sample_bytes(&mut self, n: u64) {
        self.sample_bytes = n;
    }

    pub fn sample_bytes(&self) -> u64 {
        self.sample_bytes
    }

    /// Outstanding entries held over all processes.
    pub fn held(&self) -> usize {
        self.held
    }

    fn wanted(&self, pid: u32) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| f.binary_search(&pid).is_ok())
    }

    pub fn on_decode_error(&mut self) {
        self.totals.decode_errors += 1;
    }

    fn process(&mut self, pid: u32, ts: u64) -> &mut Process {
        let n = self.sample_bytes;
        self.live.entry(pid).or_insert_with(|| {
            let mut p = Process::new(pid, ts);
            p.sample_bytes = n;
            p
        })
    }

    pub fn on_event(&mut self, ev: &Event) {
        self.totals.events += 1;
        let meta = *ev.meta();
        if !self.wanted(meta.pid) {
            return;
        }
        let creates = matches!(
            ev,
            Event::Alloc { .. } | Event::Realloc { .. } | Event::Mmap { .. } | Event::Free { .. }
        );
        if creates
            && !self.live.contains_key(&meta.pid)
            && self.live.len() + self.exited.len() >= self.limits.processes
        {
            self.totals.dropped_process_events += 1;
            return;
        }
        let before = self.live.get(&meta.pid).map_or(0, Process::entries);
        self.apply(ev);
        // An exited process keeps its table (for the report) until dropped.
        let after = match self.live.get(&meta.pid) {
            Some(p) => p.entries(),
            None => self
                .exited
                .last()
                .filter(|p| p.pid == meta.pid && matches!(ev, Event::Exit { .. }))
                .map_or(0, Process::entries),
        };
        self.held = (self.held + after).saturating_sub(before);
    }

    fn apply(&mut self, ev: &Event) {
        let meta = *ev.meta();
        let ts = meta.ts_ns;
        let room = self.held < self.limits.allocations;
        match *ev {
            Event::Alloc {
                addr, size, stack, ..
            } => {
                let p = self.process(meta.pid, ts);
                p.room = room;
                p.alloc(addr, size, stack, ts);
            }
            Event::Free { addr, .. } => self.process(meta.pid, ts).free(addr, ts),
            Event::Realloc {
                old_addr,
                addr,
                size,
                stack,
                ..
            } => {
                let p = self.process(meta.pid, ts);
                p.room = room;
                p.realloc(old_addr, addr, size, stack, ts);
            }
            Event::Mmap {
                addr,
                len,
                flags,
                stack,
                ..
            } => {
                let p = self.process(meta.pid, ts);
                p.room = room;
                p.mmap(addr, len, flags, stack, ts);
            }
            Event::Munmap { addr, len, .. } => {
                // A process we know nothing of has no regions to cut.
                if let Some(p) = self.live.get_mut(&meta.pid) {
                    p.munmap(addr, len);
                }
            }
            Event::Mremap {
                old_addr,
                old_len,
                addr,
                len,
                stack,
                ..
            } => {
                if let Some(p) = self.live.get_mut(&meta.pid) {
                    p.mremap(mmap::Mremap {
                        old: old_addr,
                        old_len,
                        new: addr,
                        new_len: len,
                        stack,
                        ts,
                    });
                }
            }
            Event::Exec { comm, .. } => {
                self.on_exec(meta.pid, ts);
                if let Some(p) = self.live.get_mut(&meta.pid) {
                    p.comm = comm.text();
                }
            }
            Event::Exit { comm, .. } => {
                if let Some(p) = self.live.get_mut(&meta.pid)
                    && p.comm.is_none()
                {
                    p.comm = comm.text();
                }
                self.on_exit(meta.pid, ts);
            }
        }
    }

    /// The process replaced its image: start it afresh. (`on_event`
    /// accounts the entries dropped.)
    fn on_exec(&mut self, pid: u32, ts: u64) {
        let old = self.live.remove(&pid);
        if self.sample_bytes != 0
            && let Some(p) = &old
        {
            self.replaced.entry(pid).or_default().extend(p.heap.addrs());
        }
        let generation = old.map_or(0, |p| p.generation + 1);
        let mut fresh = Process::new(pid, ts);
        fresh.generation = generation;
        fresh.sample_bytes = self.sample_bytes;
        self.live.insert(pid, fresh);
    }

    /// The process exited: freeze its final state.
    pub fn on_exit(&mut self, pid: u32, ts: u64) {
        if self.sample_bytes != 0 {
            let replaced = self.replaced.remove(&pid).unwrap_or_default();
            let current = self.live.get(&pid).into_iter().flat_map(|p| p.heap.addrs());
            self.dead_sampled
                .extend(replaced.into_iter().chain(current).map(|a| (pid, a)));
        }
        if let Some(mut p) = self.live.remove(&pid) {
            p.exited_ns = Some(ts);
            self.exited.push(p);
        }
    }

    /// Sampling: the (process, address) of the sampled heap blocks of
    /// processes that exited since the last call.
    pub fn take_dead_sampled(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.dead_sampled)
    }

    pub fn live(&self) -> impl Iterator<Item = &Process> {
        self.live.values()
    }

    pub fn exited(&self) -> &[Process] {
        &self.exited
    }

    /// Drop exited processes for which `keep` returns false.
    pub fn retain_exited(&mut self, mut keep: impl FnMut(&Process) -> bool) {
        let mut freed = 0;
        self.exited.retain(|p| {
            let k = keep(p);
            if !k {
                freed += p.entries();
            }
            k
        });
        self.held = self.held.saturating_sub(freed);
    }

    /// The latest state of `pid`: live, else its most recent exited image.
    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.live
            .get(&pid)
            .or_else(|| self.exited.iter().rev().find(|p| p.pid == pid))
    }
}

#[cfg(test)]
mod tests;
