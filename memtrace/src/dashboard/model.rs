//! What the dashboard shows, as plain data: built once per refresh from the
//! tracker (by `dashboard::view`), consumed by the app state and the
//! renderer. No I/O, no tracker types: the UI can be tested with these
//! values alone.

use std::time::Duration;

/// Identifies one process image across refreshes. A reused PID, or an exec,
/// is a different key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub pid: u32,
    /// Monotonic time (ns) at which memtrace first saw this image.
    pub first_ns: u64,
}

/// One row of the process table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: RowKey,
    pub pid: u32,
    pub comm: String,
    /// Resident set size from /proc (None once exited or unreadable).
    pub rss_bytes: Option<u64>,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Slope of outstanding bytes over the sliding window, bytes/s.
    pub growth_bytes_per_s: f64,
    /// Age of the oldest outstanding allocation.
    pub oldest_age: Option<Duration>,
    pub allocs_per_s: f64,
    pub frees_per_s: f64,
    /// Leak evidence: higher is worse (see `dashboard::score`).
    pub leak_score: f64,
    /// Exited meanwhile (kept for a grace period).
    pub exited: bool,
}

/// The header: host-wide figures and memtrace's own cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// How long memtrace has been watching (allocations before are unknown).
    pub watching_for: Duration,
    /// Wall-clock time watching started, as text (e.g. "14:02:11").
    pub since: String,
    /// Sliding window used for rates and growth.
    pub window: Duration,
    pub outstanding_bytes: u64,
    pub allocs_per_s: f64,
    pub processes: usize,
    pub events_per_s: f64,
    pub lost_events: u64,
    pub untracked_frees: u64,
    /// Allocations whose user stack could not be captured.
    pub stack_failures: u64,
    /// Allocations and process events not tracked because of memtrace's
    /// bounds (--max-allocations, the process cap).
    pub dropped: u64,
    /// memtrace's own CPU, percent of one core.
    pub cpu_percent: f64,
    /// Scope: "all processes" or "PIDs 12, 34".
    pub scope: String,
}

/// Everything the table screen needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub header: Header,
    pub rows: Vec<Row>,
}

/// p50/p90/p99/max of a distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameView {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Module path (shown by its file name).
    pub module: Option<String>,
    pub ip: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StackView {
    /// "heap" or "mmap".
    pub kind: &'static str,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub oldest_age: Option<Duration>,
    /// Innermost first, allocator frames dropped. Empty while symbolizing.
    pub frames: Vec<FrameView>,
}

/// The process view of one row.
#[derive(Clone, Debug, PartialEq)]
pub struct Detail {
    pub key: RowKey,
    pub comm: String,
    pub exe: Option<String>,
    /// (seconds since watching started, outstanding bytes), oldest first.
    pub history: Vec<(f64, u64)>,
    /// Top stacks by outstanding bytes.
    pub stacks: Vec<StackView>,
    /// Sizes of allocations, bytes.
    pub sizes: Percentiles,
    /// Lifetimes of freed allocations, milliseconds.
    pub lifetimes_ms: Percentiles,
    /// Symbols are still being resolved in the background.
    pub symbolizing: bool,
}
