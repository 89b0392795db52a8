//! One run of a workload under one configuration, its figures
//! ([`Sample`]) and the readers of the workloads' and tracers' output.

use std::{fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    ATTACH_TIMEOUT, HEADLESS_DELAY_MS, RUN_TIMEOUT,
    env::Env,
    json::Json,
    proc::{self, Exit, Proc, SIGINT, Sink, wait_planted},
    workloads::{Config, SAMPLE_BYTES, Workload},
};

/// One run's figures.
#[derive(Clone, Debug, Default)]
pub(super) struct Sample {
    pub(super) work_ns: u64,
    /// Units of work done (allocator calls for the C workloads).
    pub(super) units: u64,
    /// Allocations + frees memtrace saw for the workload.
    pub(super) events: Option<u64>,
    pub(super) lost: Option<u64>,
    /// The tracer's own CPU time and peak RSS (wait4), when it is not the
    /// workload's parent (a parent's rusage includes its reaped children).
    pub(super) tracer: Option<(Duration, u64)>,
    /// Another tracer had system-wide probes attached before or after.
    pub(super) foreign: bool,
    /// The round it was measured in.
    pub(super) round: usize,
}

impl Sample {
    pub(super) fn per_unit(&self) -> f64 {
        self.work_ns as f64 / self.units.max(1) as f64
    }
}

#[derive(Default)]
pub(super) struct Cell {
    pub(super) samples: Vec<Sample>,
    pub(super) failures: Vec<String>,
}

impl Cell {
    /// The samples the figures use: those without a foreign tracer on the
    /// host if there are any, else all.
    pub(super) fn used(&self) -> Vec<&Sample> {
        let clean: Vec<&Sample> = self.samples.iter().filter(|s| !s.foreign).collect();
        if clean.is_empty() {
            self.samples.iter().collect()
        } else {
            clean
        }
    }
}

/// `work_ns=N calls=N [units=N]` from a workload's output.
pub(super) fn parse_work(out: &str) -> Result<(u64, u64)> {
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

pub(super) fn read_json(path: &Path) -> Result<Json> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Json::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A headless summary on stdout: the JSON object from the first `{`.
pub(super) fn parse_summary(stdout: &str) -> Result<Json> {
    let start = stdout
        .find('{')
        .context("memtrace --headless printed no summary")?;
    Json::parse(&stdout[start..]).context("parsing the --headless summary")
}

/// The summary's row of process `pid`.
pub(super) fn summary_row(summary: &Json, pid: i32) -> Option<&Json> {
    summary
        .get("top")?
        .array()?
        .iter()
        .find(|r| r.u64_at(&["pid"]) == Some(pid as u64))
}

pub(super) fn check(p: &mut Proc, exit: &Exit) -> Result<()> {
    if exit.success() {
        Ok(())
    } else {
        bail!("{}", p.failure(exit))
    }
}

/// One run of `wl` under `cfg`.
pub(super) fn run(env: &Env, wl: &Workload, cfg: Config) -> Result<Sample> {
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
            let work = parse_work(&m.stdout_text())?;
            report_sample(&json, work, None)
        }
        Config::ReportPid => {
            let json = env.tmp.join(format!("{log}.json"));
            let _ = fs::remove_file(&json);
            let mut w = env.workload(&argv, &log, true)?;
            let mut m = env.start_report_pid(&w, &json, &log)?;
            w.release();
            let wexit = w.wait(RUN_TIMEOUT)?;
            check(&mut w, &wexit)?;
            let work = parse_work(&w.stdout_text())?;
            // memtrace stops when the process exits.
            let mexit = m.wait(Duration::from_secs(120))?;
            check(&mut m, &mexit)?;
            report_sample(&json, work, Some((mexit.cpu, mexit.maxrss_bytes)))
        }
        Config::SystemWide => {
            let mut w = env.workload(&argv, &log, true)?;
            let mut m = env.start_headless(&w, &log)?;
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
        Config::Bpftrace | Config::BpftraceMallocFree => {
            let bpftrace = env.bpftrace.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut w = env.workload(&argv, &log, true)?;
            let before = proc::libc_text_anon_kib(w.pid).unwrap_or(0);
            let pid = w.pid.to_string();
            let mut cmd = Command::new(bpftrace);
            // bcc memleak's address map holds up to 1,000,000 entries;
            // bpftrace's default (4096) would drop most of them.
            cmd.env("BPFTRACE_MAP_KEYS_MAX", "1000000")
                .args(["-p", &pid])
                .arg(if cfg == Config::Bpftrace {
                    &env.bt_script
                } else {
                    &env.bt_script_malloc_free
                })
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

/// A sample from a `memtrace report` JSON file (removed once read) and the
/// workload's (work_ns, units).
fn report_sample(
    json: &Path,
    (work_ns, units): (u64, u64),
    tracer: Option<(Duration, u64)>,
) -> Result<Sample> {
    let report = read_json(json)?;
    let _ = fs::remove_file(json);
    let s = |k| report.u64_at(&["summary", k]);
    Ok(Sample {
        work_ns,
        units,
        events: s("allocations").zip(s("frees")).map(|(a, f)| a + f),
        lost: s("lost_events"),
        tracer,
        foreign: false,
        round: 0,
    })
}
