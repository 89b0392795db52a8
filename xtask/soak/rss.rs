//! Whether memtrace's RSS stayed flat after warm-up.

use super::{RSS_BUDGET_FRACTION, RSS_MIN_BUDGET};

/// Least-squares slope of (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// RSS after warm-up: the sample at 25 % of the run is the reference; the
/// largest sample of the second half may exceed it by the budget at most.
pub(super) struct RssVerdict {
    pub(super) first: u64,
    pub(super) warm: u64,
    pub(super) warm_t: f64,
    pub(super) late_max: u64,
    pub(super) end: u64,
    pub(super) budget: u64,
    /// Bytes per minute after warm-up.
    pub(super) slope: f64,
    pub(super) pass: bool,
}

pub(super) fn rss_verdict(rss: &[(f64, u64)], ran: f64) -> Option<RssVerdict> {
    let first = rss.first()?.1;
    let (warm_t, warm) = *rss.iter().find(|s| s.0 >= ran * 0.25)?;
    let late_max = rss.iter().filter(|s| s.0 >= ran * 0.5).map(|s| s.1).max()?;
    let budget = ((warm as f64 * RSS_BUDGET_FRACTION) as u64).max(RSS_MIN_BUDGET);
    let after: Vec<(f64, f64)> = rss
        .iter()
        .filter(|s| s.0 >= warm_t)
        .map(|s| (s.0 / 60.0, s.1 as f64))
        .collect();
    Some(RssVerdict {
        first,
        warm,
        warm_t,
        late_max,
        end: rss.last()?.1,
        budget,
        slope: slope(&after),
        pass: late_max <= warm + budget,
    })
}
