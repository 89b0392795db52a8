//! Judging a run: the numbers of the report and every check of
//! [`evaluate`].

use std::{collections::HashMap, fmt::Write as _, time::Duration};

use super::{
    Check, Config, EXIT_GRACE, FOREIGN_BUSY, Outcome, RATE_TOLERANCE, RSS_BUDGET_FRACTION,
    RSS_MIN_BUDGET, TOP_ROWS, Verdict,
    collect::Collected,
    format::{mib, secs, signed_mib, thousands},
    rss::rss_verdict,
    summary::{Row, Summary},
    truth::Truth,
};

/// The ground truth of the workload process `row` belongs to, if any: the
/// latest process with its pid, when the names agree (memtrace shows "?"
/// for a process that exited before its name was read).
fn truth_of<'a>(row: &Row, by_pid: &HashMap<u32, &'a Truth>) -> Option<&'a Truth> {
    by_pid
        .get(&row.pid)
        .copied()
        .filter(|t| row.comm == t.comm || row.comm == "?")
}

pub(super) fn evaluate(cfg: &Config, c: &Collected, s: &Summary) -> Outcome {
    let mut checks = Vec::new();
    let mut text = String::new();
    let p = &cfg.prefix;
    let ran = c.ran.as_secs_f64();

    let mut by_pid: HashMap<u32, &Truth> = HashMap::new();
    for t in &c.truths {
        by_pid.insert(t.pid, t); // sorted by seq: the latest wins
    }
    let leakers: Vec<&Truth> = c.truths.iter().filter(|t| t.role == "leaker").collect();
    let children: Vec<&Truth> = c.truths.iter().filter(|t| t.role == "child").collect();
    let leaking_children = children.iter().filter(|t| t.rate > 0).count();
    let wl_allocs: u64 = c.truths.iter().map(|t| t.allocs).sum();
    let wl_frees: u64 = c.truths.iter().map(|t| t.frees).sum();
    let wl_leaked: u64 = c.truths.iter().map(|t| t.leaked_bytes).sum();
    let cpu_ms = |k: &str| -> Option<u64> { c.parent_final.get(k)?.parse().ok() };
    let wl_cpu = cpu_ms("children_cpu_ms").map(|ms| ms + cpu_ms("parent_cpu_ms").unwrap_or(0));
    // Events of the workload: one per allocator call (a realloc is one
    // call but counts an allocation and a free), one exec per worker, one
    // exit per exited worker, the parent's exec.
    let wl_events: u64 = c
        .truths
        .iter()
        .map(|t| t.allocs + t.frees - t.reallocs + 1 + u64::from(t.state == "exited"))
        .sum::<u64>()
        + 1;
    let foreign = s.events.saturating_sub(wl_events);
    let foreign_share = foreign as f64 / s.events.max(1) as f64;

    let _ = writeln!(
        text,
        "{p} {} of workload; memtrace attached {:.2}s after start (attach_ms {}), watched {:.1}s",
        secs(c.ran),
        c.attach_wait.as_secs_f64(),
        s.attach_ms,
        s.watched_ms as f64 / 1000.0
    );
    let _ = writeln!(
        text,
        "{p} workload: {} processes ({} leakers, {} children of which {} leaking), \
         {} allocations, {} frees, {} leaked, CPU {}",
        c.truths.len(),
        leakers.len(),
        children.len(),
        leaking_children,
        thousands(wl_allocs),
        thousands(wl_frees),
        mib(wl_leaked),
        wl_cpu.map_or("?".into(), |ms| format!(
            "{:.1}s ({:.1}% of one core)",
            ms as f64 / 1000.0,
            ms as f64 / 10.0 / ran.max(1e-9)
        )),
    );
    let _ = writeln!(
        text,
        "{p} memtrace: {} events ({}/s; about {} or {:.0}% from other processes), lost {}, \
         stack failures {} ({:.1}% of events), untracked frees {}, {} live processes at the \
         end, tracked allocations {}, CPU {:.1}%, RSS at exit {}",
        thousands(s.events),
        thousands(s.events_per_s.round() as u64),
        thousands(foreign),
        foreign_share * 100.0,
        s.lost_events,
        thousands(s.stack_failures),
        s.stack_failures as f64 * 100.0 / s.events.max(1) as f64,
        thousands(s.untracked_frees),
        s.processes,
        s.tracked_allocations.map_or("?".into(), thousands),
        s.cpu_percent,
        mib(s.rss_bytes)
    );

    // (1) RSS flat after warm-up.
    match rss_verdict(&c.rss, ran) {
        Some(v) => {
            let _ = writeln!(
                text,
                "{p} memtrace RSS: first {}, at {:.0}s (25%) {}, second-half max {} ({}), end {}, \
                 slope after warm-up {}/min ({} samples)",
                mib(v.first),
                v.warm_t,
                mib(v.warm),
                mib(v.late_max),
                signed_mib(v.late_max as i64 - v.warm as i64),
                mib(v.end),
                signed_mib(v.slope as i64),
                c.rss.len()
            );
            let mut detail = format!(
                "second-half max {} vs {} at 25% of the run: {} (budget {}: max of {:.0}% and {})",
                mib(v.late_max),
                mib(v.warm),
                signed_mib(v.late_max as i64 - v.warm as i64),
                signed_mib(v.budget as i64),
                RSS_BUDGET_FRACTION * 100.0,
                mib(RSS_MIN_BUDGET)
            );
            let verdict = if v.pass {
                Verdict::Pass
            } else if foreign_share > FOREIGN_BUSY {
                let _ = write!(
                    detail,
                    "; but {:.0}% of the events came from other processes, whose outstanding \
                     allocations memtrace tracks too: rerun on a quiet machine",
                    foreign_share * 100.0
                );
                Verdict::Inconclusive
            } else {
                Verdict::Fail
            };
            checks.push(Check {
                name: "rss-flat",
                verdict,
                detail,
            });
        }
        None => checks.push(Check::new(
            "rss-flat",
            false,
            format!("too few RSS samples ({})", c.rss.len()),
        )),
    }

    // Rows of workload processes.
    let ours: Vec<(&Row, &Truth)> = s
        .top
        .iter()
        .filter_map(|r| truth_of(r, &by_pid).map(|t| (r, t)))
        .collect();
    let foreign_reused = s
        .top
        .iter()
        .filter(|r| by_pid.contains_key(&r.pid) && truth_of(r, &by_pid).is_none())
        .count();

    // (2) allocations - frees == outstanding allocations, per workload row.
    let bad_sum: Vec<String> = ours
        .iter()
        .filter(|(r, _)| r.allocations.checked_sub(r.frees) != Some(r.outstanding_allocations))
        .map(|(r, _)| {
            format!(
                "{} {}: {} - {} != {}",
                r.comm, r.pid, r.allocations, r.frees, r.outstanding_allocations
            )
        })
        .collect();
    checks.push(Check::new(
        "counters-add-up",
        bad_sum.is_empty() && !ours.is_empty(),
        if ours.is_empty() {
            "no workload process in memtrace's table".into()
        } else if bad_sum.is_empty() {
            format!(
                "allocations - frees == outstanding_allocations for all {} workload rows",
                ours.len()
            )
        } else {
            format!(
                "{} of {} rows: {}",
                bad_sum.len(),
                ours.len(),
                bad_sum.join("; ")
            )
        },
    ));

    // (3) lost events.
    checks.push(Check::new(
        "no-lost-events",
        s.lost_events == 0,
        format!(
            "lost_events {} (stack failures {}, untracked frees {} are reported, not judged)",
            s.lost_events, s.stack_failures, s.untracked_frees
        ),
    ));

    // (4) + (5) the leakers.
    let _ = writeln!(
        text,
        "{p} leakers (growth: memtrace's 30-s least-squares slope; the last ~1 s before the \
         end is the frozen state):"
    );
    let _ = writeln!(
        text,
        "{p}   {:<15} {:>7} {:>4} {:>9} {:>11} {:>7}  {:>23}  {:>21}  {:>21}",
        "comm",
        "pid",
        "rank",
        "rate B/s",
        "growth B/s",
        "error",
        "outstanding B mt/truth",
        "allocations mt/truth",
        "frees mt/truth"
    );
    let mut rate_fail = Vec::new();
    let mut rate_detail = Vec::new();
    for t in &leakers {
        let row = ours.iter().find(|(_, tt)| tt.seq == t.seq).map(|(r, _)| *r);
        match row {
            Some(r) => {
                // Rank by leak score (top is sorted by it).
                let rank = 1 + s.top.iter().filter(|o| o.leak_score > r.leak_score).count();
                let err = (r.growth_bytes_per_s - t.rate as f64) / t.rate as f64;
                if err.abs() > RATE_TOLERANCE {
                    rate_fail.push(t.comm.clone());
                }
                rate_detail.push(format!("{} {:+.2}%", t.comm, err * 100.0));
                let _ = writeln!(
                    text,
                    "{p}   {:<15} {:>7} {:>4} {:>9} {:>11.0} {:>+6.2}%  {:>23}  {:>21}  {:>21}",
                    t.comm,
                    t.pid,
                    rank,
                    t.rate,
                    r.growth_bytes_per_s,
                    err * 100.0,
                    format!("{}/{}", r.outstanding_bytes, t.out_bytes),
                    format!("{}/{}", r.allocations, t.allocs),
                    format!("{}/{}", r.frees, t.frees)
                );
            }
            None => {
                rate_fail.push(format!("{} (not listed)", t.comm));
                let _ = writeln!(
                    text,
                    "{p}   {:<15} {:>7} not in memtrace's table",
                    t.comm, t.pid
                );
            }
        }
    }
    checks.push(Check::new(
        "leak-rates",
        rate_fail.is_empty() && leakers.len() == 3,
        format!(
            "within {:.0}%: {}{}",
            RATE_TOLERANCE * 100.0,
            rate_detail.join(", "),
            if rate_fail.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", rate_fail.join(", "))
            }
        ),
    ));

    // (5) exact ground truth of every workload row (leakers included).
    let mut mismatch = Vec::new();
    for (r, t) in &ours {
        let got = (
            r.allocations,
            r.frees,
            r.outstanding_allocations,
            r.outstanding_bytes,
        );
        let want = (t.allocs, t.frees, t.out_allocs, t.out_bytes);
        if got != want {
            mismatch.push(format!(
                "{} {} ({}): memtrace allocs/frees/outstanding allocs/bytes {:?}, truth {:?}",
                t.comm, t.pid, t.state, got, want
            ));
        }
    }
    let leakers_exact = leakers
        .iter()
        .filter(|t| ours.iter().any(|(_, tt)| tt.seq == t.seq))
        .count();
    checks.push(Check::new(
        "exact-truth",
        mismatch.is_empty() && leakers_exact == leakers.len() && !ours.is_empty(),
        if mismatch.is_empty() {
            format!(
                "allocations, frees, outstanding allocations and bytes equal the ground truth \
                 for all {} workload rows ({} leakers)",
                ours.len(),
                leakers_exact
            )
        } else {
            format!(
                "{} of {} rows differ: {}",
                mismatch.len(),
                ours.len(),
                mismatch.join("; ")
            )
        },
    ));

    // (6) listing: leakers live, exited children listed for ~10 s.
    let grace_ns = EXIT_GRACE.as_nanos() as i64;
    let mut listing = Vec::new();
    for (r, t) in &ours {
        let should_be_exited = t.state == "exited";
        if r.exited != should_be_exited {
            listing.push(format!(
                "{} {} is {} but listed with exited={}",
                t.comm, t.pid, t.state, r.exited
            ));
        }
        if should_be_exited && c.end_boot_ns - t.end_boot_ns > grace_ns + 3_000_000_000 {
            listing.push(format!(
                "{} {} exited {:.1}s before the end but is still listed",
                t.comm,
                t.pid,
                (c.end_boot_ns - t.end_boot_ns) as f64 / 1e9
            ));
        }
    }
    let recent: Vec<&&Truth> = children
        .iter()
        .filter(|t| t.state == "exited" && c.end_boot_ns - t.end_boot_ns < grace_ns - 2_000_000_000)
        .collect();
    let recent_listed = recent
        .iter()
        .filter(|t| ours.iter().any(|(_, tt)| tt.seq == t.seq))
        .count();
    let full = s.top.len() >= TOP_ROWS;
    if !full && recent_listed < recent.len() {
        listing.push(format!(
            "only {recent_listed} of the {} children that exited in the last {}s are listed \
             (the table is not full)",
            recent.len(),
            (EXIT_GRACE - Duration::from_secs(2)).as_secs()
        ));
    }
    let exited_rows = ours.iter().filter(|(r, _)| r.exited).count();
    let unnamed = ours.iter().filter(|(r, _)| r.comm == "?").count();
    let _ = writeln!(
        text,
        "{p} table: {} rows ({}), {} of the workload ({} exited, {} live), {} named '?', \
         {} rows with a reused workload pid; {} of {} children that exited in the last {}s \
         listed",
        s.top.len(),
        if full { "full" } else { "not full" },
        ours.len(),
        exited_rows,
        ours.len() - exited_rows,
        unnamed,
        foreign_reused,
        recent_listed,
        recent.len(),
        (EXIT_GRACE - Duration::from_secs(2)).as_secs()
    );
    checks.push(Check::new(
        "listing",
        listing.is_empty(),
        if listing.is_empty() {
            format!(
                "live/exited state matches for all {} workload rows; exited ones listed for \
                 ~{}s{}",
                ours.len(),
                EXIT_GRACE.as_secs(),
                if full {
                    " (table full: completeness not judged)"
                } else {
                    ""
                }
            )
        } else {
            listing.join("; ")
        },
    ));

    // (7) the run itself was sound.
    let num = |m: &HashMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
    let failures = num(&c.parent, "child_failures").unwrap_or(u64::MAX);
    let deaths = num(&c.parent, "leaker_deaths").unwrap_or(u64::MAX);
    let spawned = num(&c.parent, "spawned").unwrap_or(0);
    let lower = c.stderr.to_lowercase();
    let panicked = ["panicked at", "backtrace", "thread 'main'"]
        .iter()
        .any(|b| lower.contains(b));
    let mut health = Vec::new();
    if !c.mt_status.success() {
        health.push(format!("memtrace exited with {}", c.mt_status));
    }
    if panicked {
        health.push("memtrace's stderr has panic text".into());
    }
    if failures != 0 {
        health.push(format!("{failures} children failed"));
    }
    if deaths != 0 {
        health.push(format!("{deaths} leakers died"));
    }
    if c.truths.len() as u64 != spawned {
        health.push(format!(
            "{} ground-truth files for {spawned} processes spawned",
            c.truths.len()
        ));
    }
    if !c.workload_stderr.trim().is_empty() {
        health.push(format!("workload stderr: {}", c.workload_stderr.trim()));
    }
    checks.push(Check::new(
        "run-health",
        health.is_empty(),
        if health.is_empty() {
            format!(
                "memtrace exited 0 without panic text; {spawned} processes spawned, every one \
                 wrote its ground truth; no child failed, no leaker died"
            )
        } else {
            health.join("; ")
        },
    ));

    // Not judged: rows of other processes whose counters do not add up.
    let other_bad: Vec<&Row> = s
        .top
        .iter()
        .filter(|r| truth_of(r, &by_pid).is_none())
        .filter(|r| r.allocations.checked_sub(r.frees) != Some(r.outstanding_allocations))
        .collect();
    if !other_bad.is_empty() {
        let examples: Vec<String> = other_bad
            .iter()
            .take(5)
            .map(|r| {
                format!(
                    "{} {} ({}): {} - {} vs {}",
                    r.comm,
                    r.pid,
                    if r.exited { "exited" } else { "live" },
                    r.allocations,
                    r.frees,
                    r.outstanding_allocations
                )
            })
            .collect();
        let _ = writeln!(
            text,
            "{p} note: {} of {} other processes' rows have allocations - frees != \
             outstanding_allocations (still allocating after memtrace's last snapshot?): {}",
            other_bad.len(),
            s.top.len() - ours.len(),
            examples.join("; ")
        );
    }
    if !c.stderr.trim().is_empty() {
        let _ = writeln!(text, "{p} memtrace stderr: {}", c.stderr.trim());
    }

    let _ = writeln!(text, "{p} checks:");
    for ch in &checks {
        let _ = writeln!(
            text,
            "{p}   [{}] {}: {}",
            match ch.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Inconclusive => "INCONCLUSIVE",
            },
            ch.name,
            ch.detail
        );
    }
    let _ = writeln!(
        text,
        "{p} {} of {} checks passed; files in {}",
        checks
            .iter()
            .filter(|ch| ch.verdict == Verdict::Pass)
            .count(),
        checks.len(),
        cfg.dir.display()
    );
    Outcome { checks, text }
}
