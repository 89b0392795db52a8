//! memtrace's memory per outstanding allocation: its peak RSS while the
//! `hold` workload keeps many blocks, and while it keeps none.

use std::{fs, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    HEADLESS_DELAY_MS, RUN_TIMEOUT,
    env::Env,
    proc::{self, Proc, SIGINT},
    run::{check, parse_summary, read_json, summary_row},
    table::mib,
};
use crate::ctx::say;

/// Peak RSS of memtrace while it tracks `held` outstanding allocations and
/// while it tracks none, per way of running it.
pub(super) struct Memory {
    pub(super) modes: Vec<MemoryMode>,
}

#[derive(Default)]
pub(super) struct MemoryMode {
    pub(super) label: &'static str,
    /// Peak RSS samples with `held` blocks outstanding.
    pub(super) held: Vec<u64>,
    /// ... and with none.
    pub(super) none: Vec<u64>,
    pub(super) failures: Vec<String>,
}

pub(super) fn outstanding_memory(env: &Env, held: u64, rounds: usize) -> Memory {
    let mut modes = vec![
        MemoryMode {
            label: "`memtrace report --pid`",
            ..MemoryMode::default()
        },
        MemoryMode {
            label: "`memtrace` system-wide (`--headless`)",
            ..MemoryMode::default()
        },
    ];
    for round in 0..rounds {
        for (mi, mode) in modes.iter_mut().enumerate() {
            for n in [held, 0] {
                let what = format!(
                    "hold-{n} {} round {}/{rounds}",
                    ["report-pid", "system-wide"][mi],
                    round + 1
                );
                let foreign = env.quiet_host();
                let result = hold_once(env, n, mi == 1);
                env.foreign_after(foreign);
                match result {
                    Ok(rss) => {
                        say!("bench: {what}: peak RSS {}", mib(rss as f64));
                        if n == 0 {
                            &mut mode.none
                        } else {
                            &mut mode.held
                        }
                        .push(rss);
                    }
                    Err(e) => {
                        let reason = format!("{e:#}").replace('\n', " ");
                        say!("bench: {what}: n/a ({reason})");
                        mode.failures.push(reason);
                    }
                }
            }
        }
    }
    Memory { modes }
}

/// memtrace's peak RSS while `hold N` keeps N blocks.
fn hold_once(env: &Env, n: u64, system_wide: bool) -> Result<u64> {
    let argv = vec![
        env.bin.join("hold").to_string_lossy().into_owned(),
        n.to_string(),
    ];
    let log = format!(
        "hold-{n}-{}",
        if system_wide { "system-wide" } else { "pid" }
    );
    let mut w = env.workload(&argv, &log, true)?;
    let held = |w: &mut Proc| {
        w.wait_stdout(&|l| l.starts_with("held="), RUN_TIMEOUT)
            .map(|_| ())
            .context("the workload did not report holding its blocks")
    };
    if system_wide {
        let mut m = env.start_headless(&w, &log)?;
        w.release();
        held(&mut w)?;
        // Two dashboard refreshes with the blocks outstanding.
        thread::sleep(Duration::from_millis(2 * HEADLESS_DELAY_MS + 100));
        m.signal(SIGINT);
        let exit = m.wait(Duration::from_secs(120))?;
        proc::wait_unplanted(Duration::from_secs(2));
        check(&mut m, &exit)?;
        let summary = parse_summary(&m.stdout_text())?;
        w.release();
        w.wait(RUN_TIMEOUT)?;
        let seen = summary_row(&summary, w.pid)
            .and_then(|r| r.u64_at(&["outstanding_allocations"]))
            .unwrap_or(0);
        if seen < n {
            bail!("the dashboard saw {seen} of {n} outstanding blocks");
        }
        Ok(exit.maxrss_bytes)
    } else {
        let json = env.tmp.join(format!("{log}.json"));
        let mut m = env.start_report_pid(&w, &json, &log)?;
        w.release();
        held(&mut w)?;
        thread::sleep(Duration::from_millis(300));
        w.release();
        let wexit = w.wait(RUN_TIMEOUT)?;
        check(&mut w, &wexit)?;
        let exit = m.wait(Duration::from_secs(120))?;
        check(&mut m, &exit)?;
        let report = read_json(&json)?;
        let _ = fs::remove_file(&json);
        let seen = report
            .u64_at(&["summary", "outstanding_allocations"])
            .unwrap_or(0);
        if seen < n {
            bail!("the report has {seen} of {n} outstanding blocks");
        }
        Ok(exit.maxrss_bytes)
    }
}
