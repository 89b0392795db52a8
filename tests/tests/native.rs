//! Unprivileged checks of the workloads and their ground truth: every
//! workload compiles, runs natively, exits 0 silently, and its own
//! bookkeeping of what it leaks equals the scenario tables; the tables name
//! exactly the allocation sites the binaries contain. Also unit tests of
//! the report parser.

use memtrace_tests::scenarios::{ALL, Image};
use memtrace_tests::{
    Kind, Report, base_name, expected_truth, function_matches, is_workload_site, parse_truth,
    run_native, workload,
};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

#[test]
fn every_scenario_matches_its_ground_truth_natively() {
    memtrace_tests::check_page_size();
    let mut errs = Vec::new();
    for s in ALL {
        let (out, truth) = run_native(s);
        if !out.status.success() {
            errs.push(format!("{}: {}", s.name, out.describe()));
            continue;
        }
        if out.stdout != s.stdout {
            errs.push(format!(
                "{}: stdout {:?}, expected {:?}",
                s.name, out.stdout, s.stdout
            ));
        }
        if !out.stderr.is_empty() {
            errs.push(format!("{}: stderr {:?}", s.name, out.stderr));
        }
        let want = expected_truth(s);
        if truth != want {
            errs.push(format!(
                "{}: the workload leaks\n  {truth:?}\nthe table says\n  {want:?}",
                s.name
            ));
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn scenario_tables_are_well_formed() {
    let mut names = BTreeSet::new();
    for s in ALL {
        assert!(names.insert(s.name), "duplicate scenario name {}", s.name);
        let mut seen = BTreeSet::new();
        for e in s.expect {
            assert!(
                base_name(e.func).starts_with("leak_"),
                "{}: expected site {} is not leak_*",
                s.name,
                e.func
            );
            assert!(
                seen.insert((e.kind, e.func)),
                "{}: {} {} listed twice",
                s.name,
                e.kind,
                e.func
            );
        }
        for a in s.absent {
            assert!(
                a.starts_with("noleak_"),
                "{}: absent site {a} is not noleak_*",
                s.name
            );
        }
        if !s.expect.is_empty() {
            assert!(!s.source.is_empty(), "{}: leaks but no source file", s.name);
        }
    }
}

/// Workload allocation sites (`leak_*`/`noleak_*` text symbols,
/// demangled, without parameter lists) of a binary.
fn sites(bin: &std::path::Path) -> BTreeSet<String> {
    let out = Command::new("nm")
        .args(["--defined-only", "-C"])
        .arg(bin)
        .output()
        .expect("run nm (binutils)");
    assert!(out.status.success(), "nm {} failed", bin.display());
    let mut v = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = line.splitn(3, ' ');
        let (_addr, ty, name) = (it.next(), it.next(), it.next());
        let (Some(ty), Some(name)) = (ty, name) else {
            continue;
        };
        if !matches!(ty, "T" | "t") || !is_workload_site(name) {
            continue;
        }
        assert!(
            !name.contains('.'),
            "{}: compiler clone {name} of an allocation site (use NOINLINE)",
            bin.display()
        );
        let plain = match name.find('(') {
            Some(i) => &name[..i],
            None => name,
        };
        v.insert(plain.to_string());
    }
    v
}

#[test]
fn scenario_tables_cover_every_allocation_site() {
    let mut by_workload: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut named: BTreeSet<String> = BTreeSet::new();
    for s in ALL {
        let mut ws = vec![s.workload];
        ws.extend(s.referenced_workloads());
        let mut available = BTreeSet::new();
        for w in &ws {
            let set = by_workload.entry(w).or_insert_with(|| sites(&workload(w)));
            available.extend(set.iter().cloned());
        }
        for f in s
            .expect
            .iter()
            .map(|e| e.func)
            .chain(s.absent.iter().copied())
        {
            assert!(
                available.iter().any(|a| function_matches(a, f)),
                "{}: {f} is not a function of {ws:?}",
                s.name
            );
            named.insert(f.to_string());
        }
        if let Image::Path(p) = s.image {
            assert!(std::path::Path::new(p).exists(), "{}: {p} missing", s.name);
        }
    }
    for (w, set) in &by_workload {
        for f in set {
            assert!(
                named.contains(f),
                "workload {w}: site {f} appears in no scenario table"
            );
        }
    }
}

// ------------------------------------------------------ harness self-tests

const EXAMPLE: &str = r#"{ "schema_version": 1, "pid": 1234, "comm": "leaky", "exe": "/abs/path/leaky", "exited": true, "duration_ms": 1234,
  "summary": { "outstanding_bytes": 409600, "outstanding_allocations": 100, "allocated_bytes": 0, "allocations": 0,
               "frees": 0, "untracked_frees": 0, "lost_events": 0 },
  "stacks": [ { "kind": "heap", "outstanding_bytes": 409600, "outstanding_allocations": 100, "oldest_age_ms": 1000,
      "frames": [ {"ip": "0x55d0c0a01234", "function": "leak_a", "file": "leaky.c", "line": 12, "module": "/abs/path/leaky"},
                  {"ip": "0x55d0c0a01300", "function": null, "file": null, "line": null, "module": null} ] } ] }"#;

#[test]
fn report_parser_accepts_the_contract_example() {
    let r = Report::parse(EXAMPLE).expect("contract example");
    assert_eq!(r.outstanding(Kind::Heap, "leak_a"), (409600, 100));
    assert_eq!(r.outstanding(Kind::Mmap, "leak_a"), (0, 0));
    assert_eq!(r.pid(), 1234);
    assert!(r.exited());
}

#[test]
fn report_parser_rejects_contract_violations() {
    let bad = [
        EXAMPLE.replace("\"schema_version\": 1", "\"schema_version\": 2"),
        EXAMPLE.replace("\"kind\": \"heap\"", "\"kind\": \"stack\""),
        EXAMPLE.replace("\"ip\": \"0x55d0c0a01234\"", "\"ip\": 1234"),
        EXAMPLE.replace(
            "\"outstanding_bytes\": 409600, \"outstanding_allocations\": 100, \"allocated",
            "\"outstanding_bytes\": 1, \"outstanding_allocations\": 100, \"allocated",
        ),
        EXAMPLE.replace("\"lost_events\": 0", "\"lost_events\": -1"),
        EXAMPLE.replace("\"exited\": true", "\"exited\": 1"),
        EXAMPLE.replace(", \"module\": null", ""),
        "not json".to_string(),
    ];
    for b in &bad {
        assert!(Report::parse(b).is_err(), "accepted:\n{b}");
    }
}

#[test]
fn function_name_matching() {
    assert!(function_matches("leak_a", "leak_a"));
    assert!(!function_matches("leak_ab", "leak_a"));
    assert!(function_matches(
        "wl::leak_cxx_mangled()",
        "wl::leak_cxx_mangled"
    ));
    assert_eq!(base_name("wl::leak_cxx_mangled()"), "leak_cxx_mangled");
    assert!(is_workload_site("noleak_x"));
    assert!(!is_workload_site("malloc"));
    let t = parse_truth("heap leak_a 10 1\nmmap leak_b 4096 1\nheap leak_a 5 1\n").unwrap();
    assert_eq!(t[&(Kind::Heap, "leak_a".to_string())], (15, 2));
}

/// valgrind's leak checker, an independent tracer, agrees with the heap
/// ground truth (sizes, block counts, realloc attribution, callers).
/// Skipped when valgrind is not installed (even in CI: it is optional).
#[test]
fn valgrind_agrees_with_the_heap_ground_truth() {
    if !memtrace_tests::valgrind::valgrind_available() {
        eprintln!("skipped: valgrind not installed");
        return;
    }
    // The --pid targets leak before "attach" on purpose; valgrind sees that.
    let todo: Vec<_> = ALL.iter().filter(|s| !s.name.starts_with("pid")).collect();
    for s in &todo {
        // compile up front (the build lock serialises it anyway)
        workload(s.workload);
        for w in s.referenced_workloads() {
            workload(w);
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(s) = todo.get(i) else { break };
                    let e = memtrace_tests::valgrind::valgrind_errors(s);
                    errs.lock().unwrap().extend(e);
                }
            });
        }
    });
    let errs = errs.into_inner().unwrap();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
