//! Sorting and filtering the process table.

use std::cmp::Ordering;

use crate::dashboard::model::Row;

/// A sortable column of the process table, in display order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SortColumn {
    Pid,
    #[default]
    Score,
    Bytes,
    Allocations,
    Growth,
    Age,
    Rss,
    AllocsPerSec,
    FreesPerSec,
    Command,
}

impl SortColumn {
    /// Display order (what `<` and `>` walk through).
    pub const ALL: [SortColumn; 10] = [
        Self::Pid,
        Self::Score,
        Self::Bytes,
        Self::Allocations,
        Self::Growth,
        Self::Age,
        Self::Rss,
        Self::AllocsPerSec,
        Self::FreesPerSec,
        Self::Command,
    ];

    /// The column header.
    pub fn title(self) -> &'static str {
        match self {
            Self::Pid => "PID",
            Self::Score => "SCORE",
            Self::Bytes => "BYTES",
            Self::Allocations => "ALLOCS",
            Self::Growth => "GROWTH/s",
            Self::Age => "OLDEST",
            Self::Rss => "RSS",
            Self::AllocsPerSec => "ALLOC/s",
            Self::FreesPerSec => "FREE/s",
            Self::Command => "COMMAND",
        }
    }

    /// What the column shows, for the help screen.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Pid => "process ID",
            Self::Score => "leak score: steady growth, plus memory held long",
            Self::Bytes => "outstanding bytes (allocated while watched, not freed)",
            Self::Allocations => "outstanding allocations",
            Self::Growth => "growth of outstanding bytes per second, over the window",
            Self::Age => "age of the oldest outstanding allocation",
            Self::Rss => "resident set size",
            Self::AllocsPerSec => "allocations per second",
            Self::FreesPerSec => "frees per second",
            Self::Command => "command name (x: exited)",
        }
    }

    /// The key that sorts by this column.
    pub fn hotkey(self) -> char {
        match self {
            Self::Pid => 'P',
            Self::Score => 'S',
            Self::Bytes => 'B',
            Self::Allocations => 'N',
            Self::Growth => 'W',
            Self::Age => 'O',
            Self::Rss => 'R',
            Self::AllocsPerSec => 'A',
            Self::FreesPerSec => 'F',
            Self::Command => 'C',
        }
    }

    pub fn from_hotkey(c: char) -> Option<Self> {
        Self::ALL.into_iter().find(|col| col.hotkey() == c)
    }

    /// PID and command sort ascending; figures sort worst (largest) first.
    pub fn ascending(self) -> bool {
        matches!(self, Self::Pid | Self::Command)
    }

    /// Natural (ascending) order of two rows by this column alone.
    fn compare(self, a: &Row, b: &Row) -> Ordering {
        match self {
            Self::Pid => a.pid.cmp(&b.pid),
            Self::Score => cmp_f64(a.leak_score, b.leak_score),
            Self::Bytes => a.outstanding_bytes.cmp(&b.outstanding_bytes),
            Self::Allocations => a.outstanding_allocations.cmp(&b.outstanding_allocations),
            Self::Growth => cmp_f64(a.growth_bytes_per_s, b.growth_bytes_per_s),
            Self::Age => a.oldest_age.cmp(&b.oldest_age),
            Self::Rss => a.rss_bytes.cmp(&b.rss_bytes),
            Self::AllocsPerSec => cmp_f64(a.allocs_per_s, b.allocs_per_s),
            Self::FreesPerSec => cmp_f64(a.frees_per_s, b.frees_per_s),
            Self::Command => (a.comm.to_lowercase().cmp(&b.comm.to_lowercase()))
                .then_with(|| a.comm.cmp(&b.comm)),
        }
    }
}

/// Total order on figures; NaN counts as the smallest (least alarming).
fn cmp_f64(a: f64, b: f64) -> Ordering {
    let key = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
    key(a).total_cmp(&key(b))
}

/// The rows matching `filter`, sorted by `col` (ties: by PID).
pub(super) fn visible<'a>(
    rows: &'a [Row],
    filter: &str,
    col: SortColumn,
    descending: bool,
) -> Vec<&'a Row> {
    let needle = filter.trim().to_lowercase();
    let mut rows: Vec<&Row> = rows.iter().filter(|r| matches(r, &needle)).collect();
    rows.sort_by(|a, b| {
        let o = col.compare(a, b);
        (if descending { o.reverse() } else { o })
            .then(a.pid.cmp(&b.pid))
            .then(a.key.first_ns.cmp(&b.key.first_ns))
    });
    rows
}

/// Filter: a command substring (case-insensitive) or a PID prefix.
fn matches(row: &Row, needle: &str) -> bool {
    needle.is_empty()
        || row.comm.to_lowercase().contains(needle)
        || (needle.bytes().all(|b| b.is_ascii_digit()) && row.pid.to_string().starts_with(needle))
}
