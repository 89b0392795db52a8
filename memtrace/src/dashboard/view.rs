//! From the tracker to what the dashboard shows: one `model::Snapshot` per
//! refresh, with per-process histories (growth, score), RSS and names read
//! from /proc, and the `model::Detail` of the open process.

use std::{collections::HashMap, time::Duration};

use hdrhistogram::Histogram;

use super::{
    model::{Detail, FrameView, Header, Percentiles, Row, RowKey, Snapshot, StackView},
    score::{History, Sample, leak_score},
    worker::Worker,
};
use crate::{
    collect::{Collector, KernelCounters},
    procmaps,
    report::{self, Input},
    tracker::Process,
};

/// How long an exited process stays in the table.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How many stacks the process view shows.
const DETAIL_STACKS: usize = 30;

pub struct View {
    origin_ns: u64,
    since: String,
    window: Duration,
    scope: String,
    histories: HashMap<RowKey, History>,
    names: HashMap<RowKey, String>,
    last_events: Option<(u64, u64)>,
    cpu: CpuMeter,
}

pub fn key_of(p: &Process) -> RowKey {
    RowKey {
        pid: p.pid,
        first_ns: p.first_ns,
    }
}

impl View {
    pub fn new(origin_ns: u64, window: Duration, scope: String) -> Self {
        Self {
            origin_ns,
            since: wall_clock(),
            window,
            scope,
            histories: HashMap::new(),
            names: HashMap::new(),
            last_events: None,
            cpu: CpuMeter::default(),
        }
    }

    /// Read the tracker (and /proc) into a new snapshot.
    pub fn refresh(&mut self, col: &mut Collector, kc: &KernelCounters, now_ns: u64) -> Snapshot {
        let grace = EXIT_GRACE.as_nanos() as u64;
        let window = self.window.as_nanos() as u64;
        // Processes that vanished without an exit event (it was lost). A
        // process submits all its events before it is gone from /proc, so
        // the ring is drained first: its last frees and its exit event may
        // still be there, and would otherwise land in a fresh row.
        let gone: Vec<u32> = col
            .tracker
            .live()
            .map(|p| p.pid)
            .filter(|&pid| !procmaps::alive(pid))
            .collect();
        if !gone.is_empty() && col.drain() > 0 {
            col.resolve_new_stacks();
        }
        for pid in gone {
            // Still without its exit event, and not a new process that
            // took the pid meanwhile.
            if col.tracker.live().any(|p| p.pid == pid) && !procmaps::alive(pid) {
                col.tracker.on_exit(pid, now_ns);
            }
        }
        col.tracker.retain_exited(|p| {
            p.exited_ns
                .is_some_and(|t| now_ns.saturating_sub(t) < grace)
        });
        col.prune();

        let mut rows = Vec::new();
        let mut untracked = 0;
        let mut dropped = col.tracker.totals.dropped_process_events;
        for p in col.tracker.live().chain(col.tracker.exited()) {
            let key = key_of(p);
            untracked += p.counters.untracked_frees;
            dropped += p.counters.dropped;
            let (bytes, allocs) = report::shown(
                p.sample_bytes,
                p.outstanding_bytes,
                p.outstanding_allocations,
                p.est_bytes,
                p.est_allocations,
            );
            let h = self.histories.entry(key).or_default();
            if p.exited_ns.is_none() || h.last().is_none() {
                h.push(Sample {
                    t_ns: now_ns,
                    outstanding_bytes: bytes,
                    allocations: p.counters.allocations,
                    frees: p.counters.frees,
                });
            }
            let exited = p.exited_ns.is_some();
            let name = self.names.entry(key).or_insert_with(|| {
                procmaps::comm(p.pid)
                    .or_else(|| p.comm.clone())
                    .unwrap_or_else(|| "?".into())
            });
            if name == "?"
                && let Some(c) = &p.comm
            {
                name.clone_from(c);
            }
            let growth = h.growth(window);
            let (allocs_per_s, frees_per_s) = h.rates(window);
            let old = p.bytes_older_than(now_ns.saturating_sub(window));
            rows.push(Row {
                key,
                pid: p.pid,
                comm: name.clone(),
                rss_bytes: if exited { None } else { rss(p.pid) },
                outstanding_bytes: bytes,
                outstanding_allocations: allocs,
                growth_bytes_per_s: growth,
                oldest_age: p
                    .oldest_ns()
                    .map(|t| Duration::from_nanos(now_ns.saturating_sub(t))),
                allocs_per_s,
                frees_per_s,
                // An exited process leaks no more: it keeps its row (marked)
                // for the grace period, not its rank.
                leak_score: if exited {
                    0.0
                } else {
                    leak_score(growth, h.steadiness(window), old)
                },
                exited,
            });
        }
        let keys: std::collections::HashSet<RowKey> = rows.iter().map(|r| r.key).collect();
        self.histories.retain(|k, _| keys.contains(k));
        self.names.retain(|k, _| keys.contains(k));

        let events = col.tracker.totals.events;
        let events_per_s = match self.last_events {
            Some((t, e)) if now_ns > t => (events - e) as f64 / ((now_ns - t) as f64 / 1e9),
            _ => 0.0,
        };
        self.last_events = Some((now_ns, events));
        let live = rows.iter().filter(|r| !r.exited);
        let header = Header {
            watching_for: Duration::from_nanos(now_ns.saturating_sub(self.origin_ns)),
            since: self.since.clone(),
            window: self.window,
            outstanding_bytes: live.clone().map(|r| r.outstanding_bytes).sum(),
            allocs_per_s: live.clone().map(|r| r.allocs_per_s).sum(),
            processes: live.count(),
            events_per_s,
            lost_events: kc.lost() + col.tracker.totals.decode_errors,
            untracked_frees: untracked,
            stack_failures: kc.stack_truncated,
            dropped,
            cpu_percent: self.cpu.percent(now_ns),
            scope: self.scope.clone(),
        };
        Snapshot { header, rows }
    }

    /// The process view of `key`, asking `worker` for missing symbols.
    pub fn detail(
        &self,
        col: &Collector,
        key: RowKey,
        worker: &mut Worker,
        now_ns: u64,
    ) -> Option<Detail> {
        let p = col
            .tracker
            .live()
            .chain(col.tracker.exited())
            .find(|p| key_of(p) == key)?;
        let input = report::input_of(p, &col.stacks, DETAIL_STACKS);
        worker.want(
            input
                .stacks
                .iter()
                .flat_map(|s| s.frames.iter().filter_map(|(_, fa)| fa.as_ref())),
        );
        let symbolizing = input
            .stacks
            .iter()
            .flat_map(|s| s.frames.iter().filter_map(|(_, fa)| fa.as_ref()))
            .any(|fa| worker.is_pending(fa));
        Some(Detail {
            key,
            comm: self.names.get(&key).cloned().unwrap_or_default(),
            exe: procmaps::exe(p.pid).filter(|_| p.exited_ns.is_none()),
            history: self
                .histories
                .get(&key)
                .map(|h| h.chart(self.origin_ns))
                .unwrap_or_default(),
            stacks: stack_views(&input, worker, now_ns),
            sizes: percentiles(&p.sizes, 1),
            lifetimes_ms: percentiles(&p.lifetimes_us, 1000),
            symbolizing,
        })
    }
}

fn stack_views(input: &Input, worker: &Worker, now_ns: u64) -> Vec<StackView> {
    let lookup = |fa: &crate::procmaps::FileAddr| worker.cache.get(fa).cloned();
    input
        .stacks
        .iter()
        .map(|st| StackView {
            kind: st.kind.as_str(),
            outstanding_bytes: st.outstanding_bytes,
            outstanding_allocations: st.outstanding_allocations,
            oldest_age: st
                .oldest_ns
                .map(|t| Duration::from_nanos(now_ns.saturating_sub(t))),
            frames: report::frames_of(st, &lookup)
                .into_iter()
                .map(|(ip, f)| FrameView {
                    function: f.function,
                    file: f.file,
                    line: f.line,
                    module: f.module,
                    ip,
                })
                .collect(),
        })
        .collect()
}

fn percentiles(h: &Histogram<u64>, div: u64) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.5) / div,
        p90: h.value_at_quantile(0.9) / div,
        p99: h.value_at_quantile(0.99) / div,
        max: h.max() / div,
    }
}

/// Resident set size of `pid`, from /proc/PID/statm.
fn rss(pid: u32) -> Option<u64> {
    let mut buf = [0u8; 128];
    let s = procmaps::read_small(pid, "statm", &mut buf)?;
    let s = std::str::from_utf8(s).ok()?;
    let pages: u64 = s.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

/// memtrace's own CPU use, from /proc/self/stat.
#[derive(Default)]
struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    fn percent(&mut self, now_ns: u64) -> f64 {
        let Some(ticks) = own_cpu_ticks() else {
            return 0.0;
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let pct = match self.last {
            Some((t, c)) if now_ns > t => {
                (ticks.saturating_sub(c)) as f64 / hz / ((now_ns - t) as f64 / 1e9) * 100.0
            }
            _ => 0.0,
        };
        self.last = Some((now_ns, ticks));
        pct
    }
}

fn own_cpu_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based); `after` starts at 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Local wall-clock time as HH:MM:SS.
fn wall_clock() -> String {
    // SAFETY: time/localtime_r fill plain structs we own.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}
