//! The floor and tracing compared within one traced process. `memtrace
//! report --floor-phases FILE` switches its probe programs between the
//! floor (they return at once) and tracing every 100 ms and logs the
//! switches; the `laps` workload times laps of the tight loop on the same
//! clock. Each traced phase is compared with the floor phases on either
//! side of it, a fraction of a second apart, where separate runs of the
//! floor and of tracing are seconds apart and a shared host's speed drifts
//! by more than their difference in that time.

use std::fs;

use anyhow::{Context as _, Result, bail};

use super::{
    RUN_TIMEOUT,
    env::Env,
    proc::{Proc, Sink},
    report::{na, opt},
    run::check,
    table::{Md, median, percent, sig3, thousands},
    workloads::SAMPLE_BYTES,
};
use crate::ctx::say;

/// Laps of the `laps` workload and pairs per lap (~6 ms a lap traced, so
/// ~15 laps a phase).
const PAIRS_PER_LAP: u64 = 2000;

/// Laps a phase must hold whole for its median to count.
const MIN_LAPS: usize = 3;

/// One mode's comparison, over every run.
#[derive(Default)]
pub(super) struct PhasedFigure {
    /// Per traced phase: its cost per pair above the mean of the floor
    /// phases on either side, as a fraction of their cost above untraced.
    pub(super) ratios: Vec<f64>,
    /// Per-pair medians of the floor phases and of the traced phases.
    pub(super) floor_pp: Vec<f64>,
    pub(super) trace_pp: Vec<f64>,
}

impl PhasedFigure {
    pub(super) fn median(&self) -> Option<f64> {
        median(self.ratios.iter().copied())
    }

    /// The first and third quartiles of the ratios.
    pub(super) fn quartiles(&self) -> Option<(f64, f64)> {
        let mut v = self.ratios.clone();
        if v.len() < 4 {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some((v[v.len() / 4], v[(3 * v.len()) / 4]))
    }
}

pub(super) struct Phased {
    /// `report` against the floor.
    pub(super) full: Result<PhasedFigure, String>,
    /// `report --sample-bytes` against the sampled floor.
    pub(super) sampled: Result<PhasedFigure, String>,
    pub(super) runs: usize,
    pub(super) laps: u64,
}

impl Phased {
    /// The section of the Markdown report.
    pub(super) fn render(&self) -> String {
        let mut md = format!(
            "\n### Above the floor, within one process\n\n`memtrace report --floor-phases` \
             switches its probe programs between the floor and tracing every 100 ms; `laps` \
             runs the tight loop ({} laps of {} malloc(64)/free pairs, each timed). Each \
             traced phase is compared with the mean of the floor phases before and after it \
             (phases with at least {MIN_LAPS} whole laps; {} run(s) per row): (traced − floor) \
             ÷ (floor − untraced), per pair.\n\n",
            thousands(self.laps),
            thousands(PAIRS_PER_LAP),
            self.runs
        );
        let mut t = Md::new(&[
            "configuration",
            "traced phases",
            "floor per pair",
            "traced per pair",
            "above the floor (median)",
            "middle half of the phases",
        ]);
        for (label, fig) in [
            ("`report` against the floor", &self.full),
            (
                "`report --sample-bytes 512KiB` against the sampled floor",
                &self.sampled,
            ),
        ] {
            match fig {
                Ok(f) => t.row(vec![
                    label.into(),
                    thousands(f.ratios.len() as u64),
                    opt(median(f.floor_pp.iter().copied()), ns),
                    opt(median(f.trace_pp.iter().copied()), ns),
                    opt(f.median(), percent),
                    f.quartiles().map_or_else(
                        || "—".into(),
                        |(a, b)| format!("{} … {}", percent(a), percent(b)),
                    ),
                ]),
                Err(e) => t.row(vec![
                    label.into(),
                    na(e),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                ]),
            }
        }
        md.push_str(&t.render());
        md
    }
}

fn ns(x: f64) -> String {
    format!("{} ns", sig3(x))
}

/// Run both comparisons `runs` times; `untraced_pp`: the untraced tight
/// loop's time per pair (ns).
pub(super) fn phased(env: &Env, quick: bool, runs: usize, untraced_pp: f64) -> Phased {
    let laps = if quick { 300 } else { 1500 };
    let one = |sampled: bool| -> Result<PhasedFigure, String> {
        let mut fig = PhasedFigure::default();
        let mut failures = Vec::new();
        for round in 0..runs {
            let what = format!(
                "phased {} round {}/{runs}",
                if sampled { "sampled" } else { "report" },
                round + 1
            );
            match once(env, sampled, laps) {
                Ok((switches, lap_times)) => {
                    let n = analyse(&switches, &lap_times, untraced_pp, &mut fig);
                    say!("bench: {what}: {n} traced phases between floor phases");
                }
                Err(e) => {
                    let reason = format!("{e:#}").replace('\n', " ");
                    say!("bench: {what}: n/a ({reason})");
                    failures.push(reason);
                }
            }
        }
        if fig.ratios.is_empty() {
            return Err(failures
                .into_iter()
                .next()
                .unwrap_or_else(|| "no traced phase lay between two floor phases".into()));
        }
        Ok(fig)
    };
    let full = one(false);
    let sampled = one(true);
    Phased {
        full,
        sampled,
        runs,
        laps,
    }
}

/// One traced run: the switches (time, floor?) and the laps (start, end).
#[allow(clippy::type_complexity)]
fn once(env: &Env, sampled: bool, laps: u64) -> Result<(Vec<(u64, bool)>, Vec<(u64, u64)>)> {
    let log = if sampled { "phased-sampled" } else { "phased" };
    let switches = env.tmp.join(format!("{log}.switches"));
    let report = env.tmp.join(format!("{log}.txt"));
    let _ = fs::remove_file(&switches);
    let mut cmd = env.memtrace();
    cmd.arg("report").arg("--floor-phases").arg(&switches);
    if sampled {
        cmd.args(["--sample-bytes", SAMPLE_BYTES]);
    }
    cmd.arg("-o")
        .arg(&report)
        .arg("--")
        .arg(env.bin.join("laps"))
        .args([laps.to_string(), PAIRS_PER_LAP.to_string()])
        .current_dir(&env.tmp);
    let mut m = Proc::spawn("memtrace", &mut cmd, false, Sink::Lines, env.log(log)?)?;
    let exit = m.wait(RUN_TIMEOUT)?;
    check(&mut m, &exit)?;
    let _ = fs::remove_file(&report);
    let lap_times = parse_laps(&m.stdout_text())?;
    let text =
        fs::read_to_string(&switches).with_context(|| format!("reading {}", switches.display()))?;
    let switches = parse_switches(&text)?;
    if lap_times.len() as u64 != laps {
        bail!("the workload printed {} laps of {laps}", lap_times.len());
    }
    Ok((switches, lap_times))
}

fn parse_laps(out: &str) -> Result<Vec<(u64, u64)>> {
    out.lines()
        .filter_map(|l| l.strip_prefix("lap "))
        .map(|l| {
            let mut w = l.split_whitespace().map(str::parse::<u64>);
            match (w.next(), w.next()) {
                (Some(Ok(a)), Some(Ok(b))) if b >= a => Ok((a, b)),
                _ => bail!("bad lap line {l:?}"),
            }
        })
        .collect()
}

fn parse_switches(text: &str) -> Result<Vec<(u64, bool)>> {
    text.lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            match (w.next().map(str::parse::<u64>), w.next()) {
                (Some(Ok(t)), Some("floor")) => Ok((t, true)),
                (Some(Ok(t)), Some("trace")) => Ok((t, false)),
                _ => bail!("bad switch line {l:?}"),
            }
        })
        .collect()
}

/// Add one run's phases to `fig`; returns how many traced phases counted.
fn analyse(
    switches: &[(u64, bool)],
    laps: &[(u64, u64)],
    untraced_pp: f64,
    fig: &mut PhasedFigure,
) -> usize {
    // Per phase (between two switches): whether it is a floor phase, and
    // the median time per pair of the laps wholly inside it.
    let phases: Vec<Option<(bool, f64)>> = switches
        .windows(2)
        .map(|w| {
            let ((start, floor), (end, _)) = (w[0], w[1]);
            let inside: Vec<f64> = laps
                .iter()
                .filter(|(a, b)| *a >= start && *b <= end)
                .map(|(a, b)| (b - a) as f64 / PAIRS_PER_LAP as f64)
                .collect();
            (inside.len() >= MIN_LAPS)
                .then(|| median(inside))
                .flatten()
                .map(|m| (floor, m))
        })
        .collect();
    let mut n = 0;
    for w in phases.windows(3) {
        let (Some((true, before)), Some((false, traced)), Some((true, after))) = (w[0], w[1], w[2])
        else {
            continue;
        };
        let floor = (before + after) / 2.0;
        if floor <= untraced_pp {
            continue;
        }
        fig.ratios.push((traced - floor) / (floor - untraced_pp));
        fig.trace_pp.push(traced);
        n += 1;
    }
    fig.floor_pp.extend(
        phases
            .iter()
            .filter_map(|p| p.filter(|(floor, _)| *floor).map(|(_, m)| m)),
    );
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traced_phases_are_compared_with_the_floor_on_both_sides() {
        // Four phases: floor, trace, floor, trace (the last has no floor
        // after it). Each holds 4 laps: 1000 ns a pair in the floor
        // phases, 1250 in the traced ones.
        let p = PAIRS_PER_LAP;
        let len = 5 * 1250 * p;
        let switches: Vec<(u64, bool)> = (0..5).map(|i| (i * len, i % 2 == 0)).collect();
        let mut laps = Vec::new();
        for phase in 0..4u64 {
            let per_pair = if phase % 2 == 0 { 1000 } else { 1250 };
            for k in 0..4 {
                let a = phase * len + k * per_pair * p;
                laps.push((a, a + per_pair * p));
            }
        }
        let mut fig = PhasedFigure::default();
        let n = analyse(&switches, &laps, 0.0, &mut fig);
        assert_eq!(
            n, 1,
            "only the first traced phase has floor phases on both sides"
        );
        assert_eq!(fig.median(), Some(0.25));
        assert_eq!(fig.floor_pp, [1000.0, 1000.0]);
        assert_eq!(fig.trace_pp, [1250.0]);
        // With the untraced cost known: (1250 - 1000) / (1000 - 200).
        let mut fig = PhasedFigure::default();
        analyse(&switches, &laps, 200.0, &mut fig);
        assert_eq!(fig.median(), Some(0.3125));
    }

    #[test]
    fn laps_and_switches_parse_and_reject_garbage() {
        assert_eq!(
            parse_laps("ready\nlap 1 5\nlap 5 9\nwork_ns=8 calls=4\n").ok(),
            Some(vec![(1, 5), (5, 9)])
        );
        assert!(parse_laps("lap 5 1\n").is_err());
        assert_eq!(
            parse_switches("10 floor\n20 trace\n").ok(),
            Some(vec![(10, true), (20, false)])
        );
        assert!(parse_switches("10 floored\n").is_err());
    }
}
