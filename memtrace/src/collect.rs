//! The live data path: ring buffer → decode → tracker, plus the kernel-side
//! maps the userspace reads (stacks, loss counters).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf, StackTraceMap},
};
use memtrace_common::{Counter, MAP_COUNTERS, MAP_EVENTS, MAP_STACK_SEL, MAP_STACKS, MAP_STACKS_B};

use crate::{
    decode::{self, Event, SECOND_MAP},
    stacks::Stacks,
    tracker::Tracker,
};

/// The errno a stack gets when its kernel id could not be read.
const ENOENT: i32 = -2;
/// Stack maps are rotated at most this often, when captures fail...
const ROTATE_AFTER_FAILURES: Duration = Duration::from_secs(2);
/// ...and at least this often, so they never fill up.
const ROTATE_EVERY: Duration = Duration::from_secs(60);

/// Counters kept by the eBPF programs, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ring_full: u64,
    pub inflight_full: u64,
    pub stack_fail: u64,
    pub return_without_entry: u64,
    pub read_fail: u64,
    pub sampled_full: u64,
}

impl KernelCounters {
    /// Events lost on the way to userspace.
    pub fn lost(&self) -> u64 {
        self.ring_full + self.inflight_full + self.read_fail + self.sampled_full
    }
}

/// The kernel's two stack maps, used in turns: epoch `e` captures into map
/// `e % 2`. Rotating clears the idle map (whose epoch ended long enough
/// ago that all its events were drained) and switches to it.
struct KernelStacks {
    maps: [StackTraceMap<MapData>; 2],
    sel: Array<MapData, u32>,
    epoch: u64,
    rotated: Instant,
    fails_at_rotation: u64,
    /// (epoch, kernel id) → interned stack id.
    known: HashMap<(u64, u32), i32>,
}

impl KernelStacks {
    /// The interned id of kernel stack `raw` (a decoded id, with
    /// `SECOND_MAP` set for the second map).
    fn translate(&mut self, raw: i32, stacks: &mut Stacks) -> i32 {
        let second = raw & SECOND_MAP != 0;
        let kid = (raw & !SECOND_MAP) as u32;
        let map = usize::from(second);
        let epoch = if map as u64 == self.epoch % 2 {
            self.epoch
        } else {
            self.epoch - 1
        };
        if let Some(&id) = self.known.get(&(epoch, kid)) {
            return id;
        }
        let id = match self.maps[map].get(&kid, 0) {
            Ok(st) => stacks.intern(st.frames().iter().map(|f| f.ip).collect()),
            Err(_) => {
                stacks.fetch_failures += 1;
                ENOENT
            }
        };
        self.known.insert((epoch, kid), id);
        id
    }

    /// Switch maps when captures fail (or now and then).
    fn maybe_rotate(&mut self, stack_fails: u64) {
        let age = self.rotated.elapsed();
        let failing = stack_fails > self.fails_at_rotation;
        if !(age >= ROTATE_EVERY || (failing && age >= ROTATE_AFTER_FAILURES)) {
            return;
        }
        let next = self.epoch + 1;
        let idle = (next % 2) as usize;
        let ids: Vec<u32> = self.maps[idle].stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = self.maps[idle].remove(&id);
        }
        let ended = self.epoch.saturating_sub(1);
        self.known.retain(|&(e, _), _| e != ended);
        if self.sel.set(0, idle as u32, 0).is_ok() {
            self.epoch = next;
        }
        self.rotated = Instant::now();
        self.fails_at_rotation = stack_fails;
    }
}

pub struct Collector {
    ring: RingBuf<MapData>,
    stack_map: KernelStacks,
    counters: PerCpuArray<MapData, u64>,
    pub tracker: Tracker,
    pub stacks: Stacks,
    /// Per process image (pid, first event's time): how many of its stacks
    /// are normalized.
    normalized: HashMap<(u32, u64), usize>,
    /// Processes with allocations since the last `resolve_new_stacks`.
    touched: HashSet<u32>,
    /// Processes in which a thread other than the leader called exec since
    /// the last `take_thread_execs` (PID-scoped probes must be re-attached).
    thread_execs: Vec<u32>,
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("eBPF map {name} missing"))?;
    T::try_from(map).with_context(|| format!("eBPF map {name} has an unexpected type"))
}

impl Collector {
    pub fn new(ebpf: &mut Ebpf, tracker: Tracker) -> Result<Self> {
        Ok(Self {
            ring: take(ebpf, MAP_EVENTS)?,
            stack_map: KernelStacks {
                maps: [take(ebpf, MAP_STACKS)?, take(ebpf, MAP_STACKS_B)?],
                sel: take(ebpf, MAP_STACK_SEL)?,
                // Epoch `e` uses map `e % 2`, and the kernel starts on map
                // 0: start at 2 so the previous epoch (1, map 1, where
                // collisions fall back to) is never confused with this one.
                epoch: 2,
                rotated: Instant::now(),
                fails_at_rotation: 0,
                known: HashMap::new(),
            },
            counters: take(ebpf, MAP_COUNTERS)?,
            tracker,
            stacks: Stacks::default(),
            normalized: HashMap::new(),
            thread_execs: Vec::new(),
            touched: HashSet::new(),
        })
    }

    /// Consume every record in the ring. Returns how many were read.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            match decode::decode(&item) {
                Ok(mut ev) => {
                    if let Some(st) = ev.stack_mut() {
                        if st.id >= 0 {
                            st.id = self.stack_map.translate(st.id, &mut self.stacks);
                        }
                        self.touched.insert(ev.meta().pid);
                    }
                    if let Event::Exec { meta, old_tid, .. } = ev {
                        self.stacks.forget_process(meta.pid);
                        if old_tid != 0 && old_tid != meta.pid {
                            self.thread_execs.push(meta.pid);
                        }
                    }
                    self.tracker.on_event(&ev);
                }
                Err(_) => self.tracker.on_decode_error(),
            }
        }
        n
    }

    /// Read the frames of stacks first seen since the last call and
    /// normalize them against their (live) processes' maps.
    pub fn resolve_new_stacks(&mut self) {
        let Self {
            tracker,
            stacks,
            normalized,
            touched,
            ..
        } = self;
        // Only processes with allocations since the last call; exited ones
        // too: their last stacks may have arrived in the same drain as their
        // exit, and normalize against the last maps seen.
        for pid in touched.drain() {
            let Some(p) = tracker.get(pid) else {
                continue;
            };
            let done = normalized.entry((p.pid, p.first_ns)).or_insert(0);
            if *done >= p.stacks.len() {
                continue;
            }
            let new = &p.stacks[*done..];
            stacks.normalize(p.pid, new.iter().map(|s| s.stack));
            *done = p.stacks.len();
        }
    }

    /// Forget what was kept for processes the tracker no longer holds
    /// (normalization progress, maps snapshots, normalized frames), so a
    /// long dashboard session does not grow with every process that ever
    /// ran, and a reused PID starts clean.
    pub fn prune(&mut self) {
        let held: std::collections::HashSet<(u32, u64)> = self
            .tracker
            .live()
            .chain(self.tracker.exited())
            .map(|p| (p.pid, p.first_ns))
            .collect();
        let pids: std::collections::HashSet<u32> = held.iter().map(|&(pid, _)| pid).collect();
        self.normalized.retain(|k, _| held.contains(k));
        self.stacks.retain_processes(|pid| pids.contains(&pid));
        let used: HashSet<i32> = self
            .tracker
            .live()
            .chain(self.tracker.exited())
            .flat_map(|p| p.stacks.iter().map(|s| s.stack.id))
            .collect();
        self.stacks.retain_stacks(|id| used.contains(&id));
        self.stack_map.known.retain(|_, id| used.contains(id));
    }

    /// Rotate the kernel's stack maps when captures fail (full map or
    /// collisions), or now and then.
    pub fn maintain(&mut self) {
        // Events may name stacks in the idle map (captured there on a
        // collision): take them before that map is cleared.
        self.drain();
        let fails = self.kernel_counters().stack_fail;
        self.stack_map.maybe_rotate(fails);
    }

    pub fn take_thread_execs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.thread_execs)
    }

    pub fn kernel_counters(&self) -> KernelCounters {
        let get = |c: Counter| -> u64 {
            self.counters
                .get(&(c as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            ring_full: get(Counter::RingFull),
            inflight_full: get(Counter::InflightFull),
            stack_fail: get(Counter::StackFail),
            return_without_entry: get(Counter::ReturnWithoutEntry),
            read_fail: get(Counter::ReadFail),
            sampled_full: get(Counter::SampledFull),
        }
    }
}
