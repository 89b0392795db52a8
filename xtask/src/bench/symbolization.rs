//! The time memtrace takes to symbolize and write a report with 16,384
//! distinct stacks (the `stacks` workload).

use std::{fs, time::Duration};

use anyhow::Result;

use super::{
    RUN_TIMEOUT,
    env::Env,
    json::Json,
    proc::{Proc, Sink},
    run::{check, parse_work, read_json},
    workloads::Config,
};
use crate::ctx::say;

/// One run of the 16,384-stack workload.
#[derive(Clone, Copy, Default)]
pub(super) struct StackRun {
    pub(super) wall: Duration,
    pub(super) work_ns: u64,
    pub(super) stacks: u64,
    pub(super) stack_failures: u64,
    pub(super) bytes: u64,
}

pub(super) struct Stacks {
    pub(super) untraced: Vec<StackRun>,
    pub(super) floor: Vec<StackRun>,
    pub(super) report: Vec<StackRun>,
    pub(super) failures: Vec<String>,
}

pub(super) fn symbolization(env: &Env, rounds: usize) -> Stacks {
    let mut st = Stacks {
        untraced: Vec::new(),
        floor: Vec::new(),
        report: Vec::new(),
        failures: Vec::new(),
    };
    let argv = vec![env.bin.join("stacks").to_string_lossy().into_owned()];
    for round in 0..rounds {
        for cfg in [Config::Untraced, Config::Floor, Config::Report] {
            let what = format!("stacks {} round {}/{rounds}", cfg.key(), round + 1);
            let foreign = env.quiet_host();
            let result = stacks_once(env, &argv, cfg);
            env.foreign_after(foreign);
            match result {
                Ok(r) => {
                    say!(
                        "bench: {what}: {:.1} ms (whole run {:.1} ms)",
                        r.work_ns as f64 / 1e6,
                        r.wall.as_secs_f64() * 1e3
                    );
                    match cfg {
                        Config::Untraced => &mut st.untraced,
                        Config::Floor => &mut st.floor,
                        _ => &mut st.report,
                    }
                    .push(r);
                }
                Err(e) => {
                    let reason = format!("{e:#}").replace('\n', " ");
                    say!("bench: {what}: n/a ({reason})");
                    st.failures.push(format!("{}: {reason}", cfg.key()));
                }
            }
        }
    }
    st
}

fn stacks_once(env: &Env, argv: &[String], cfg: Config) -> Result<StackRun> {
    let log = format!("stacks-{}", cfg.key());
    if cfg == Config::Untraced {
        let mut w = env.workload(argv, &log, false)?;
        let exit = w.wait(RUN_TIMEOUT)?;
        check(&mut w, &exit)?;
        let (work_ns, _) = parse_work(&w.stdout_text())?;
        return Ok(StackRun {
            wall: exit.wall,
            work_ns,
            ..StackRun::default()
        });
    }
    let json = env.tmp.join(format!("{log}.json"));
    let _ = fs::remove_file(&json);
    let mut cmd = env.memtrace();
    cmd.arg("report");
    if cfg == Config::Floor {
        cmd.arg("--floor");
    }
    cmd.args(["--format", "json", "-o"])
        .arg(&json)
        .arg("--")
        .args(argv)
        .current_dir(&env.tmp);
    let mut m = Proc::spawn("memtrace", &mut cmd, false, Sink::Lines, env.log(&log)?)?;
    let exit = m.wait(RUN_TIMEOUT)?;
    check(&mut m, &exit)?;
    let (work_ns, _) = parse_work(&m.stdout_text())?;
    let bytes = fs::metadata(&json).map(|m| m.len()).unwrap_or(0);
    let report = read_json(&json)?;
    let _ = fs::remove_file(&json);
    Ok(StackRun {
        wall: exit.wall,
        work_ns,
        stacks: report
            .get("stacks")
            .and_then(Json::array)
            .map_or(0, |s| s.len() as u64),
        stack_failures: report.u64_at(&["summary", "stack_failures"]).unwrap_or(0),
        bytes,
    })
}
