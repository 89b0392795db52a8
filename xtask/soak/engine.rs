//! The soak test's engine: runs `memtrace --headless` over the multi-process
//! workload `tests/workloads/soak_mix.c`, samples memtrace's RSS, freezes
//! the workload, collects memtrace's JSON summary and checks it against the
//! ground truth every workload process wrote.
//!
//! Shared by `cargo xtask soak` (xtask/src/soak.rs, the full run) and the
//! short CI version (tests/tests/soak.rs includes this file with `#[path]`),
//! so it uses std only: the two crates share no JSON or libc dependency.
//!
//! The run:
//! 1. start `memtrace --headless` (with a generous cap; it is stopped by
//!    SIGINT) and wait until it has attached: its uprobe and exec/exit
//!    tracepoint links are open (seen in /proc/PID/fdinfo);
//! 2. start the workload (its own process group) and sample memtrace's
//!    VmRSS every second for the run's duration;
//! 3. freeze the workload (SIGUSR1): every live process stops allocating and
//!    writes its ground truth; wait for all of it, then one refresh interval
//!    (plus margin) so memtrace's last snapshot holds the frozen state;
//! 4. SIGINT memtrace, parse its JSON; SIGTERM the workload;
//! 5. check (see [`evaluate`]).

// Both includers load this file with `#[path]`, which makes it act as a
// mod.rs: these modules are the files next to it, xtask/soak/<name>.rs.
mod checks;
mod collect;
mod format;
mod json;
mod processes;
mod rss;
mod summary;
mod truth;

use std::{fmt::Write as _, fs, path::PathBuf, time::Duration};

use checks::evaluate;
use collect::collect;
use summary::parse_summary;

/// The leak rates must be reported within this fraction.
pub const RATE_TOLERANCE: f64 = 0.05;
/// memtrace's refresh interval (its default `--delay`): growth is sampled at
/// it, and the freeze must outlast one.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long memtrace lists an exited process.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);
/// `top` holds at most this many rows.
pub const TOP_ROWS: usize = 50;
/// The RSS budget after warm-up: this fraction of the warm RSS, but at least
/// [`RSS_MIN_BUDGET`] bytes.
pub const RSS_BUDGET_FRACTION: f64 = 0.10;
pub const RSS_MIN_BUDGET: u64 = 4 << 20;
/// memtrace keeps state for every process's outstanding allocations, so
/// its RSS also follows other processes' activity: when more than this
/// share of the events traced came from other processes, an RSS over
/// budget is inconclusive rather than a leak.
pub const FOREIGN_BUSY: f64 = 0.10;

/// What to run.
pub struct Config {
    /// The memtrace binary.
    pub memtrace: PathBuf,
    /// The compiled `soak_mix` workload.
    pub workload: PathBuf,
    /// An empty directory for the ground truth, role links and logs.
    pub dir: PathBuf,
    /// How long the workload runs (leaks and churns) before the freeze.
    pub duration: Duration,
    /// Print a progress line (stderr) this often.
    pub progress_every: Option<Duration>,
    /// Prefix of progress lines, e.g. "xtask: soak:".
    pub prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Could not be judged (e.g. the machine was busy): not a pass either.
    Inconclusive,
}

/// One check.
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, pass: bool, detail: String) -> Self {
        let verdict = if pass { Verdict::Pass } else { Verdict::Fail };
        Self {
            name,
            verdict,
            detail,
        }
    }
}

/// The result of a run.
pub struct Outcome {
    pub checks: Vec<Check>,
    /// Human-readable numbers and check results (also in the run's
    /// directory: summary.txt, with memtrace.json and rss.tsv).
    pub text: String,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.verdict == Verdict::Pass)
    }

    /// "name" of each failed check, "name (inconclusive)" of the others
    /// not passed.
    pub fn failed(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(|c| match c.verdict {
                Verdict::Pass => None,
                Verdict::Fail => Some(c.name.to_owned()),
                Verdict::Inconclusive => Some(format!("{} (inconclusive)", c.name)),
            })
            .collect()
    }
}

/// Runs the soak and checks the result. Err: the run itself failed
/// (memtrace or the workload died, no JSON, ...).
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    let c = collect(cfg)?;
    let _ = fs::write(cfg.dir.join("memtrace.json"), &c.json);
    let mut rss_tsv = String::from("seconds\trss_bytes\n");
    for (t, b) in &c.rss {
        let _ = writeln!(rss_tsv, "{t:.1}\t{b}");
    }
    let _ = fs::write(cfg.dir.join("rss.tsv"), rss_tsv);
    let summary = parse_summary(&c.json)?;
    let outcome = evaluate(cfg, &c, &summary);
    let _ = fs::write(cfg.dir.join("summary.txt"), &outcome.text);
    Ok(outcome)
}
