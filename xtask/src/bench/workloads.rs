//! What the benchmark runs: the workloads and the configurations (tracers
//! and their modes) each one runs under.

use std::path::PathBuf;

use super::{Options, bench_dir, table::thousands};
use crate::ctx::Ctx;

/// The ways a workload runs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) enum Config {
    Untraced,
    Floor,
    Report,
    ReportPid,
    SystemWide,
    /// `--floor --sample-bytes`: the traps an unsampled pair cannot avoid
    /// (entry probes only: the sessions decline every return).
    SampledFloor,
    /// `report --sample-bytes 512KiB`.
    Sampled,
    /// bcc's memleak, in bpftrace (memleak's probe set).
    Bpftrace,
    /// The same script for malloc and free only.
    BpftraceMallocFree,
    Heaptrack,
}

/// The sampling rate of the sampled configurations.
pub(super) const SAMPLE_BYTES: &str = "512KiB";

pub(super) const CONFIGS: [Config; 10] = [
    Config::Untraced,
    Config::Floor,
    Config::Report,
    Config::ReportPid,
    Config::SystemWide,
    Config::SampledFloor,
    Config::Sampled,
    Config::Bpftrace,
    Config::BpftraceMallocFree,
    Config::Heaptrack,
];

impl Config {
    /// The name in progress lines and log files.
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Floor => "floor",
            Self::Report => "report",
            Self::ReportPid => "report-pid",
            Self::SystemWide => "system-wide",
            Self::SampledFloor => "sampled-floor",
            Self::Sampled => "sampled",
            Self::Bpftrace => "bpftrace",
            Self::BpftraceMallocFree => "bpftrace-malloc-free",
            Self::Heaptrack => "heaptrack",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Floor => "memtrace floor (`--floor`)",
            Self::Report => "`memtrace report -- CMD`",
            Self::ReportPid => "`memtrace report --pid`",
            Self::SystemWide => "`memtrace` system-wide (`--headless`)",
            Self::SampledFloor => "sampled floor (`--floor --sample-bytes 512KiB`)",
            Self::Sampled => "`memtrace report --sample-bytes 512KiB`",
            Self::Bpftrace => "bpftrace memleak-like (system-wide)",
            Self::BpftraceMallocFree => "bpftrace memleak-like, malloc and free only",
            Self::Heaptrack => "heaptrack",
        }
    }

    /// Short column names of the summary table.
    pub(super) fn column(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Floor => "floor",
            Self::Report => "report",
            Self::ReportPid => "report --pid",
            Self::SystemWide => "system-wide",
            Self::SampledFloor => "sampled floor",
            Self::Sampled => "sampled",
            Self::Bpftrace => "bpftrace",
            Self::BpftraceMallocFree => "bpftrace m/f",
            Self::Heaptrack => "heaptrack",
        }
    }

    /// Runs with the smaller workload sizes (the tracer is ~1000× slower).
    pub(super) fn small(self) -> bool {
        matches!(self, Self::Bpftrace | Self::BpftraceMallocFree)
    }
}

pub(super) struct Workload {
    pub(super) name: &'static str,
    /// What it does, for the table headings (`{n}` = the size).
    pub(super) about: String,
    /// `about` in a few words, for the summary table.
    pub(super) short: String,
    /// What the reduced run of the bpftrace baseline does.
    pub(super) small_about: String,
    pub(super) program: Vec<String>,
    pub(super) args: Vec<String>,
    pub(super) small_args: Vec<String>,
    /// Threads that allocate in parallel ("per pair" figures are per thread).
    pub(super) threads: u64,
    /// Allocator call pairs per unit of work, when known (the C workloads
    /// count their calls: units are calls, 2 per pair). None for CPython:
    /// taken from memtrace's `--pid` reports.
    pub(super) pairs_per_unit: Option<f64>,
}

pub(super) fn workloads(ctx: &Ctx, opts: &Options) -> Vec<Workload> {
    let bin = bench_dir(ctx).join("bin");
    let c = |name: &str| vec![bin.join(name).to_string_lossy().into_owned()];
    let s = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>();
    let python = vec![
        python3(ctx).to_string_lossy().into_owned(),
        ctx.root
            .join("xtask/bench/dicts.py")
            .to_string_lossy()
            .into_owned(),
    ];
    // (full size, bpftrace size)
    let (tight, tight2, mixed, dicts) = if opts.quick {
        (
            (100_000, 10_000),
            (50_000, 5_000),
            ((1, 20_000), (1, 1_000)),
            ((20_000, 1), (2_000, 1)),
        )
    } else {
        (
            (1_000_000, 50_000),
            (500_000, 25_000),
            ((4, 50_000), (1, 5_000)),
            ((100_000, 3), (10_000, 1)),
        )
    };
    vec![
        Workload {
            name: "tight-1t",
            about: format!("{} × malloc(64)/free, 1 thread", thousands(tight.0)),
            short: format!("{} pairs", thousands(tight.0)),
            small_about: format!("{} pairs", thousands(tight.1)),
            program: c("tight"),
            args: s(&[tight.0, 1]),
            small_args: s(&[tight.1, 1]),
            threads: 1,
            pairs_per_unit: Some(0.5),
        },
        Workload {
            name: "tight-2t",
            about: format!(
                "{} × malloc(64)/free on each of 2 threads",
                thousands(tight2.0)
            ),
            short: format!("2 threads × {} pairs", thousands(tight2.0)),
            small_about: format!("{} pairs per thread", thousands(tight2.1)),
            program: c("tight"),
            args: s(&[tight2.0, 2]),
            small_args: s(&[tight2.1, 2]),
            threads: 2,
            pairs_per_unit: Some(0.5),
        },
        Workload {
            name: "mixed",
            about: format!(
                "hash table grown to {} string keys and emptied, {} times: malloc, calloc, realloc, free",
                thousands(mixed.0.1),
                mixed.0.0
            ),
            short: "strings, hash table, calloc, realloc".into(),
            small_about: format!("{} keys, {} time", thousands(mixed.1.1), mixed.1.0),
            program: c("mixed"),
            args: s(&[mixed.0.0, mixed.0.1]),
            small_args: s(&[mixed.1.0, mixed.1.1]),
            threads: 1,
            pairs_per_unit: Some(0.5),
        },
        Workload {
            name: "python-dicts",
            about: format!(
                "CPython: dict of {} str → 80-item list, half deleted, dropped, {} times",
                thousands(dicts.0.0),
                dicts.0.1
            ),
            short: "CPython building and dropping dicts".into(),
            small_about: format!("{} entries, {} time", thousands(dicts.1.0), dicts.1.1),
            program: python,
            args: s(&[dicts.0.0, dicts.0.1]),
            small_args: s(&[dicts.1.0, dicts.1.1]),
            threads: 1,
            pairs_per_unit: None,
        },
    ]
}

/// Debian's python3 (a real program nobody here wrote), else any on PATH.
pub(super) fn python3(ctx: &Ctx) -> PathBuf {
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.is_file() {
        return debian;
    }
    ctx.which("python3").unwrap_or(debian)
}
