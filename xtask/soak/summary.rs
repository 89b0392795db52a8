//! memtrace's headless JSON summary, read with the std-only [`Json`]
//! reader.

use super::json::Json;

/// memtrace's headless summary.
#[derive(Debug, Default)]
pub(super) struct Summary {
    pub(super) attach_ms: u64,
    pub(super) watched_ms: u64,
    pub(super) events: u64,
    pub(super) events_per_s: f64,
    pub(super) lost_events: u64,
    pub(super) stack_failures: u64,
    pub(super) untracked_frees: u64,
    pub(super) processes: u64,
    pub(super) cpu_percent: f64,
    pub(super) rss_bytes: u64,
    /// Newer memtraces: outstanding entries held over all processes.
    pub(super) tracked_allocations: Option<u64>,
    pub(super) top: Vec<Row>,
}

#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) pid: u32,
    pub(super) comm: String,
    pub(super) outstanding_bytes: u64,
    pub(super) outstanding_allocations: u64,
    pub(super) growth_bytes_per_s: f64,
    pub(super) leak_score: f64,
    pub(super) allocations: u64,
    pub(super) frees: u64,
    pub(super) exited: bool,
}

pub(super) fn parse_summary(text: &str) -> Result<Summary, String> {
    let j = Json::parse(text).map_err(|e| format!("memtrace's JSON: {e}: {text:?}"))?;
    let u = |v: &Json, k: &str| -> Result<u64, String> {
        v.get(k)
            .and_then(Json::as_u64)
            .ok_or(format!("memtrace's JSON: no integer {k}"))
    };
    let f = |v: &Json, k: &str| -> Result<f64, String> {
        v.get(k)
            .and_then(Json::as_f64)
            .ok_or(format!("memtrace's JSON: no number {k}"))
    };
    let mut top = Vec::new();
    for r in j.get("top").and_then(Json::as_array).ok_or("no top")? {
        top.push(Row {
            pid: u(r, "pid")? as u32,
            comm: r
                .get("comm")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned(),
            outstanding_bytes: u(r, "outstanding_bytes")?,
            outstanding_allocations: u(r, "outstanding_allocations")?,
            growth_bytes_per_s: f(r, "growth_bytes_per_s")?,
            leak_score: f(r, "leak_score")?,
            allocations: u(r, "allocations")?,
            frees: u(r, "frees")?,
            exited: matches!(r.get("exited"), Some(Json::Bool(true))),
        });
    }
    Ok(Summary {
        attach_ms: u(&j, "attach_ms")?,
        watched_ms: u(&j, "watched_ms")?,
        events: u(&j, "events")?,
        events_per_s: f(&j, "events_per_s")?,
        lost_events: u(&j, "lost_events")?,
        stack_failures: u(&j, "stack_failures")?,
        untracked_frees: u(&j, "untracked_frees")?,
        processes: u(&j, "processes")?,
        cpu_percent: f(&j, "cpu_percent")?,
        rss_bytes: u(&j, "rss_bytes")?,
        tracked_allocations: j.get("tracked_allocations").and_then(Json::as_u64),
        top,
    })
}
