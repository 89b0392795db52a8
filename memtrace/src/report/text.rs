//! The human report: summary first, then the stacks holding the most.

use std::fmt::Write as _;

use super::{Report, short_module};
use crate::tracker::Kind;

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in a short human unit (KiB, MiB, ...).
pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        120_000..7_200_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    render_one(&mut o, r);
    for c in &r.children {
        o.push('\n');
        render_one(&mut o, c);
    }
    o
}

fn render_one(o: &mut String, r: &Report) {
    let s = &r.summary;
    let state = match (&r.exit_signal, r.exit_code) {
        (Some(sig), _) => format!("killed by {sig}"),
        (None, Some(code)) if code != 0 => format!("exited with status {code}"),
        _ if r.exited => "exited".to_string(),
        _ => "running".to_string(),
    };
    let parent = r
        .parent_pid
        .map(|p| format!(", child of pid {p}"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "memtrace report: pid {} ({}) {}, {state}, traced {}{parent}",
        r.pid,
        r.comm,
        r.exe,
        human_ms(r.duration_ms)
    );
    let est = if r.sample_bytes.is_some() { "~" } else { "" };
    let _ = writeln!(
        o,
        "outstanding: {est}{} bytes ({}) in {est}{} allocations",
        thousands(s.outstanding_bytes),
        human_bytes(s.outstanding_bytes),
        thousands(s.outstanding_allocations)
    );
    let _ = writeln!(
        o,
        "traced: {} allocations ({} bytes), {} frees; untracked frees {}, lost events {}, \
         cut stacks {}, missed frees {}",
        thousands(s.allocations),
        thousands(s.allocated_bytes),
        thousands(s.frees),
        thousands(s.untracked_frees),
        thousands(s.lost_events),
        thousands(s.stack_failures),
        thousands(s.missed_frees)
    );
    if s.dropped_allocations > 0 {
        let _ = writeln!(
            o,
            "dropped: {} allocations were not tracked (--max-allocations reached)",
            thousands(s.dropped_allocations)
        );
    }
    for n in &r.notes {
        let _ = writeln!(o, "note: {n}");
    }
    if r.stacks.is_empty() {
        let _ = writeln!(o, "\nnothing outstanding");
    }
    for (i, st) in r.stacks.iter().enumerate() {
        // Mappings are never sampled: their figures are counts.
        let est = if st.kind == Kind::Heap.as_str() {
            est
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "\n#{:<3} {} {est}{} bytes in {est}{} allocations, oldest {}",
            i + 1,
            st.kind,
            thousands(st.outstanding_bytes),
            thousands(st.outstanding_allocations),
            human_ms(st.oldest_age_ms)
        );
        for f in &st.frames {
            let loc = match (&f.file, f.line) {
                (Some(file), Some(line)) => format!(" at {file}:{line}"),
                (Some(file), None) => format!(" at {file}"),
                _ => String::new(),
            };
            let module = f
                .module
                .as_deref()
                .map(|m| format!(" [{}]", short_module(m)))
                .unwrap_or_default();
            let _ = writeln!(o, "    {}{loc}{module}", f.label());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(409600), "400.0 KiB");
        assert_eq!(human_ms(2300), "2.3 s");
    }

    /// A report of process `pid` holding `stacks`.
    fn report_of(pid: u32, stacks: Vec<crate::report::StackReport>) -> Report {
        Report {
            schema_version: 1,
            pid,
            parent_pid: None,
            comm: "w x".into(),
            exe: "/w".into(),
            exited: true,
            exit_code: Some(0),
            exit_signal: None,
            duration_ms: 10,
            summary: crate::report::Summary::default(),
            stacks,
            sample_bytes: None,
            notes: Vec::new(),
            children: Vec::new(),
        }
    }

    fn row(kind: Kind, frames: Vec<crate::report::Frame>) -> crate::report::StackReport {
        crate::report::StackReport {
            kind: kind.as_str(),
            outstanding_bytes: 4096,
            outstanding_allocations: 1,
            oldest_age_ms: 5,
            frames,
        }
    }

    #[test]
    fn sampled_heap_rows_are_estimates_and_mappings_counts() {
        let mut r = report_of(7, vec![row(Kind::Heap, vec![]), row(Kind::Mmap, vec![])]);
        r.sample_bytes = Some(512 << 10);
        let text = render(&r);
        assert!(
            text.contains("#1   heap ~4,096 bytes in ~1 allocations"),
            "{text}"
        );
        assert!(
            text.contains("#2   mmap 4,096 bytes in 1 allocations"),
            "{text}"
        );
    }

    #[test]
    fn children_follow_the_command_in_text_and_folded() {
        let frame = |f: &str| crate::report::Frame {
            ip: "0x1".into(),
            function: Some(f.into()),
            file: None,
            line: None,
            module: None,
        };
        let one = |pid, parent_pid, leaf: &str| Report {
            parent_pid,
            ..report_of(pid, vec![row(Kind::Heap, vec![frame(leaf), frame("main")])])
        };
        let mut r = one(7, None, "a");
        r.children = vec![one(8, Some(7), "b")];
        let text = render(&r);
        assert!(
            text.contains(
                "memtrace report: pid 8 (w x) /w, exited, traced 10 ms, child of pid 7\n"
            ),
            "{text}"
        );
        assert_eq!(
            crate::report::render_folded(&r),
            "main;a 4096\nw_x_[pid_8];main;b 4096\n"
        );
        r.exit_code = None;
        r.exit_signal = Some(crate::report::signal_name(11));
        assert!(render(&r).starts_with("memtrace report: pid 7 (w x) /w, killed by SIGSEGV,"));
        r.exit_signal = None;
        r.exit_code = Some(7);
        assert!(render(&r).starts_with("memtrace report: pid 7 (w x) /w, exited with status 7,"));
        assert_eq!(crate::report::signal_name(40), "signal 40");
    }
}
