//! The leak report of one process: built from the tracker's state, the
//! normalized stacks and their symbols; rendered as text, JSON or folded
//! stacks.

mod folded;
pub mod text;

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    procmaps::FileAddr,
    stacks::Stacks,
    symbolize::{Symbol, Symbols, is_allocator_frame},
    tracker::{Kind, Process},
};

pub use folded::render as render_folded;
pub use text::render as render_text;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Folded,
}

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub pid: u32,
    /// For a child process followed with `--children`: the process that
    /// created it (absent in the command's own report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_pid: Option<u32>,
    pub comm: String,
    pub exe: String,
    pub exited: bool,
    /// How a launched process ended, when memtrace saw it (`report --
    /// CMD` and its followed children; null for `--pid`): its exit status,
    /// or the signal that killed it (e.g. "SIGSEGV").
    pub exit_code: Option<i32>,
    pub exit_signal: Option<String>,
    pub duration_ms: u64,
    pub summary: Summary,
    pub stacks: Vec<StackReport>,
    /// Mean bytes between samples when sampling (`--sample-bytes`), else
    /// null. When set, the heap stacks' outstanding bytes and allocations
    /// (and the totals) are unbiased estimates, the mapping stacks' are
    /// counts (mappings are never sampled); the other counters count the
    /// sampled allocations.
    pub sample_bytes: Option<u64>,
    /// Things the user should know about this report (attach notes, files
    /// that could not be symbolized, ...).
    pub notes: Vec<String>,
    /// With `report -- CMD --children`: a report for each child process
    /// followed, in the order they started (their own `children` empty).
    pub children: Vec<Report>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub allocated_bytes: u64,
    pub allocations: u64,
    pub frees: u64,
    pub untracked_frees: u64,
    pub lost_events: u64,
    /// Allocations whose user stack could not be captured.
    pub stack_failures: u64,
    /// Allocations at addresses still held (their free was not seen).
    pub missed_frees: u64,
    /// Allocations not tracked because memtrace's bound on tracked
    /// allocations (--max-allocations) was reached.
    pub dropped_allocations: u64,
}

/// Losses counted outside the process's own table.
#[derive(Clone, Copy, Debug, Default)]
pub struct Losses {
    pub lost_events: u64,
    pub stack_failures: u64,
}

#[derive(Debug, Serialize)]
pub struct StackReport {
    pub kind: &'static str,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub oldest_age_ms: u64,
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Frame {
    pub ip: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
}

impl Frame {
    /// The name to show: function, else module+offset, else address.
    pub fn label(&self) -> String {
        match (&self.function, &self.module) {
            (Some(f), _) => f.clone(),
            (None, Some(m)) => format!("{}+{}", short_module(m), self.ip),
            (None, None) => self.ip.clone(),
        }
    }
}

pub fn short_module(m: &str) -> &str {
    m.rsplit('/').next().unwrap_or(m)
}

/// Everything about the traced process that is not in the tracker.
pub struct Meta {
    pub pid: u32,
    pub parent_pid: Option<u32>,
    /// The wait status of a launched process that memtrace saw end.
    pub wait_status: Option<i32>,
    pub comm: String,
    pub exe: String,
    pub exited: bool,
    pub duration_ms: u64,
    /// Monotonic time (ns) at which ages are measured.
    pub now_ns: u64,
    pub notes: Vec<String>,
}

/// A process's numbers and raw frames, gathered without symbols (cheap,
/// owned: it can be symbolized and rendered on another thread).
#[derive(Clone, Debug, Default)]
pub struct Input {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Mean bytes between samples (0: not sampling; values are exact).
    pub sample_bytes: u64,
    pub counters: crate::tracker::ProcCounters,
    pub stacks: Vec<InputStack>,
}

#[derive(Clone, Debug)]
pub struct InputStack {
    pub kind: Kind,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub oldest_ns: Option<u64>,
    /// Innermost first: (return address, its normalized file address).
    pub frames: Vec<(u64, Option<FileAddr>)>,
}

/// Gather `p`'s stacks that still hold memory, largest first, at most
/// `limit` of them.
pub fn input_of(p: &Process, stacks: &Stacks, limit: usize) -> Input {
    let oldest = p.oldest_per_stack();
    let mut held: Vec<usize> = (0..p.stacks.len())
        .filter(|&i| p.stacks[i].outstanding_allocations > 0)
        .collect();
    held.sort_by_key(|&i| std::cmp::Reverse(p.stacks[i].outstanding_bytes));
    held.truncate(limit);
    let stacks = held
        .into_iter()
        .map(|i| {
            let agg = &p.stacks[i];
            let (bytes, allocs) = shown(
                p.sample_bytes,
                agg.outstanding_bytes,
                agg.outstanding_allocations,
                agg.est_bytes,
                agg.est_allocations,
            );
            InputStack {
                kind: agg.kind,
                outstanding_bytes: bytes,
                outstanding_allocations: allocs,
                oldest_ns: oldest[i],
                frames: stacks
                    .frames(agg.stack)
                    .into_iter()
                    .map(|ip| (ip, stacks.file_addr(p.pid, ip).cloned()))
                    .collect(),
            }
        })
        .collect();
    let (outstanding_bytes, outstanding_allocations) = shown(
        p.sample_bytes,
        p.outstanding_bytes,
        p.outstanding_allocations,
        p.est_bytes,
        p.est_allocations,
    );
    Input {
        outstanding_bytes,
        outstanding_allocations,
        sample_bytes: p.sample_bytes,
        counters: p.counters,
        stacks,
    }
}

/// The counted values, or when sampling the estimates, rounded.
pub fn shown(
    sample_bytes: u64,
    bytes: u64,
    allocs: u64,
    est_bytes: f64,
    est_allocs: f64,
) -> (u64, u64) {
    if sample_bytes == 0 {
        (bytes, allocs)
    } else {
        (est_bytes.round() as u64, est_allocs.round() as u64)
    }
}

/// The frames of `st` as shown: symbolized, allocator frames dropped (but
/// at least one frame kept).
pub fn frames_of(
    st: &InputStack,
    symbols: &impl Fn(&FileAddr) -> Option<Symbol>,
) -> Vec<(u64, Frame)> {
    let mut frames: Vec<(u64, Frame)> = st
        .frames
        .iter()
        .map(|(ip, fa)| {
            let sym = fa.as_ref().and_then(symbols).unwrap_or_default();
            let f = Frame {
                ip: format!("{ip:#x}"),
                function: sym.function,
                file: sym.file,
                line: sym.line,
                module: fa.as_ref().map(|a| a.path.to_string()),
            };
            (*ip, f)
        })
        .collect();
    let skip = frames
        .iter()
        .take_while(|(_, f)| f.function.as_deref().is_some_and(is_allocator_frame))
        .count();
    frames.drain(..skip.min(frames.len().saturating_sub(1)));
    frames
}

/// Build the report from `input`. Stacks that symbolize to the same frames
/// are merged; stacks are ordered by outstanding bytes, largest first.
pub fn build(input: &Input, symbols: &mut Symbols, meta: Meta, losses: Losses) -> Report {
    symbols.resolve(
        input
            .stacks
            .iter()
            .flat_map(|s| s.frames.iter().filter_map(|(_, fa)| fa.as_ref())),
    );
    let lookup = |fa: &FileAddr| symbols.get(fa).cloned();
    let mut merged: HashMap<(Kind, Vec<u64>), StackReport> = HashMap::new();
    for st in &input.stacks {
        let frames = frames_of(st, &lookup);
        let age_ms = st
            .oldest_ns
            .map_or(0, |t| meta.now_ns.saturating_sub(t) / 1_000_000);
        let key = (st.kind, frames.iter().map(|(ip, _)| *ip).collect());
        let e = merged.entry(key).or_insert_with(|| StackReport {
            kind: st.kind.as_str(),
            outstanding_bytes: 0,
            outstanding_allocations: 0,
            oldest_age_ms: 0,
            frames: frames.into_iter().map(|(_, f)| f).collect(),
        });
        e.outstanding_bytes += st.outstanding_bytes;
        e.outstanding_allocations += st.outstanding_allocations;
        e.oldest_age_ms = e.oldest_age_ms.max(age_ms);
    }
    let mut out: Vec<StackReport> = merged.into_values().collect();
    out.sort_by(|a, b| {
        b.outstanding_bytes
            .cmp(&a.outstanding_bytes)
            .then(b.outstanding_allocations.cmp(&a.outstanding_allocations))
            .then_with(|| {
                a.frames
                    .first()
                    .map(Frame::label)
                    .cmp(&b.frames.first().map(Frame::label))
            })
    });

    let mut notes = meta.notes;
    if input.sample_bytes > 0 {
        notes.push(format!(
            "sampled: each allocation of s bytes was traced with probability 1 - exp(-s/{}); \
             outstanding bytes and allocations are unbiased estimates, the other counters \
             count sampled allocations",
            input.sample_bytes
        ));
    }
    let mut failed: Vec<_> = symbols.failed_files.iter().collect();
    failed.sort();
    for (path, why) in failed {
        notes.push(format!("could not symbolize {path}: {why}"));
    }
    let c = &input.counters;
    // Estimates are rounded per stack: the summary is their sum, so the
    // report adds up.
    let (outstanding_bytes, outstanding_allocations) = if input.sample_bytes > 0 {
        (
            out.iter().map(|s| s.outstanding_bytes).sum(),
            out.iter().map(|s| s.outstanding_allocations).sum(),
        )
    } else {
        (input.outstanding_bytes, input.outstanding_allocations)
    };
    Report {
        schema_version: SCHEMA_VERSION,
        pid: meta.pid,
        parent_pid: meta.parent_pid,
        comm: meta.comm,
        exe: meta.exe,
        exited: meta.exited,
        exit_code: meta
            .wait_status
            .filter(|&s| libc::WIFEXITED(s))
            .map(|s| libc::WEXITSTATUS(s)),
        exit_signal: meta
            .wait_status
            .filter(|&s| libc::WIFSIGNALED(s))
            .map(|s| signal_name(libc::WTERMSIG(s))),
        duration_ms: meta.duration_ms,
        summary: Summary {
            outstanding_bytes,
            outstanding_allocations,
            allocated_bytes: c.allocated_bytes,
            allocations: c.allocations,
            frees: c.frees,
            untracked_frees: c.untracked_frees,
            lost_events: losses.lost_events,
            stack_failures: losses.stack_failures,
            missed_frees: c.missed_frees,
            dropped_allocations: c.dropped,
        },
        stacks: out,
        sample_bytes: (input.sample_bytes > 0).then_some(input.sample_bytes),
        notes,
        children: Vec::new(),
    }
}

/// "SIGSEGV" for 11, "signal 40" for a number without a name.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(sig).ok().and_then(|i| NAMES.get(i)) {
        Some(n) if !n.is_empty() => (*n).to_string(),
        _ => format!("signal {sig}"),
    }
}

/// Render `r` in `format`.
pub fn render(r: &Report, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Text => render_text(r),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(r)?;
            s.push('\n');
            s
        }
        Format::Folded => render_folded(r),
    })
}
