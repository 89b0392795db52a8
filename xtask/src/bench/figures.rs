//! The figures derived from the runs of one workload: medians, ratios to
//! untraced, the cost per allocator call pair and the cost above the floor.

use std::collections::BTreeMap;

use super::{
    run::{Cell, Sample},
    table::median,
    workloads::{CONFIGS, Config, Workload},
};

/// The derived figures of one workload under one configuration.
pub(super) struct Figures {
    pub(super) work_ms: f64,
    /// (max − min) ÷ median of the rounds' work times.
    pub(super) spread: Option<f64>,
    pub(super) per_pair_ns: Option<f64>,
    pub(super) ratio: Option<f64>,
    pub(super) added_ns: Option<f64>,
    pub(super) above_floor: Option<f64>,
    pub(super) events_per_s: Option<f64>,
    pub(super) lost: Option<u64>,
    pub(super) cpu_ms: Option<f64>,
    pub(super) rss: Option<f64>,
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

pub(super) fn figures(
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
