//! The live data path: ring buffer → decode → tracker (stacks interned on
//! the way), plus the loss counters the eBPF programs keep.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
};
use memtrace_common::{Counter, MAP_COUNTERS, MAP_EVENTS};

use crate::{
    decode::{self, Event},
    fastmap::FastSet,
    ringbuf::Ring,
    sampled::SampledSet,
    stacks::Stacks,
    tracker::Tracker,
};

/// Counters kept by the eBPF programs, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ring_full: u64,
    pub inflight_full: u64,
    /// Stacks cut at `STACK_DEPTH` frames.
    pub stack_truncated: u64,
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

pub struct Collector {
    ring: Ring,
    /// The ring buffer map, kept open while `ring` maps it.
    _ring_map: MapData,
    counters: PerCpuArray<MapData, u64>,
    pub tracker: Tracker,
    pub stacks: Stacks,
    /// Per process image (pid, first event's time): how many of its stacks
    /// are normalized.
    normalized: HashMap<(u32, u64), usize>,
    /// Processes with allocations since the last `resolve_new_stacks`.
    touched: FastSet<u32>,
    /// Processes in which a thread other than the leader called exec since
    /// the last `take_thread_execs` (PID-scoped probes must be re-attached).
    thread_execs: Vec<u32>,
    /// The clock for records the kernel does not timestamp (releases, and
    /// most allocations).
    clock: Clock,
    /// Sampling: the kernel's set of live sampled blocks.
    sampled: Option<SampledSet>,
}

/// When an untimestamped record happened: after the last timestamped record
/// before it in the ring (the ring is in reservation order), and after the
/// drain before the one that read it. Under load the first bound is
/// microseconds away; when quiet, the second is one drain interval away.
#[derive(Default)]
struct Clock {
    last_event_ns: u64,
    previous_drain_ns: u64,
    this_drain_ns: u64,
}

impl Clock {
    fn start_drain(&mut self, now_ns: u64) {
        self.previous_drain_ns = self.this_drain_ns;
        self.this_drain_ns = now_ns;
    }

    /// Fill in `ts` if the kernel left it 0, and advance.
    fn stamp(&mut self, ts: &mut u64) {
        if *ts == 0 {
            *ts = self.last_event_ns.max(self.previous_drain_ns);
        } else {
            self.last_event_ns = self.last_event_ns.max(*ts);
        }
    }
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

/// The events ring buffer map, and a batching reader of it.
fn ring(ebpf: &mut Ebpf) -> Result<(Ring, MapData)> {
    let Some(Map::RingBuf(data)) = ebpf.take_map(MAP_EVENTS) else {
        return Err(anyhow!(
            "eBPF map {MAP_EVENTS} missing or not a ring buffer"
        ));
    };
    let size = data
        .info()
        .with_context(|| format!("eBPF map {MAP_EVENTS}: reading its size"))?
        .max_entries() as usize;
    let ring = Ring::new(data.fd().as_fd(), size)?;
    Ok((ring, data))
}

impl Collector {
    pub fn new(ebpf: &mut Ebpf, tracker: Tracker) -> Result<Self> {
        let (ring, ring_map) = ring(ebpf)?;
        let sampled = if tracker.sample_bytes() != 0 {
            Some(SampledSet::new(ebpf)?)
        } else {
            None
        };
        Ok(Self {
            sampled,
            ring,
            _ring_map: ring_map,
            counters: take(ebpf, MAP_COUNTERS)?,
            tracker,
            stacks: Stacks::default(),
            normalized: HashMap::new(),
            thread_execs: Vec::new(),
            touched: FastSet::default(),
            clock: Clock::default(),
        })
    }

    /// Consume every record in the ring. Returns how many were read.
    pub fn drain(&mut self) -> usize {
        let Self {
            ring,
            tracker,
            stacks,
            touched,
            thread_execs,
            clock,
            sampled,
            ..
        } = self;
        clock.start_drain(crate::system::monotonic_ns());
        let n = ring.drain(|item| match decode::decode(item) {
            Ok(d) => {
                let mut ev = d.event;
                clock.stamp(&mut ev.meta_mut().ts_ns);
                if let Some(st) = ev.stack_mut() {
                    if !d.frames.is_empty() {
                        st.id = stacks.intern_frames(d.frames.iter());
                    }
                    touched.insert(ev.meta().pid);
                }
                if let Event::Exec { meta, old_tid, .. } = ev {
                    stacks.forget_process(meta.pid);
                    if old_tid != 0 && old_tid != meta.pid {
                        thread_execs.push(meta.pid);
                    }
                }
                tracker.on_event(&ev);
            }
            Err(_) => tracker.on_decode_error(),
        });
        if let Some(set) = sampled {
            for (pid, addr) in tracker.take_dead_sampled() {
                set.forget(pid, addr);
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
            stack_truncated: get(Counter::StackTruncated),
            return_without_entry: get(Counter::ReturnWithoutEntry),
            read_fail: get(Counter::ReadFail),
            sampled_full: get(Counter::SampledFull),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;

    #[test]
    fn releases_are_placed_after_what_preceded_them() {
        let mut c = Clock::default();
        c.start_drain(1_000);
        c.start_drain(3_000);
        // A timestamped record, then a release: right after it.
        let mut t = 2_500;
        c.stamp(&mut t);
        assert_eq!(t, 2_500);
        let mut r = 0;
        c.stamp(&mut r);
        assert_eq!(r, 2_500);
        // A quiet ring: the release happened after the previous drain.
        c.start_drain(9_000);
        c.start_drain(11_000);
        let mut r = 0;
        c.stamp(&mut r);
        assert_eq!(r, 9_000);
    }
}
