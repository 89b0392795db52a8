//! Programs built without frame pointers: Rust's default, and C and C++ at
//! `-O2`. Their allocations pass through functions of their own that keep
//! no frame pointer (Rust's `RawVec` growth, a C program's `xmalloc`), or
//! through the C++ runtime's (`std::string`'s members, compiled into
//! libstdc++): only the unwind tables lead from those back to the function
//! that leaked, and each leak must be attributed to it, with exact bytes.

use memtrace_tests::{
    report::{Kind, Report, base_name, frame_names, stack_allocs, stack_bytes},
    require_ebpf, serial, trace_cmd, workload, workload_with,
};

/// Outstanding (bytes, blocks) of the heap stacks in which `func` is a
/// frame, each checked to continue with `caller` (when given) and to have
/// frames under it that `under` accepts.
fn attributed(
    r: &Report,
    func: &str,
    under: impl Fn(&[String]) -> bool,
    caller: Option<&str>,
) -> (u64, u64) {
    let mut total = (0, 0);
    for s in r.stacks().iter().filter(|s| s["kind"] == "heap") {
        let names = frame_names(s);
        let Some(at) = names.iter().position(|n| base_name(n) == func) else {
            continue;
        };
        assert!(
            under(&names[..at]),
            "{func}: unexpected frames under it: {:?}\n{}",
            &names[..at],
            r.describe()
        );
        if let Some(caller) = caller {
            assert_eq!(
                names.get(at + 1).map(|n| base_name(n)),
                Some(caller),
                "{func}: {names:?}"
            );
        }
        total.0 += stack_bytes(s);
        total.1 += stack_allocs(s);
    }
    total
}

/// Frames under the function: exactly `want`, innermost first, by base name.
fn exactly<'a>(want: &'a [&'a str]) -> impl Fn(&[String]) -> bool + 'a {
    move |got| got.len() == want.len() && got.iter().zip(want).all(|(n, w)| base_name(n) == *w)
}

fn assert_stepped_out(r: &Report) {
    let notes = r.json["notes"].as_array().cloned().unwrap_or_default();
    assert!(
        notes
            .iter()
            .filter_map(|n| n.as_str())
            .any(|n| n.contains("keeps no frame pointers")),
        "the executable's call sites were not used: {notes:?}"
    );
}

#[test]
fn rust_growth_reaches_the_leaking_function() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let t = trace_cmd(&[], &workload("rust_leaks"), &[]);
    let r = &t.report;
    assert_stepped_out(r);
    assert_eq!(r.summary("lost_events"), 0);
    // Growth goes through RawVec's out-of-line functions (their names vary
    // with the Rust version: any number of frames under the function).
    let rawvec = |under: &[String]| {
        under
            .iter()
            .all(|n| n.contains("raw_vec") || n.contains("alloc"))
    };
    for (func, want) in [
        ("leak_pushed", (8192, 1)),
        ("leak_string", (128, 1)),
        ("leak_boxed", (300, 3)),
        ("leak_reserved", (5000, 1)),
    ] {
        assert_eq!(
            attributed(r, func, rawvec, Some("main")),
            want,
            "{func}\n{}",
            r.describe()
        );
    }
    // The thread's function is called by std's thread start, not main.
    assert_eq!(
        attributed(r, "leak_in_thread", rawvec, None),
        (4000, 1),
        "leak_in_thread\n{}",
        r.describe()
    );
}

#[test]
fn c_wrappers_reach_the_leaking_function() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let exe = workload_with("nofp", None, &["-O2", "-fomit-frame-pointer"]);
    let t = trace_cmd(&[], &exe, &[]);
    assert_stepped_out(&t.report);
    assert_c_wrappers(&t.report);
}

/// `nofp`'s leaks, each through its wrappers to the function that leaked.
fn assert_c_wrappers(r: &Report) {
    assert_eq!(
        attributed(r, "leak_wrapped", exactly(&["xmalloc"]), Some("main")),
        (1000, 1),
        "{}",
        r.describe()
    );
    assert_eq!(
        attributed(
            r,
            "leak_nodes",
            exactly(&["xmalloc", "new_node"]),
            Some("main")
        ),
        (256, 4)
    );
    assert_eq!(
        attributed(r, "leak_grown", exactly(&["xrealloc"]), Some("main")),
        (3000, 1)
    );
}

/// The same through a shell that execs it (a wrapper script's `exec "$@"`):
/// the shell (Debian's dash keeps no frame pointers either) had its own
/// call sites; the new image must get its own, not keep the shell's.
#[test]
fn c_wrappers_reach_the_leaking_function_after_an_exec() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let exe = workload_with("nofp", None, &["-O2", "-fomit-frame-pointer"]);
    let t = trace_cmd(
        &[],
        std::path::Path::new("/bin/sh"),
        &["-c".into(), "exec \"$0\"".into(), exe.into()],
    );
    assert_c_wrappers(&t.report);
}

#[test]
fn cxx_runtime_reaches_the_leaking_function() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    // With frame pointers in the program, the steps out of libstdc++'s
    // functions alone; without, out of the program's own too (operator
    // new's caller, one word above its entry stack pointer).
    let builds = [
        ("frame pointers", workload("cxx_runtime")),
        (
            "-O2 without frame pointers",
            workload_with("cxx_runtime", None, &["-O2", "-fomit-frame-pointer"]),
        ),
    ];
    // Under the function: std::string's code, in the program (templates
    // instantiated there) or in libstdc++, and operator new's caller.
    let string_code = |under: &[String]| {
        under
            .iter()
            .all(|n| n.contains("basic_string") || n.contains("char_traits"))
    };
    for (build, exe) in builds {
        let t = trace_cmd(&[], &exe, &[]);
        let r = &t.report;
        assert_eq!(r.summary("lost_events"), 0, "{build}");
        for func in ["leak_string_made", "leak_string_appended"] {
            let truth = t.truth.get(&(Kind::Heap, func.to_owned())).copied();
            assert!(
                truth.is_some_and(|(bytes, _)| bytes > 1000),
                "{build}: {func}: no ground truth: {:?}",
                t.truth
            );
            assert_eq!(
                Some(attributed(r, func, string_code, Some("main"))),
                truth,
                "{build}: {func}\n{}",
                r.describe()
            );
        }
        assert_eq!(
            attributed(r, "noleak_string", |_| true, None),
            (0, 0),
            "{build}"
        );
    }
}
