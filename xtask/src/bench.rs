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

mod json;
mod proc;
mod table;

use std::{
    cell::Cell as StdCell,
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    json::Json,
    proc::{Exit, Proc, SIGINT, Sink, wait_planted},
    table::{Md, median, mib, ms, percent, rate, sig3, thousands, times},
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

/// The ways a workload runs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Config {
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
    Bpftrace,
    Heaptrack,
}

/// The sampling rate of the sampled configurations.
const SAMPLE_BYTES: &str = "512KiB";

const CONFIGS: [Config; 9] = [
    Config::Untraced,
    Config::Floor,
    Config::Report,
    Config::ReportPid,
    Config::SystemWide,
    Config::SampledFloor,
    Config::Sampled,
    Config::Bpftrace,
    Config::Heaptrack,
];

impl Config {
    /// The name in progress lines and log files.
    fn key(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Floor => "floor",
            Self::Report => "report",
            Self::ReportPid => "report-pid",
            Self::SystemWide => "system-wide",
            Self::SampledFloor => "sampled-floor",
            Self::Sampled => "sampled",
            Self::Bpftrace => "bpftrace",
            Self::Heaptrack => "heaptrack",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Floor => "memtrace floor (`--floor`)",
            Self::Report => "`memtrace report -- CMD`",
            Self::ReportPid => "`memtrace report --pid`",
            Self::SystemWide => "`memtrace` system-wide (`--headless`)",
            Self::SampledFloor => "sampled floor (`--floor --sample-bytes 512KiB`)",
            Self::Sampled => "`memtrace report --sample-bytes 512KiB`",
            Self::Bpftrace => "bpftrace memleak-like (system-wide)",
            Self::Heaptrack => "heaptrack",
        }
    }

    /// Short column names of the summary table.
    fn column(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Floor => "floor",
            Self::Report => "report",
            Self::ReportPid => "report --pid",
            Self::SystemWide => "system-wide",
            Self::SampledFloor => "sampled floor",
            Self::Sampled => "sampled",
            Self::Bpftrace => "bpftrace",
            Self::Heaptrack => "heaptrack",
        }
    }

    /// Runs with the smaller workload sizes (the tracer is ~1000× slower).
    fn small(self) -> bool {
        self == Self::Bpftrace
    }
}

struct Workload {
    name: &'static str,
    /// What it does, for the table headings (`{n}` = the size).
    about: String,
    /// `about` in a few words, for the summary table.
    short: String,
    /// What the reduced run of the bpftrace baseline does.
    small_about: String,
    program: Vec<String>,
    args: Vec<String>,
    small_args: Vec<String>,
    /// Threads that allocate in parallel ("per pair" figures are per thread).
    threads: u64,
    /// Allocator call pairs per unit of work, when known (the C workloads
    /// count their calls: units are calls, 2 per pair). None for CPython:
    /// taken from memtrace's `--pid` reports.
    pairs_per_unit: Option<f64>,
}

/// Everything the runs need.
struct Env {
    memtrace: PathBuf,
    bin: PathBuf,
    tmp: PathBuf,
    logs: PathBuf,
    python: PathBuf,
    bpftrace: Result<PathBuf, String>,
    heaptrack: Result<PathBuf, String>,
    bt_script: PathBuf,
    libc: String,
    /// Runs so far, and those during which another (foreign) tracer had
    /// system-wide probes attached.
    /// When the measured memtrace binary was built.
    built: String,
    runs: StdCell<usize>,
    foreign_runs: StdCell<usize>,
    /// Time spent waiting for foreign tracers to go.
    waited: StdCell<Duration>,
    /// Waiting for a foreign tracer to go timed out; do not wait again until
    /// the host is seen quiet.
    impatient: StdCell<bool>,
}

/// One run's figures.
#[derive(Clone, Debug, Default)]
struct Sample {
    work_ns: u64,
    /// Units of work done (allocator calls for the C workloads).
    units: u64,
    /// Allocations + frees memtrace saw for the workload.
    events: Option<u64>,
    lost: Option<u64>,
    /// The tracer's own CPU time and peak RSS (wait4), when it is not the
    /// workload's parent (a parent's rusage includes its reaped children).
    tracer: Option<(Duration, u64)>,
    /// Another tracer had system-wide probes attached before or after.
    foreign: bool,
    /// The round it was measured in.
    round: usize,
}

impl Sample {
    fn per_unit(&self) -> f64 {
        self.work_ns as f64 / self.units.max(1) as f64
    }
}

#[derive(Default)]
struct Cell {
    samples: Vec<Sample>,
    failures: Vec<String>,
}

impl Cell {
    /// The samples the figures use: those without a foreign tracer on the
    /// host if there are any, else all.
    fn used(&self) -> Vec<&Sample> {
        let clean: Vec<&Sample> = self.samples.iter().filter(|s| !s.foreign).collect();
        if clean.is_empty() {
            self.samples.iter().collect()
        } else {
            clean
        }
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
            "bench: would run {} rounds of {} workloads × {n_configs} configurations, then the memory and symbolization runs",
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

fn workloads(ctx: &Ctx, opts: &Options) -> Vec<Workload> {
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

fn bench_dir(ctx: &Ctx) -> PathBuf {
    ctx.target_dir().join("bench")
}

/// Debian's python3 (a real program nobody here wrote), else any on PATH.
fn python3(ctx: &Ctx) -> PathBuf {
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.is_file() {
        return debian;
    }
    ctx.which("python3").unwrap_or(debian)
}

/// Compiles the workloads, finds the tools, writes the bpftrace script.
fn prepare(ctx: &Ctx, memtrace: PathBuf) -> Result<Env> {
    let dir = bench_dir(ctx);
    let (bin, tmp, logs) = (dir.join("bin"), dir.join("tmp"), dir.join("logs"));
    for d in [&bin, &tmp, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Logs of the previous run go.
    for entry in fs::read_dir(&logs)?.flatten() {
        let _ = fs::remove_file(entry.path());
    }
    // memtrace gets rebuilt while we run: measure one build throughout.
    let copy = bin.join("memtrace");
    let _ = fs::remove_file(&copy);
    fs::copy(&memtrace, &copy)
        .with_context(|| format!("copying {} to {}", memtrace.display(), copy.display()))?;
    let built = fs::metadata(&memtrace)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let built = ctx
        .probe(
            &ctx.cmd("date")
                .args(["-u", "-d", &format!("@{built}"), "+%Y-%m-%d %H:%M UTC"]),
        )
        .map_or_else(|| "?".into(), |s| s.trim().to_owned());
    say!(
        "bench: measuring a copy of {} (built {built})",
        memtrace.display()
    );
    let memtrace = copy;
    let src = ctx.root.join("xtask/bench");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    for name in ["tight", "mixed", "hold", "stacks"] {
        let cmd = ctx
            .cmd(cc.clone())
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wall"])
            .arg("-o")
            .arg(bin.join(name))
            .arg(src.join(format!("{name}.c")));
        ctx.run(&cmd)?;
    }
    let python = python3(ctx);
    if !python.is_file() {
        bail!("bench: python3 not found (install Debian's python3)");
    }
    let tool = |name: &str| -> Result<PathBuf, String> {
        let path = ctx
            .which(name)
            .ok_or_else(|| format!("{name} not installed"))?;
        ctx.probe(&ctx.cmd(path.to_string_lossy()).arg("--version"))
            .ok_or_else(|| format!("`{name} --version` fails"))?;
        Ok(path)
    };
    // The libc memtrace probes, as `memtrace probes` names it.
    let libc = ctx
        .probe(&ctx.cmd(memtrace.to_string_lossy()).arg("probes"))
        .and_then(|out| {
            out.lines()
                .next()
                .map(str::trim)
                .filter(|l| l.starts_with('/') && Path::new(l).exists())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "/lib/x86_64-linux-gnu/libc.so.6".to_owned());
    let bt_script = tmp.join("memleak.bt");
    fs::write(&bt_script, bpftrace_script(&libc))?;
    Ok(Env {
        memtrace,
        bin,
        tmp,
        logs,
        python,
        bpftrace: tool("bpftrace"),
        heaptrack: tool("heaptrack"),
        bt_script,
        libc,
        built,
        runs: StdCell::new(0),
        foreign_runs: StdCell::new(0),
        waited: StdCell::new(Duration::ZERO),
        impatient: StdCell::new(false),
    })
}

/// bcc's memleak for malloc/free, in bpftrace: the size by thread at
/// malloc's entry; at its return, address → size and the user stack; free
/// deletes both. `$1` is the workload's pid (bcc's `memleak -p`); bpftrace
/// 0.17 plants the probes in every process anyway (measured: `-p` does not
/// scope uprobes), so this is a system-wide tracer. At exit bpftrace prints
/// what is outstanding, with stacks.
fn bpftrace_script(libc: &str) -> String {
    format!(
        "// memleak-like: written by cargo xtask bench\n\
         uprobe:{libc}:malloc /pid == $1/ {{ @size[tid] = arg0; }}\n\
         uretprobe:{libc}:malloc /pid == $1 && @size[tid]/ {{\n\
         \x20 @sizes[retval] = @size[tid];\n\
         \x20 @stacks[retval] = ustack;\n\
         \x20 delete(@size[tid]);\n\
         }}\n\
         uprobe:{libc}:free /pid == $1/ {{ delete(@sizes[arg0]); delete(@stacks[arg0]); }}\n"
    )
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

fn command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// `work_ns=N calls=N [units=N]` from a workload's output.
fn parse_work(out: &str) -> Result<(u64, u64)> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("work_ns="))
        .context("the workload printed no work_ns= line")?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let work = field("work_ns=").context("bad work_ns= line")?;
    let units = field("units=")
        .or_else(|| field("calls="))
        .context("bad work_ns= line")?;
    Ok((work, units))
}

fn read_json(path: &Path) -> Result<Json> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Json::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A headless summary on stdout: the JSON object from the first `{`.
fn parse_summary(stdout: &str) -> Result<Json> {
    let start = stdout
        .find('{')
        .context("memtrace --headless printed no summary")?;
    Json::parse(&stdout[start..]).context("parsing the --headless summary")
}

/// The summary's row of process `pid`.
fn summary_row(summary: &Json, pid: i32) -> Option<&Json> {
    summary
        .get("top")?
        .array()?
        .iter()
        .find(|r| r.u64_at(&["pid"]) == Some(pid as u64))
}

fn check(p: &mut Proc, exit: &Exit) -> Result<()> {
    if exit.success() {
        Ok(())
    } else {
        bail!("{}", p.failure(exit))
    }
}

impl Env {
    fn log(&self, name: &str) -> Result<Sink> {
        Sink::log(&self.logs.join(format!("{name}.log")))
    }

    fn memtrace(&self) -> Command {
        Command::new(&self.memtrace)
    }

    fn headless(&self) -> Command {
        let mut c = self.memtrace();
        c.args([
            "--headless",
            "3600s",
            "--delay",
            &format!("{HEADLESS_DELAY_MS}ms"),
        ]);
        c
    }

    /// Spawns a workload; with `gate`, returns once it waits at the gate.
    fn workload(&self, argv: &[String], log: &str, gate: bool) -> Result<Proc> {
        let mut cmd = command(argv);
        cmd.current_dir(&self.tmp);
        let mut w = Proc::spawn("workload", &mut cmd, gate, Sink::Lines, self.log(log)?)?;
        if gate
            && w.wait_stdout(&|l| l == "ready", Duration::from_secs(60))
                .is_none()
        {
            if let Some(exit) = w.try_wait()? {
                bail!("{}", w.failure(&exit));
            }
            bail!("the workload did not reach its gate");
        }
        Ok(w)
    }

    /// Called before every run: when another tracer has system-wide probes
    /// attached (they slow every process), waits up to [`FOREIGN_WAIT`] for
    /// it to go. Returns whether it is still there (the run is then marked).
    fn quiet_host(&self) -> bool {
        self.runs.set(self.runs.get() + 1);
        if !proc::foreign_tracer() {
            self.impatient.set(false);
            return false;
        }
        if !self.impatient.get() {
            say!(
                "bench: another tracer has system-wide probes attached (every process pays for them); waiting up to {} s for it to go",
                FOREIGN_WAIT.as_secs()
            );
            let start = Instant::now();
            let gone = loop {
                thread::sleep(Duration::from_millis(500));
                if !proc::foreign_tracer() {
                    break true;
                }
                if start.elapsed() >= FOREIGN_WAIT {
                    break false;
                }
            };
            self.waited.set(self.waited.get() + start.elapsed());
            if gone {
                say!("bench: the other tracer is gone");
                return false;
            }
            say!(
                "bench: it is still there; measuring anyway (such runs are counted in the report)"
            );
            self.impatient.set(true);
        }
        self.foreign_runs.set(self.foreign_runs.get() + 1);
        true
    }

    /// After a run: a foreign tracer that attached during the run marks it
    /// too. `before` is what [`Env::quiet_host`] said.
    fn foreign_after(&self, before: bool) -> bool {
        if before {
            return true;
        }
        let now = proc::foreign_tracer();
        if now {
            self.foreign_runs.set(self.foreign_runs.get() + 1);
        }
        now
    }
}

/// One run of `wl` under `cfg`.
fn run(env: &Env, wl: &Workload, cfg: Config) -> Result<Sample> {
    let args = if cfg.small() {
        &wl.small_args
    } else {
        &wl.args
    };
    let argv: Vec<String> = wl.program.iter().chain(args).cloned().collect();
    let log = format!("{}-{}", wl.name, cfg.key());
    match cfg {
        Config::Untraced => {
            let mut w = env.workload(&argv, &log, false)?;
            let exit = w.wait(RUN_TIMEOUT)?;
            check(&mut w, &exit)?;
            let (work_ns, units) = parse_work(&w.stdout_text())?;
            Ok(Sample {
                work_ns,
                units,
                ..Sample::default()
            })
        }
        Config::Floor | Config::Report | Config::SampledFloor | Config::Sampled => {
            let json = env.tmp.join(format!("{log}.json"));
            let _ = fs::remove_file(&json);
            let mut cmd = env.memtrace();
            cmd.arg("report");
            if matches!(cfg, Config::Floor | Config::SampledFloor) {
                cmd.arg("--floor");
            }
            if matches!(cfg, Config::SampledFloor | Config::Sampled) {
                cmd.args(["--sample-bytes", SAMPLE_BYTES]);
            }
            cmd.args(["--format", "json", "-o"])
                .arg(&json)
                .arg("--")
                .args(&argv)
                .current_dir(&env.tmp);
            let mut m = Proc::spawn("memtrace", &mut cmd, false, Sink::Lines, env.log(&log)?)?;
            let exit = m.wait(RUN_TIMEOUT)?;
            check(&mut m, &exit)?;
            let (work_ns, units) = parse_work(&m.stdout_text())?;
            let report = read_json(&json)?;
            let _ = fs::remove_file(&json);
            let s = |k| report.u64_at(&["summary", k]);
            Ok(Sample {
                work_ns,
                units,
                events: s("allocations").zip(s("frees")).map(|(a, f)| a + f),
                lost: s("lost_events"),
                tracer: None,
                foreign: false,
                round: 0,
            })
        }
        Config::ReportPid => {
            let json = env.tmp.join(format!("{log}.json"));
            let _ = fs::remove_file(&json);
            let mut w = env.workload(&argv, &log, true)?;
            let mut cmd = env.memtrace();
            cmd.args(["report", "--pid", &w.pid.to_string()])
                .args(["--format", "json", "-o"])
                .arg(&json);
            let mut m = Proc::spawn("memtrace", &mut cmd, false, Sink::Null, env.log(&log)?)?;
            attached(&mut m)?;
            w.release();
            let wexit = w.wait(RUN_TIMEOUT)?;
            check(&mut w, &wexit)?;
            let (work_ns, units) = parse_work(&w.stdout_text())?;
            // memtrace stops when the process exits.
            let mexit = m.wait(Duration::from_secs(120))?;
            check(&mut m, &mexit)?;
            let report = read_json(&json)?;
            let _ = fs::remove_file(&json);
            let s = |k| report.u64_at(&["summary", k]);
            Ok(Sample {
                work_ns,
                units,
                events: s("allocations").zip(s("frees")).map(|(a, f)| a + f),
                lost: s("lost_events"),
                tracer: Some((mexit.cpu, mexit.maxrss_bytes)),
                foreign: false,
                round: 0,
            })
        }
        Config::SystemWide => {
            let mut w = env.workload(&argv, &log, true)?;
            let before = proc::libc_text_anon_kib(w.pid).unwrap_or(0);
            let mut m = Proc::spawn(
                "memtrace --headless",
                &mut env.headless(),
                false,
                Sink::Lines,
                env.log(&log)?,
            )?;
            wait_planted(&w, &mut m, before, ATTACH_TIMEOUT)?;
            w.release();
            let wexit = w.wait(RUN_TIMEOUT)?;
            check(&mut w, &wexit)?;
            let (work_ns, units) = parse_work(&w.stdout_text())?;
            // Let a dashboard refresh see the exited workload, then stop.
            thread::sleep(Duration::from_millis(HEADLESS_DELAY_MS + 100));
            m.signal(SIGINT);
            let mexit = m.wait(Duration::from_secs(120))?;
            proc::wait_unplanted(Duration::from_secs(2));
            check(&mut m, &mexit)?;
            let summary = parse_summary(&m.stdout_text())?;
            let row = summary_row(&summary, w.pid);
            let n = |k| row.and_then(|r| r.u64_at(&[k]));
            Ok(Sample {
                work_ns,
                units,
                events: n("allocations").zip(n("frees")).map(|(a, f)| a + f),
                lost: summary.u64_at(&["lost_events"]),
                tracer: Some((mexit.cpu, mexit.maxrss_bytes)),
                foreign: false,
                round: 0,
            })
        }
        Config::Bpftrace => {
            let bpftrace = env.bpftrace.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut w = env.workload(&argv, &log, true)?;
            let before = proc::libc_text_anon_kib(w.pid).unwrap_or(0);
            let pid = w.pid.to_string();
            let mut cmd = Command::new(bpftrace);
            // bcc memleak's address map holds up to 1,000,000 entries;
            // bpftrace's default (4096) would drop most of them.
            cmd.env("BPFTRACE_MAP_KEYS_MAX", "1000000")
                .args(["-p", &pid])
                .arg(&env.bt_script)
                .arg(&pid);
            let out = Sink::log(&env.logs.join(format!("{log}.out")))?;
            let mut b = Proc::spawn("bpftrace", &mut cmd, false, out, env.log(&log)?)?;
            wait_planted(&w, &mut b, before, ATTACH_TIMEOUT)?;
            w.release();
            let wexit = w.wait(RUN_TIMEOUT)?;
            check(&mut w, &wexit)?;
            let (work_ns, units) = parse_work(&w.stdout_text())?;
            b.signal(SIGINT);
            // bpftrace prints its maps, then ends by SIGINT (status 130
            // or the signal itself).
            let bexit = b.wait(Duration::from_secs(120))?;
            proc::wait_unplanted(Duration::from_secs(2));
            Ok(Sample {
                work_ns,
                units,
                events: None,
                lost: None,
                tracer: Some((bexit.cpu, bexit.maxrss_bytes)),
                foreign: false,
                round: 0,
            })
        }
        Config::Heaptrack => {
            let heaptrack = env.heaptrack.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let out = env.tmp.join(format!("heaptrack-{}", wl.name));
            let mut cmd = Command::new(heaptrack);
            cmd.arg("-o").arg(&out).args(&argv).current_dir(&env.tmp);
            let mut h = Proc::spawn("heaptrack", &mut cmd, false, Sink::Lines, env.log(&log)?)?;
            let exit = h.wait(RUN_TIMEOUT);
            let text = h.stdout_text();
            for ext in ["", ".zst", ".gz"] {
                let _ = fs::remove_file(format!("{}{ext}", out.display()));
            }
            let exit = exit?;
            check(&mut h, &exit)?;
            let (work_ns, units) = parse_work(&text)?;
            Ok(Sample {
                work_ns,
                units,
                ..Sample::default()
            })
        }
    }
}

/// Waits for `memtrace report --pid`'s "attached to PID" line.
fn attached(m: &mut Proc) -> Result<()> {
    if m.wait_stderr(&|l| l.contains("attached to PID"), ATTACH_TIMEOUT)
        .is_some()
    {
        return Ok(());
    }
    if let Some(exit) = m.try_wait()? {
        bail!("{}", m.failure(&exit));
    }
    bail!("memtrace did not attach within {ATTACH_TIMEOUT:?}")
}

/// Peak RSS of memtrace while it tracks `held` outstanding allocations and
/// while it tracks none, per way of running it.
struct Memory {
    modes: Vec<MemoryMode>,
}

#[derive(Default)]
struct MemoryMode {
    label: &'static str,
    /// Peak RSS samples with `held` blocks outstanding.
    held: Vec<u64>,
    /// ... and with none.
    none: Vec<u64>,
    failures: Vec<String>,
}

fn outstanding_memory(env: &Env, held: u64, rounds: usize) -> Memory {
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
        let before = proc::libc_text_anon_kib(w.pid).unwrap_or(0);
        let mut m = Proc::spawn(
            "memtrace --headless",
            &mut env.headless(),
            false,
            Sink::Lines,
            env.log(&log)?,
        )?;
        wait_planted(&w, &mut m, before, ATTACH_TIMEOUT)?;
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
        let mut cmd = env.memtrace();
        cmd.args(["report", "--pid", &w.pid.to_string()])
            .args(["--format", "json", "-o"])
            .arg(&json);
        let mut m = Proc::spawn("memtrace", &mut cmd, false, Sink::Null, env.log(&log)?)?;
        attached(&mut m)?;
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

/// One run of the 16,384-stack workload.
#[derive(Clone, Copy, Default)]
struct StackRun {
    wall: Duration,
    work_ns: u64,
    stacks: u64,
    stack_failures: u64,
    bytes: u64,
}

struct Stacks {
    untraced: Vec<StackRun>,
    floor: Vec<StackRun>,
    report: Vec<StackRun>,
    failures: Vec<String>,
}

fn symbolization(env: &Env, rounds: usize) -> Stacks {
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

struct Rendering<'a> {
    machine: String,
    env: &'a Env,
    opts: &'a Options,
    workloads: &'a [Workload],
    cells: &'a BTreeMap<(usize, Config), Cell>,
    memory: &'a Memory,
    held: u64,
    stacks: &'a Stacks,
    load: (String, String),
    /// Other processes' share of the host's CPUs, and steal, during the run.
    others: Option<(f64, f64)>,
    elapsed: Duration,
}

/// The derived figures of one workload under one configuration.
struct Figures {
    work_ms: f64,
    /// (max − min) ÷ median of the rounds' work times.
    spread: Option<f64>,
    per_pair_ns: Option<f64>,
    ratio: Option<f64>,
    added_ns: Option<f64>,
    above_floor: Option<f64>,
    events_per_s: Option<f64>,
    lost: Option<u64>,
    cpu_ms: Option<f64>,
    rss: Option<f64>,
}

/// How far `cfg`'s added cost lies above `base`'s (its floor), as a
/// fraction of the floor's: the median over the rounds that measured
/// untraced, `base` and `cfg` of each round's own figure. Pairing within a
/// round cancels the drift of a shared host's speed over the minutes of a
/// bench, which medians taken per configuration keep. None with fewer than
/// three such rounds.
fn paired_above(
    cells: &BTreeMap<(usize, Config), Cell>,
    wi: usize,
    cfg: Config,
    base: Config,
) -> Option<f64> {
    let in_round = |c: Config, round: usize| {
        cells
            .get(&(wi, c))?
            .used()
            .into_iter()
            .find(|s| s.round == round)
            .map(|s| s.per_unit())
    };
    let ratios: Vec<f64> = cells
        .get(&(wi, cfg))?
        .used()
        .into_iter()
        .filter_map(|s| {
            let u = in_round(Config::Untraced, s.round)?;
            let f = in_round(base, s.round)?;
            (f > u).then(|| (s.per_unit() - u) / (f - u) - 1.0)
        })
        .collect();
    if ratios.len() < 3 {
        return None;
    }
    median(ratios)
}

fn figures(
    cells: &BTreeMap<(usize, Config), Cell>,
    wi: usize,
    wl: &Workload,
) -> BTreeMap<Config, Result<Figures, String>> {
    let per_unit = |cfg| {
        cells
            .get(&(wi, cfg))
            .and_then(|c: &Cell| median(c.used().into_iter().map(Sample::per_unit)))
    };
    // Pairs per unit: known, or memtrace's count (--pid: after the gate,
    // so the interpreter's start-up is not in it).
    let pairs_per_unit = wl.pairs_per_unit.or_else(|| {
        [Config::ReportPid, Config::Report]
            .iter()
            .find_map(|cfg| {
                let c = cells.get(&(wi, *cfg))?;
                median(
                    c.used()
                        .into_iter()
                        .filter_map(|s| s.events.map(|e| e as f64 / 2.0 / s.units.max(1) as f64)),
                )
            })
            .filter(|p| *p > 0.0)
    });
    let untraced = per_unit(Config::Untraced);
    let floor = per_unit(Config::Floor);
    let sampled_floor = per_unit(Config::SampledFloor);
    let mut out = BTreeMap::new();
    for cfg in CONFIGS {
        let Some(cell) = cells.get(&(wi, cfg)) else {
            continue;
        };
        let Some(pu) = per_unit(cfg) else {
            let reason = cell
                .failures
                .first()
                .cloned()
                .unwrap_or_else(|| "not run".into());
            out.insert(cfg, Err(reason));
            continue;
        };
        let ns_per_pair = |x: f64| pairs_per_unit.map(|p| x / p * wl.threads as f64);
        let traced = cfg != Config::Untraced;
        let samples = cell.used();
        out.insert(
            cfg,
            Ok(Figures {
                work_ms: median(samples.iter().map(|s| s.work_ns as f64 / 1e6)).unwrap_or(0.0),
                spread: {
                    let v: Vec<f64> = samples.iter().map(|s| s.per_unit()).collect();
                    let (lo, hi) = v
                        .iter()
                        .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
                    (v.len() > 1).then(|| (hi - lo) / pu)
                },
                per_pair_ns: ns_per_pair(pu),
                ratio: untraced.filter(|_| traced).map(|u| pu / u),
                added_ns: untraced
                    .filter(|_| traced)
                    .and_then(|u| ns_per_pair(pu - u)),
                above_floor: {
                    let base = match cfg {
                        Config::Report | Config::ReportPid | Config::SystemWide => {
                            Some((Config::Floor, floor))
                        }
                        // Sampled: above the traps it cannot avoid.
                        Config::Sampled => Some((Config::SampledFloor, sampled_floor)),
                        _ => None,
                    };
                    base.and_then(|(base_cfg, f)| {
                        paired_above(cells, wi, cfg, base_cfg).or_else(|| {
                            let (u, f) = (untraced?, f?);
                            (f > u).then(|| (pu - u) / (f - u) - 1.0)
                        })
                    })
                },
                events_per_s: median(samples.iter().filter_map(|s| {
                    s.events
                        .filter(|_| !matches!(cfg, Config::Floor | Config::SampledFloor))
                        .map(|e| e as f64 / (s.work_ns.max(1) as f64 / 1e9))
                })),
                lost: samples
                    .iter()
                    .filter_map(|s| s.lost)
                    .max()
                    .filter(|_| !matches!(cfg, Config::Floor | Config::SampledFloor)),
                cpu_ms: median(
                    samples
                        .iter()
                        .filter_map(|s| s.tracer.map(|t| t.0.as_secs_f64() * 1e3)),
                ),
                rss: median(samples.iter().filter_map(|s| s.tracer.map(|t| t.1 as f64))),
            }),
        );
    }
    out
}

/// `n/a (reason)`, the reason cut short.
fn na(reason: &str) -> String {
    let mut r: String = reason.chars().take(70).collect();
    if r.len() < reason.len() {
        r.push('…');
    }
    format!("n/a ({})", r.replace('|', "/"))
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "—".into(), f)
}

fn render(r: &Rendering) -> String {
    let mut md = String::new();
    let rounds = r.opts.rounds;
    let _ = writeln!(
        md,
        "## Overhead: `cargo xtask bench`{}\n",
        if r.opts.quick { " --quick" } else { "" }
    );
    let _ = writeln!(
        md,
        "{} · load average {} before, {} after{} · {:.1} min\n",
        r.machine,
        r.load.0,
        r.load.1,
        r.others.map_or_else(String::new, |(o, s)| format!(
            " · other processes used {:.0}% of the CPUs meanwhile (steal {:.0}%)",
            o * 100.0,
            s * 100.0
        )),
        r.elapsed.as_secs_f64() / 60.0
    );

    // The summary: ratios of the work phase's wall time to untraced.
    let mut cols = vec!["workload"];
    cols.extend(CONFIGS.iter().map(|c| c.column()));
    let mut summary = Md::new(&cols);
    let all: Vec<_> = r
        .workloads
        .iter()
        .enumerate()
        .map(|(wi, wl)| figures(r.cells, wi, wl))
        .collect();
    for (wl, figs) in r.workloads.iter().zip(&all) {
        let mut row = vec![format!("{} ({})", wl.name, wl.short)];
        for cfg in CONFIGS {
            row.push(match figs.get(&cfg) {
                None => "—".into(),
                Some(Err(reason)) => na(reason),
                Some(Ok(f)) if cfg == Config::Untraced => ms(f.work_ms),
                Some(Ok(f)) => opt(f.ratio, times),
            });
        }
        summary.row(row);
    }
    let _ = writeln!(
        md,
        "Work-phase wall time: untraced in ms, the others as a multiple of it (median of {rounds} round{}). \
         bpftrace runs smaller workloads¹.\n",
        if rounds == 1 { "" } else { "s" }
    );
    md.push_str(&summary.render());

    for (wl, figs) in r.workloads.iter().zip(&all) {
        let _ = writeln!(md, "\n### {}: {}\n", wl.name, wl.about);
        let mut t = Md::new(&[
            "configuration",
            "work",
            "spread",
            "per pair",
            "× untraced",
            "added per pair",
            "above floor",
            "events/s",
            "lost",
            "tracer CPU",
            "tracer peak RSS",
        ]);
        for cfg in CONFIGS {
            let Some(f) = figs.get(&cfg) else { continue };
            let label = if cfg.small() {
                format!("{} ({})", cfg.label(), wl.small_about)
            } else {
                cfg.label().to_owned()
            };
            let f = match f {
                Err(reason) => {
                    let mut row = vec![label, na(reason)];
                    row.extend(std::iter::repeat_n(String::new(), 9));
                    t.row(row);
                    continue;
                }
                Ok(f) => f,
            };
            t.row(vec![
                label,
                ms(f.work_ms),
                opt(f.spread, |x| format!("{:.0}%", x * 100.0)),
                opt(f.per_pair_ns, |x| format!("{} ns", sig3(x))),
                opt(f.ratio, times),
                opt(f.added_ns, |x| format!("{} ns", sig3(x))),
                opt(f.above_floor, percent),
                opt(f.events_per_s, rate),
                f.lost.map_or_else(|| "—".into(), thousands),
                opt(f.cpu_ms, ms),
                opt(f.rss, mib),
            ]);
        }
        md.push_str(&t.render());
    }

    // Memory per outstanding allocation.
    let _ = writeln!(
        md,
        "\n### memtrace's memory per outstanding allocation\n\n\
         `hold N` keeps N malloc(16) blocks until told to exit; memtrace's peak RSS (wait4) \
         with N = {} and with N = 0, difference ÷ N.\n",
        thousands(r.held)
    );
    let mut t = Md::new(&[
        "tracer",
        &format!("peak RSS, {} held", thousands(r.held)),
        "peak RSS, 0 held",
        "bytes per allocation",
    ]);
    for mode in &r.memory.modes {
        let label = mode.label;
        let b = median(mode.held.iter().map(|x| *x as f64));
        let z = median(mode.none.iter().map(|x| *x as f64));
        let per = b.zip(z).map(|(b, z)| (b - z) / r.held as f64);
        match (b, z, mode.failures.first()) {
            (Some(_), Some(_), _) | (_, _, None) => t.row(vec![
                label.to_owned(),
                opt(b, mib),
                opt(z, mib),
                opt(per, |x| format!("{x:.0}")),
            ]),
            (_, _, Some(reason)) => t.row(vec![
                label.to_owned(),
                na(reason),
                String::new(),
                String::new(),
            ]),
        }
    }
    md.push_str(&t.render());

    // Symbolization.
    let s = r.stacks;
    let wall = |v: &[StackRun]| median(v.iter().map(|x| x.wall.as_secs_f64() * 1e3));
    let after_work = |v: &[StackRun]| {
        median(
            v.iter()
                .map(|x| x.wall.as_secs_f64() * 1e3 - x.work_ns as f64 / 1e6),
        )
    };
    let _ = writeln!(
        md,
        "\n### Time to symbolize a report with 16,384 distinct stacks\n\n\
         `stacks` leaks one malloc(24) from each of 2^14 call paths (14 levels, each through \
         one of two functions). Whole-run wall times (spawn to exit).\n"
    );
    let mut t = Md::new(&[
        "run",
        "whole run",
        "work phase",
        "after the work phase",
        "stacks in report",
        "stack failures",
        "report size",
    ]);
    for (label, v) in [
        ("untraced", &s.untraced),
        ("`memtrace report --floor --`", &s.floor),
        ("`memtrace report --`", &s.report),
    ] {
        let full = std::ptr::eq(v, &s.report);
        t.row(vec![
            label.to_owned(),
            opt(wall(v), ms),
            opt(median(v.iter().map(|x| x.work_ns as f64 / 1e6)), ms),
            opt(after_work(v), ms),
            if full {
                opt(median(v.iter().map(|x| x.stacks as f64)), |x| {
                    thousands(x as u64)
                })
            } else {
                "—".into()
            },
            if full {
                opt(median(v.iter().map(|x| x.stack_failures as f64)), |x| {
                    thousands(x as u64)
                })
            } else {
                "—".into()
            },
            if full {
                opt(median(v.iter().map(|x| x.bytes as f64)), mib)
            } else {
                "—".into()
            },
        ]);
    }
    md.push_str(&t.render());
    if let Some(reason) = s.failures.first() {
        let _ = writeln!(md, "\nFailed runs: {}", na(reason));
    }
    let distinct = median(s.report.iter().map(|x| x.stacks as f64)).unwrap_or(0.0);
    if !s.report.is_empty() && distinct < 10_000.0 {
        let _ = writeln!(
            md,
            "\n**Warning: the report has only {} distinct stacks of 16,384** (fewer stacks \
             mean less to symbolize).",
            thousands(distinct as u64)
        );
    }
    let symb = after_work(&s.report)
        .zip(after_work(&s.floor))
        .map(|(a, b)| a - b);
    let total = wall(&s.report).zip(wall(&s.untraced)).map(|(a, b)| a - b);
    let _ = writeln!(
        md,
        "\nSymbolizing and writing the report: **{}** (the full report's time after the work phase \
         minus the floor's, which attaches the same probes but has nothing to report). \
         The whole run minus the untraced run: {} (this also counts attaching and tracing the \
         16,384 allocations).",
        opt(symb, ms),
        opt(total, ms)
    );

    // The targets, judged on this run.
    let mem_per_alloc = r.memory.modes.first().and_then(|m| {
        let b = median(m.held.iter().map(|x| *x as f64))?;
        let z = median(m.none.iter().map(|x| *x as f64))?;
        Some((b - z) / r.held as f64)
    });
    md.push_str(&targets(r, &all, symb, mem_per_alloc));

    md.push_str(&footnotes(r));
    md
}

type WorkloadFigures = BTreeMap<Config, std::result::Result<Figures, String>>;

/// The targets of the overhead issue, each with this run's figure and a
/// verdict.
fn targets(
    r: &Rendering,
    all: &[WorkloadFigures],
    symb_ms: Option<f64>,
    mem_per_alloc: Option<f64>,
) -> String {
    let fig = |wi: usize, cfg: Config| all.get(wi).and_then(|m| m.get(&cfg)?.as_ref().ok());
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "n/a",
    };
    let mut t = Md::new(&["target", "measured", "verdict"]);
    // Tight loop: extra cost above the floor.
    let above = fig(0, Config::Report).and_then(|f| f.above_floor);
    t.row(vec![
        "tight-1t: `report` above the floor ≤ 25% of the floor's cost".into(),
        opt(above, percent),
        verdict(above.map(|a| a <= 0.25)).into(),
    ]);
    // Added time against bpftrace's.
    for (wi, wl) in r.workloads.iter().enumerate() {
        let limit = if wi == 0 { 1.0 / 6.0 } else { 1.0 / 5.0 };
        let ratio = fig(wi, Config::Report)
            .and_then(|f| f.added_ns)
            .zip(fig(wi, Config::Bpftrace).and_then(|f| f.added_ns))
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| a / b);
        t.row(vec![
            format!(
                "{}: `report` added time ≤ 1/{} of bpftrace's",
                wl.name,
                if wi == 0 { 6 } else { 5 }
            ),
            opt(ratio, |x| format!("{x:.2}")),
            verdict(ratio.map(|x| x <= limit)).into(),
        ]);
    }
    let lost: Option<u64> = all
        .iter()
        .flat_map(|m| m.values().filter_map(|f| f.as_ref().ok()?.lost))
        .max();
    t.row(vec![
        "zero lost events (every workload and configuration)".into(),
        opt(lost.map(|l| l as f64), |x| thousands(x as u64)),
        verdict(lost.map(|l| l == 0)).into(),
    ]);
    t.row(vec![
        format!(
            "≤ 80 B of memory per outstanding allocation ({} held)",
            thousands(r.held)
        ),
        opt(mem_per_alloc, |x| format!("{x:.0} B")),
        verdict(mem_per_alloc.map(|x| x <= 80.0)).into(),
    ]);
    t.row(vec![
        "10,000-stack report symbolized in < 2 s (16,384 here)".into(),
        opt(symb_ms, ms),
        verdict(symb_ms.map(|x| x < 2000.0)).into(),
    ]);
    let sampled = fig(0, Config::Sampled).and_then(|f| f.above_floor);
    t.row(vec![
        "tight-1t: unsampled allocation ≤ 10% above its unavoidable traps".into(),
        opt(sampled, percent),
        verdict(sampled.map(|a| a <= 0.10)).into(),
    ]);
    format!("\n### Targets\n\n{}", t.render())
}

/// The machine, the versions measured and the start time (taken at the
/// start: memtrace's sources change while the benchmark runs).
fn machine(ctx: &Ctx, env: &Env) -> String {
    let probe = |prog: &str, args: &[&str]| {
        ctx.probe(&ctx.cmd(prog).args(args.iter().copied()))
            .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
            .unwrap_or_else(|| "?".into())
    };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let rev = probe("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = ctx
        .probe(&ctx.cmd("git").args([
            "status",
            "--porcelain",
            "--",
            "memtrace",
            "memtrace-ebpf",
            "memtrace-common",
        ]))
        .is_some_and(|s| !s.trim().is_empty());
    let tool = |t: &Result<PathBuf, String>| match t {
        Ok(p) => probe(&p.to_string_lossy(), &["--version"]),
        Err(e) => e.clone(),
    };
    format!(
        "{} · kernel {kernel} · {cpus} CPUs ({cpu}) · {} · memtrace {rev}{} (built {}) · {} · {} · {}",
        probe("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        probe("ldd", &["--version"]),
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        },
        env.built,
        tool(&env.bpftrace),
        tool(&env.heaptrack),
        probe(&env.python.to_string_lossy(), &["--version"]),
    )
}

fn footnotes(r: &Rendering) -> String {
    let mut f = String::from("\n#### How these were measured\n\n");
    let small: Vec<String> = r
        .workloads
        .iter()
        .map(|w| format!("{}: {}", w.name, w.small_about))
        .collect();
    let notes = [
        format!(
            "¹ bpftrace costs ~1000× more per allocator call, so it runs smaller workloads ({}); \
             its per-pair time is compared with the untraced full-size run's (work time ÷ units of \
             work, so the ratio and the per-pair figures extrapolate). Its script does what bcc's \
             memleak does for malloc/free: a uprobe on malloc saves the size by thread, a \
             uretprobe records address → size and `ustack`, a uprobe on free deletes both \
             (maps of up to 1,000,000 keys, like memleak's), on {}, filtered to the workload's \
             pid with `-p`. bpftrace 0.17 still plants these uprobes in every process (`-p` does \
             not scope them; measured), and probes free at +0, an instruction the kernel \
             single-steps.",
            small.join("; "),
            r.env.libc
        ),
        "Work: the workload's own clock_gettime (CPython: perf_counter_ns) around its work loop, \
         median of the rounds (spread: (slowest − fastest) ÷ median; raw figures of every run \
         in target/bench/latest-samples.tsv). Tracers that attach to a running process (`--pid`, system-wide, \
         bpftrace) find it waiting on a read of stdin and release it once attached: memtrace's \
         `attached to PID` line, or, for the system-wide tracers, once the libc text of the \
         waiting process has gained copied-on-write pages (the breakpoints) and kept them for \
         100 ms. `report -- CMD`, the floor and heaptrack launch the workload themselves."
            .to_owned(),
        "Per pair: work time ÷ allocator call pairs (calls ÷ 2; tight-2t: pairs of one thread, \
         i.e. the latency each thread sees). CPython's count is memtrace's (allocations + frees \
         ÷ 2 in the `--pid` report, which starts at the gate), so its per-pair figures are \
         interpreter time + allocator time per pair. × untraced: per-unit work time ÷ the \
         untraced one. Added per pair: per-pair time minus the untraced per-pair time."
            .to_owned(),
        "Above floor: memtrace's added time beyond the floor's, as a fraction of the floor's \
         own added time: (t − t_untraced) ÷ (t_floor − t_untraced) − 1, computed within each \
         round from that round's runs and reported as the median over rounds (pairing cancels \
         the drift of a shared host's speed between rounds). The floor (`--floor`) \
         attaches the same probes at the same offsets with eBPF programs that return at once: \
         the cost of the uprobe traps alone. The sampled row is compared the same way with the \
         sampled floor (`--floor --sample-bytes`): the entry trap and the free's, the traps an \
         unsampled allocation cannot avoid."
            .to_owned(),
        format!(
            "events/s: allocations + frees in memtrace's report (system-wide: the workload's row \
             of the `--headless` summary) ÷ work time. lost: the largest lost_events of the \
             rounds (system-wide: of the whole host). The dashboard refreshes every {HEADLESS_DELAY_MS} ms in these runs."
        ),
        "Tracer CPU and peak RSS: user + system time and ru_maxrss of the tracer process from \
         wait4, for the tracers that are not the workload's parent (wait4's rusage of a parent \
         includes the children it reaped, so the launch-mode rows leave them blank: see the \
         `--pid` row). The probes' own cost is not in them: eBPF programs run in the traced \
         thread, so it is in the work time. heaptrack runs in-process (LD_PRELOAD) and streams \
         to its own helper; its cost is all in the work time."
            .to_owned(),
        "System-wide configurations (memtrace `--headless`, bpftrace) slow every process on the \
         host while attached; they are started right before the work phase and stopped right \
         after. On a shared machine other processes' allocations count in their CPU time."
            .to_owned(),
    ];
    for n in notes {
        let _ = writeln!(f, "- {n}");
    }
    let (foreign, runs) = (r.env.foreign_runs.get(), r.env.runs.get());
    if foreign > 0 {
        let _ = writeln!(
            f,
            "- **{foreign} of {runs} runs had another tracer's system-wide probes attached on the \
             host** (someone else's; they slow every process). The medians leave such runs out \
             where the same workload and configuration has runs without."
        );
    }
    let waited = r.env.waited.get();
    if !waited.is_zero() {
        let _ = writeln!(
            f,
            "- The benchmark waited {:.1} min in all for other tracers' system-wide probes to go.",
            waited.as_secs_f64() / 60.0
        );
    }
    f
}
