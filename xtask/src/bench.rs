//! `cargo xtask bench [--rounds N] [--quick]`: what tracing costs the traced
//! program, against the program untraced, memtrace's own overhead floor
//! (`--floor`: the same probes, programs that return at once) and the tools
//! users have today (a bpftrace version of bcc's memleak, heaptrack).
//!
//! Every configuration runs each workload once per round, interleaved (the
//! order rotates from round to round), and the tables show medians. The
//! workloads (`xtask/bench/`) time their own work phase and print
//! `work_ns=`, so start-up and attach costs do not count; tracers that
//! attach to a running process get it waiting at a gate (a read of stdin)
//! and release it once their probes are in.
//!
//! Output: progress lines on stderr, the Markdown report on stdout and in
//! `<target>/bench/latest.md` (`quick.md` with `--quick`), every run's
//! figures in `latest-samples.tsv` (`quick-samples.tsv`); run logs in
//! `<target>/bench/logs/`.

mod env;
mod figures;
mod json;
mod memory;
mod phased;
mod proc;
mod report;
mod run;
mod symbolization;
mod table;
mod workloads;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    env::prepare,
    memory::outstanding_memory,
    phased::phased,
    report::{Rendering, machine, render},
    run::{Cell, run},
    symbolization::symbolization,
    workloads::{CONFIGS, Config, workloads},
};
use crate::{
    build,
    ctx::{Ctx, say},
    setup,
};

const USAGE: &str = "usage: cargo xtask bench [--rounds N] [--quick]";

/// Deadline of one workload run under any configuration.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a tracer may take to attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for another tracer's system-wide probes to go before
/// measuring anyway.
const FOREIGN_WAIT: Duration = Duration::from_secs(30);
/// The dashboard's refresh interval in the system-wide runs (its per-process
/// rows come from the last refresh, so the workload must be in one).
const HEADLESS_DELAY_MS: u64 = 250;

struct Options {
    rounds: usize,
    quick: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut rounds = None;
        let mut quick = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let value = match arg.as_str() {
                "--quick" => {
                    quick = true;
                    continue;
                }
                "--rounds" => it.next().map(String::as_str),
                a if a.starts_with("--rounds=") => Some(&a["--rounds=".len()..]),
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("bench: unknown argument `{other}` ({USAGE})"),
            };
            let n: usize = value
                .and_then(|v| v.parse().ok())
                .filter(|n| *n >= 1)
                .with_context(|| format!("bench: --rounds needs a positive number ({USAGE})"))?;
            rounds = Some(n);
        }
        Ok(Self {
            rounds: rounds.unwrap_or(if quick { 1 } else { 7 }),
            quick,
        })
    }
}

pub fn bench(ctx: &Ctx, args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    if !ctx.is_root && !ctx.dry_run {
        bail!("bench: needs root (uprobes, bpftrace): run `sudo -E cargo xtask bench`");
    }
    setup::setup(ctx)?;
    let memtrace = build::memtrace_bin(ctx);
    if !memtrace.is_file() {
        build::build_only(ctx)?;
    }
    let workloads = workloads(ctx, &opts);
    let n_configs = CONFIGS.len();
    if ctx.dry_run {
        say!(
            "bench: would run {} rounds of {} workloads × {n_configs} configurations, then the memory, symbolization and phased-floor runs",
            opts.rounds,
            workloads.len()
        );
        return Ok(());
    }
    let started = Instant::now();
    let env = prepare(ctx, memtrace)?;
    let machine = machine(ctx, &env);
    let load_before = loadavg();
    let host_before = (proc::host_cpu_ticks(), proc::own_cpu(), Instant::now());
    say!(
        "bench: {} round(s) of {} workloads × {n_configs} configurations{}",
        opts.rounds,
        workloads.len(),
        if opts.quick { " (quick sizes)" } else { "" }
    );
    let mut cells: BTreeMap<(usize, Config), Cell> = BTreeMap::new();
    let mut raw = String::from(
        "workload\tconfig\tround\twork_ns\tunits\tevents\tlost\ttracer_cpu_us\ttracer_maxrss_bytes\tforeign_tracer\n",
    );
    for round in 0..opts.rounds {
        for (wi, wl) in workloads.iter().enumerate() {
            for k in 0..n_configs {
                let cfg = CONFIGS[(k + round) % n_configs];
                let cell = cells.entry((wi, cfg)).or_default();
                // A tool that failed in an earlier round is not retried.
                if cell.samples.is_empty() && !cell.failures.is_empty() {
                    continue;
                }
                let what = format!(
                    "{} {} round {}/{}",
                    wl.name,
                    cfg.key(),
                    round + 1,
                    opts.rounds
                );
                let foreign = env.quiet_host();
                let result = run(&env, wl, cfg);
                let foreign = env.foreign_after(foreign);
                match result {
                    Ok(mut s) => {
                        s.foreign = foreign;
                        s.round = round;
                        say!(
                            "bench: {what}: {:.1} ms{}",
                            s.work_ns as f64 / 1e6,
                            if foreign {
                                " (another tracer attached)"
                            } else {
                                ""
                            }
                        );
                        let opt = |x: Option<u64>| x.map_or_else(|| "-".into(), |v| v.to_string());
                        let _ = writeln!(
                            raw,
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            wl.name,
                            cfg.key(),
                            round + 1,
                            s.work_ns,
                            s.units,
                            opt(s.events),
                            opt(s.lost),
                            opt(s.tracer.map(|t| t.0.as_micros() as u64)),
                            opt(s.tracer.map(|t| t.1)),
                            u8::from(foreign)
                        );
                        cell.samples.push(s);
                    }
                    Err(e) => {
                        let reason = format!("{e:#}").replace('\n', " ");
                        say!("bench: {what}: n/a ({reason})");
                        cell.failures.push(reason);
                    }
                }
            }
        }
    }
    // A --quick smoke test does not overwrite the real run's files.
    let stem = if opts.quick { "quick" } else { "latest" };
    let raw_path = bench_dir(ctx).join(format!("{stem}-samples.tsv"));
    fs::write(&raw_path, &raw).with_context(|| format!("writing {}", raw_path.display()))?;
    let extra_rounds = if opts.quick { 1 } else { opts.rounds.min(3) };
    let held = if opts.quick { 200_000 } else { 1_000_000 };
    let memory = outstanding_memory(&env, held, extra_rounds);
    let stacks = symbolization(&env, extra_rounds);
    // The untraced tight loop's time per pair (its units are calls).
    let untraced_pp = cells
        .get(&(0, Config::Untraced))
        .and_then(|c| table::median(c.used().iter().map(|s| 2.0 * s.per_unit())))
        .unwrap_or(0.0);
    let phased = phased(&env, opts.quick, extra_rounds, untraced_pp);
    let load_after = loadavg();
    let others = others_cpu(host_before);

    let md = render(&Rendering {
        machine,
        env: &env,
        opts: &opts,
        workloads: &workloads,
        cells: &cells,
        memory: &memory,
        held,
        stacks: &stacks,
        phased: &phased,
        load: (load_before, load_after),
        others,
        elapsed: started.elapsed(),
    });
    let out = bench_dir(ctx).join(format!("{stem}.md"));
    fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    println!("{md}");
    say!(
        "bench: done in {:.1} min; the table is also in {}",
        started.elapsed().as_secs_f64() / 60.0,
        out.display()
    );
    Ok(())
}

fn bench_dir(ctx: &Ctx) -> PathBuf {
    ctx.target_dir().join("bench")
}

/// Since `before`: the share of the host's CPU capacity that other
/// processes used (busy time minus ours and our children's), and the share
/// stolen by the hypervisor.
fn others_cpu(before: (Option<(u64, u64)>, Duration, Instant)) -> Option<(f64, f64)> {
    let (Some(b), own_before, t0) = before else {
        return None;
    };
    let a = proc::host_cpu_ticks()?;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let capacity = t0.elapsed().as_secs_f64() * cpus;
    let busy = a.0.saturating_sub(b.0) as f64 / 100.0;
    let steal = a.1.saturating_sub(b.1) as f64 / 100.0;
    let own = (proc::own_cpu().saturating_sub(own_before)).as_secs_f64();
    Some((((busy - own) / capacity).max(0.0), steal / capacity))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}
