//! `report -- CMD --children`: the processes a command creates (fork at two
//! depths, posix_spawn of a new image) are each followed from their first
//! instruction and reported on their own, exactly; the command's report is
//! the same with or without them. Without `--children` the report counts
//! the children it did not trace (privileged).

use std::path::Path;

use memtrace_tests::{
    Mode, assert_report,
    report::{Kind, Report, frame_names},
    require_ebpf, run_with_timeout, scenario_command, scenarios, serial, trace_cmd, workload_with,
};

/// The (bytes, blocks) of `r`'s heap stacks starting in `func`, and that
/// every stack of `r` starts in `func` or in none of the workload's sites.
fn only(r: &Report, func: &str) -> (u64, u64) {
    for s in r.stacks() {
        let first = s["frames"][0]["function"].as_str().unwrap_or("");
        assert!(
            !(first.starts_with("noleak_kid_") || first.starts_with("leak_")) || first == func,
            "pid {} ({}) holds a stack of another process's site {first}:\n{}",
            r.pid(),
            r.comm(),
            r.describe()
        );
    }
    r.outstanding(Kind::Heap, func)
}

#[test]
fn children_are_followed_and_reported_apart() {
    if !require_ebpf() {
        return;
    }
    let _serial = serial();
    let s = &scenarios::FORK_TREE;
    let (cmd, args) = scenario_command(s);
    let t = trace_cmd(&["--children"], &cmd, &args);
    // The command's own report: exactly its leaks, none of its children's.
    assert_report(s, &t.report, Mode::Cmd);
    assert_eq!(t.report.parent_pid(), None);
    let main = t.report.pid();

    let kids = t.report.children();
    let describe = || {
        kids.iter()
            .map(|k| format!("pid {} ({}):\n{}", k.pid(), k.comm(), k.describe()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(kids.len(), 3, "children A, G, B:\n{}", describe());
    let (a, g, b) = (&kids[0], &kids[1], &kids[2]);
    // In the order they started: A (forked), its child G, B (spawned).
    assert_eq!(a.parent_pid(), Some(main), "{}", describe());
    assert_eq!(g.parent_pid(), Some(a.pid()), "{}", describe());
    assert_eq!(b.parent_pid(), Some(main), "{}", describe());
    for k in &kids {
        assert!(k.exited(), "pid {} not seen exited", k.pid());
        assert_eq!(k.json["exit_code"].as_i64(), Some(0), "pid {}", k.pid());
        assert_eq!(k.summary("lost_events"), 0);
    }
    assert_eq!(
        only(a, "noleak_kid_forked"),
        (6000, 2),
        "A:\n{}",
        a.describe()
    );
    assert_eq!(a.summary("outstanding_bytes"), 6000, "A:\n{}", a.describe());
    // Its free of the command's block, allocated before the fork.
    assert_eq!(a.summary("untracked_frees"), 1, "A");
    assert_eq!(
        only(g, "noleak_kid_grandchild"),
        (777, 1),
        "G:\n{}",
        g.describe()
    );
    assert_eq!(g.summary("outstanding_bytes"), 777, "G:\n{}", g.describe());
    assert_eq!(g.summary("untracked_frees"), 0, "G");
    // B is a new image of the same program, traced from its exec.
    assert_eq!(
        only(b, "noleak_kid_spawned"),
        (555, 1),
        "B:\n{}",
        b.describe()
    );
    assert_eq!(b.summary("outstanding_bytes"), 555, "B:\n{}", b.describe());
    assert_eq!(Path::new(b.exe()), cmd.as_path(), "B's image");
    assert!(
        t.report
            .notes()
            .iter()
            .any(|n| n.starts_with("followed 3 child processes")),
        "{:?}",
        t.report.notes()
    );
}

/// Built at -O2 without frame pointers, the command steps out of its own
/// functions by their unwind tables; so do the children it forks, which run
/// its image at the same addresses, until they exec.
#[test]
fn forked_children_step_out_of_the_commands_image() {
    if !require_ebpf() {
        return;
    }
    let _serial = serial();
    let exe = workload_with("fork_tree", None, &["-O2", "-fomit-frame-pointer"]);
    let t = trace_cmd(&["--children"], &exe, &[]);
    let kids = t.report.children();
    assert_eq!(kids.len(), 3);
    for (k, func, bytes, blocks) in [
        (&kids[0], "noleak_kid_forked", 6000, 2),
        (&kids[1], "noleak_kid_grandchild", 777, 1),
    ] {
        let mut seen = (0, 0);
        for s in k.stacks_for(Kind::Heap, func) {
            let names = frame_names(s);
            assert_eq!(
                names.get(1).map(String::as_str),
                Some("main"),
                "pid {}: {names:?}",
                k.pid()
            );
            seen.0 += s["outstanding_bytes"].as_u64().unwrap_or(0);
            seen.1 += s["outstanding_allocations"].as_u64().unwrap_or(0);
        }
        assert_eq!(seen, (bytes, blocks), "pid {}:\n{}", k.pid(), k.describe());
    }
}

#[test]
fn children_are_counted_when_not_followed() {
    if !require_ebpf() {
        return;
    }
    let _serial = serial();
    let s = &scenarios::FORK_TREE;
    let (cmd, args) = scenario_command(s);
    let t = trace_cmd(&[], &cmd, &args);
    assert_report(s, &t.report, Mode::Cmd);
    assert!(t.report.children().is_empty());
    // A and B; G is A's, which ran untraced.
    assert!(
        t.report
            .notes()
            .iter()
            .any(|n| n
                == &"the command started 2 child processes, not traced (--children follows them)"),
        "{:?}",
        t.report.notes()
    );
}

#[test]
fn children_in_text_and_folded_reports() {
    if !require_ebpf() {
        return;
    }
    let _serial = serial();
    let (cmd, args) = scenario_command(&scenarios::FORK_TREE);
    let run = |format: &str| {
        let mut c = std::process::Command::new(memtrace_tests::bin());
        c.args(["report", "--children", "--format", format, "--"])
            .arg(&cmd)
            .args(&args);
        let out = run_with_timeout(&mut c, std::time::Duration::from_secs(60));
        assert!(out.status.success(), "{}", out.describe());
        out.stdout
    };
    let text = run("text");
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("memtrace report: pid "))
        .collect();
    assert_eq!(headers.len(), 4, "{text}");
    assert_eq!(
        headers
            .iter()
            .filter(|h| h.contains(", child of pid "))
            .count(),
        3,
        "{text}"
    );
    let folded = run("folded");
    // The grandchild's leak, under a root frame naming its process.
    let line = folded
        .lines()
        .find(|l| l.contains("noleak_kid_grandchild"))
        .unwrap_or_else(|| panic!("no grandchild stack:\n{folded}"));
    assert!(line.starts_with("fork_tree_[pid_"), "{line}");
    assert!(line.ends_with(" 777"), "{line}");
    // The command's stacks keep their own roots.
    assert!(
        folded
            .lines()
            .any(|l| !l.starts_with("fork_tree_[pid_") && l.ends_with("leak_in_command 1111")),
        "{folded}"
    );
}
