//! The short soak (privileged): about 40 s of `memtrace --headless` over the
//! multi-process workload `soak_mix` (3 leakers at known rates, short-lived
//! children spawned continuously, churn throughout). Same engine and checks
//! as the full run, `cargo xtask soak` (10 minutes): memtrace's RSS flat
//! after warm-up, counters adding up and equal to the ground truth of every
//! workload process listed, no lost event, leak rates within 5%.
//!
//! `MEMTRACE_SOAK_SECS` sets the workload's duration (default 38 s: the
//! growth window is 30 s).

#[allow(dead_code)]
#[path = "../../xtask/soak/engine.rs"]
mod engine;

use std::time::Duration;

use memtrace_tests::{TempDir, bin, require_ebpf, serial, workload};

const DEFAULT_SECS: u64 = 38;

#[test]
fn soak_short() {
    if !require_ebpf() {
        return;
    }
    let _serial = serial();
    let secs = std::env::var("MEMTRACE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECS);
    assert!(
        secs >= 36,
        "MEMTRACE_SOAK_SECS={secs}: at least 36 s (memtrace's growth window is 30 s)"
    );
    let dir = TempDir::new("soak");
    let cfg = engine::Config {
        memtrace: bin(),
        workload: workload("soak_mix"),
        dir: dir.path().to_path_buf(),
        duration: Duration::from_secs(secs),
        progress_every: None,
        prefix: "soak:".into(),
    };
    let outcome = engine::run(&cfg).unwrap_or_else(|e| panic!("the soak run failed: {e}"));
    eprint!("{}", outcome.text);
    if !outcome.passed() {
        // Keep the ground truth, memtrace.json and rss.tsv for a look.
        std::mem::forget(dir);
    }
    assert!(
        outcome.passed(),
        "soak checks not passed: {} (numbers above; files kept in {})",
        outcome.failed().join(", "),
        cfg.dir.display()
    );
}
