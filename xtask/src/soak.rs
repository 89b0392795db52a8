//! `cargo xtask soak [--minutes N]`: the soak test of the dashboard's data
//! path. `memtrace --headless` watches every process while the multi-process
//! workload `tests/workloads/soak_mix.c` churns millions of allocations,
//! starts and ends processes and leaks at known rates for N minutes
//! (default 10); then memtrace's RSS must have stayed flat after warm-up,
//! its per-process counters must add up and equal the ground truth the
//! workload wrote, no event may be lost, and the known leak rates must be
//! reported within 5%. The engine (xtask/soak/engine.rs) is shared with the
//! short CI version, tests/tests/soak.rs.
//!
//! Files of the last run (ground truth, memtrace's JSON, RSS samples, the
//! summary) stay in `<target>/soak/last-run/`.

#[path = "../soak/engine.rs"]
mod engine;

use std::{fs, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    build,
    ctx::{Ctx, say},
};

const DEFAULT_MINUTES: f64 = 10.0;
/// memtrace's growth window is 30 s: the workload must leak for longer.
const MIN_SECONDS: f64 = 36.0;
const WORKLOAD_SRC: &str = "tests/workloads/soak_mix.c";
/// The flags of every test workload (`WORKLOAD_CFLAGS` in tests/src/lib.rs).
const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fno-inline",
    "-fno-optimize-sibling-calls",
    "-pthread",
    "-Wall",
];

/// `--minutes N` (or `--minutes=N`); N may be fractional.
fn parse_minutes(args: &[String]) -> Result<f64> {
    let mut minutes = DEFAULT_MINUTES;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = match arg.as_str() {
            "--minutes" => it.next().context("soak: --minutes needs a value")?.as_str(),
            a => match a.strip_prefix("--minutes=") {
                Some(v) => v,
                None => bail!("soak: unexpected argument `{a}` (usage: soak [--minutes N])"),
            },
        };
        minutes = value
            .parse()
            .ok()
            .filter(|m: &f64| m.is_finite() && *m > 0.0)
            .with_context(|| format!("soak: `{value}` is not a number of minutes"))?;
    }
    if minutes * 60.0 < MIN_SECONDS {
        bail!(
            "soak: at least {:.1} minutes ({MIN_SECONDS} s): memtrace's growth window is 30 s",
            MIN_SECONDS / 60.0
        );
    }
    Ok(minutes)
}

pub fn soak(ctx: &Ctx, args: &[String]) -> Result<()> {
    let minutes = parse_minutes(args)?;
    if !ctx.is_root && !ctx.dry_run {
        bail!("soak: memtrace attaches eBPF probes to every process: run as root");
    }
    // Others rebuild memtrace often: build it only when it is missing.
    let mut memtrace = build::memtrace_bin(ctx);
    if memtrace.is_file() {
        say!("soak: using {} (not rebuilt)", memtrace.display());
    } else {
        memtrace = build::build(ctx)?;
    }
    let out = ctx.target_dir().join("soak");
    let workload = out.join("soak_mix");
    if !ctx.dry_run {
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    }
    let cc = std::env::var("CC")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "cc".into());
    ctx.run(
        &ctx.cmd(cc)
            .args(CFLAGS)
            .arg("-o")
            .arg(&workload)
            .arg(ctx.root.join(WORKLOAD_SRC)),
    )?;
    let dir = out.join("last-run");
    let duration = Duration::from_secs_f64(minutes * 60.0);
    if ctx.dry_run {
        say!(
            "would run the soak: {} of workload under {} --headless, files in {}",
            fmt_minutes(minutes),
            memtrace.display(),
            dir.display()
        );
        return Ok(());
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    say!(
        "soak: {} of workload under memtrace --headless (every allocation on this machine \
         is traced meanwhile: avoid building)",
        fmt_minutes(minutes)
    );
    let cfg = engine::Config {
        memtrace,
        workload,
        dir,
        duration,
        progress_every: Some(Duration::from_secs(30)),
        prefix: "xtask: soak:".into(),
    };
    let outcome = engine::run(&cfg).map_err(|e| anyhow!("soak: {e}"))?;
    eprint!("{}", outcome.text);
    if !outcome.passed() {
        bail!("soak: failed: {}", outcome.failed().join(", "));
    }
    say!("soak: passed");
    Ok(())
}

fn fmt_minutes(m: f64) -> String {
    let s = (m * 60.0).round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}
