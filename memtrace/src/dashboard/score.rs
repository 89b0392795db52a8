//! Per-process history of outstanding bytes, and the leak evidence drawn
//! from it: growth over a sliding window, how steady that growth is, and
//! the leak score. Pure: samples in, numbers out.

use std::collections::VecDeque;

/// One refresh's reading of a process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub t_ns: u64,
    pub outstanding_bytes: u64,
    /// Cumulative allocations and frees seen.
    pub allocations: u64,
    pub frees: u64,
}

/// Samples of one process, oldest first, bounded.
#[derive(Clone, Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

/// How many samples a history keeps (the chart's span at 1 s refresh).
pub const KEEP: usize = 600;

impl History {
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    pub fn last(&self) -> Option<&Sample> {
        self.samples.back()
    }

    fn window(&self, window_ns: u64) -> impl Iterator<Item = &Sample> + Clone {
        let end = self.samples.back().map_or(0, |s| s.t_ns);
        let start = end.saturating_sub(window_ns);
        self.samples.iter().filter(move |s| s.t_ns >= start)
    }

    /// Least-squares slope of outstanding bytes over the window, bytes/s.
    pub fn growth(&self, window_ns: u64) -> f64 {
        let w: Vec<&Sample> = self.window(window_ns).collect();
        if w.len() < 2 {
            return 0.0;
        }
        let t0 = w[0].t_ns;
        let n = w.len() as f64;
        let xs: Vec<f64> = w.iter().map(|s| (s.t_ns - t0) as f64 / 1e9).collect();
        let ys: Vec<f64> = w.iter().map(|s| s.outstanding_bytes as f64).collect();
        let mx = xs.iter().sum::<f64>() / n;
        let my = ys.iter().sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (x, y) in xs.iter().zip(&ys) {
            sxy += (x - mx) * (y - my);
            sxx += (x - mx) * (x - mx);
        }
        if sxx == 0.0 { 0.0 } else { sxy / sxx }
    }

    /// Fraction of the window's intervals in which outstanding bytes grew
    /// (1.0: grew every time; churn and plateaus score low).
    pub fn steadiness(&self, window_ns: u64) -> f64 {
        let w: Vec<&Sample> = self.window(window_ns).collect();
        if w.len() < 2 {
            return 0.0;
        }
        let up = w
            .windows(2)
            .filter(|p| p[1].outstanding_bytes > p[0].outstanding_bytes)
            .count();
        up as f64 / (w.len() - 1) as f64
    }

    /// Allocations and frees per second over the window.
    pub fn rates(&self, window_ns: u64) -> (f64, f64) {
        let mut w = self.window(window_ns);
        let (Some(first), Some(last)) = (w.next(), self.samples.back()) else {
            return (0.0, 0.0);
        };
        let dt = (last.t_ns.saturating_sub(first.t_ns)) as f64 / 1e9;
        if dt <= 0.0 {
            return (0.0, 0.0);
        }
        (
            last.allocations.saturating_sub(first.allocations) as f64 / dt,
            last.frees.saturating_sub(first.frees) as f64 / dt,
        )
    }

    /// (seconds since `origin_ns`, outstanding bytes), oldest first.
    pub fn chart(&self, origin_ns: u64) -> Vec<(f64, u64)> {
        self.samples
            .iter()
            .map(|s| {
                (
                    s.t_ns.saturating_sub(origin_ns) as f64 / 1e9,
                    s.outstanding_bytes,
                )
            })
            .collect()
    }
}

/// The leak score, in bytes per second of evidence: steady growth counts
/// fully, growth that comes and goes counts by how steady it is, shrinking
/// or flat memory counts nothing; memory that has stayed allocated longer
/// than the window breaks ties (1 GiB of it weighs like 1 byte/s), so a
/// large but static process ranks below any steady leak and above idle ones.
pub fn leak_score(growth: f64, steadiness: f64, old_bytes: u64) -> f64 {
    let growth = if growth.is_finite() {
        growth.max(0.0)
    } else {
        0.0
    };
    growth * steadiness.clamp(0.0, 1.0) + old_bytes as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn hist(bytes: &[u64]) -> History {
        let mut h = History::default();
        for (i, &b) in bytes.iter().enumerate() {
            h.push(Sample {
                t_ns: i as u64 * S,
                outstanding_bytes: b,
                allocations: i as u64 * 10,
                frees: i as u64 * 4,
            });
        }
        h
    }

    #[test]
    fn steady_leak_has_full_growth_and_steadiness() {
        let h = hist(&[0, 100, 200, 300, 400]);
        assert!((h.growth(30 * S) - 100.0).abs() < 1e-9);
        assert_eq!(h.steadiness(30 * S), 1.0);
        assert_eq!(h.rates(30 * S), (10.0, 4.0));
    }

    #[test]
    fn churn_scores_below_a_small_steady_leak() {
        let churn = hist(&[0, 50_000, 0, 50_000, 0, 50_000, 0]);
        let leak = hist(&[0, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000]);
        let w = 30 * S;
        let churn_score = leak_score(churn.growth(w), churn.steadiness(w), 0);
        let leak_score_ = leak_score(leak.growth(w), leak.steadiness(w), 0);
        assert!(leak_score_ > churn_score, "{leak_score_} vs {churn_score}");
    }

    #[test]
    fn large_static_memory_ranks_below_a_steady_leak() {
        let big = hist(&[1 << 30; 10]);
        let leak = hist(&[
            0, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000,
        ]);
        let w = 30 * S;
        let big_score = leak_score(big.growth(w), big.steadiness(w), 1 << 30);
        let leak_score_ = leak_score(leak.growth(w), leak.steadiness(w), 0);
        assert_eq!(big.growth(w), 0.0);
        assert!(big_score > 0.0);
        assert!(leak_score_ > big_score, "{leak_score_} vs {big_score}");
    }

    #[test]
    fn window_limits_what_counts() {
        // Grew long ago, flat since.
        let mut bytes = vec![0, 1000, 2000, 3000];
        bytes.extend([3000; 40]);
        let h = hist(&bytes);
        assert_eq!(h.growth(10 * S), 0.0);
        assert_eq!(h.steadiness(10 * S), 0.0);
    }

    #[test]
    fn degenerate_histories() {
        let h = History::default();
        assert_eq!(
            (h.growth(S), h.steadiness(S), h.rates(S)),
            (0.0, 0.0, (0.0, 0.0))
        );
        let h = hist(&[5]);
        assert_eq!(h.growth(S), 0.0);
        assert_eq!(leak_score(f64::NAN, 1.0, 0), 0.0);
        assert_eq!(leak_score(-5.0, 1.0, 0), 0.0);
    }

    #[test]
    fn history_is_bounded() {
        let h = hist(&vec![1; KEEP + 50]);
        assert_eq!(h.chart(0).len(), KEEP);
    }
}
