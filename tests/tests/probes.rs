//! Where the probes go in this machine's libc: no probe may sit on an
//! instruction the kernel must single-step when a safe boundary exists.
//! Needs only the binary (no privileges).

use memtrace_tests::{memtrace_cmd, require_memtrace, run_with_timeout, secs};

/// (symbol, offset, how probed) from `memtrace probes` output lines like
/// `  free   +3   file offset 0x98ef3  emulated`.
fn plan() -> Vec<(String, u64, String)> {
    let Some(bin) = require_memtrace() else {
        return Vec::new();
    };
    let mut c = memtrace_cmd(&bin);
    c.arg("probes");
    let out = run_with_timeout(&mut c, secs(30));
    assert!(
        out.status.success(),
        "memtrace probes failed: {}",
        out.stderr
    );
    print!("{}", out.stdout);
    out.stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let sym = it.next()?.to_string();
            let off = it.next()?.strip_prefix('+')?.parse().ok()?;
            let how = l.split("  ").last()?.trim().to_string();
            Some((sym, off, how))
        })
        .collect()
}

fn find<'a>(plan: &'a [(String, u64, String)], sym: &str) -> &'a (String, u64, String) {
    plan.iter()
        .find(|(s, ..)| s == sym)
        .unwrap_or_else(|| panic!("{sym} not planned: {plan:?}"))
}

#[test]
fn allocator_probes_avoid_single_step() {
    let plan = plan();
    if plan.is_empty() {
        return;
    }
    // Every allocator entry point the kernel can emulate somewhere in its
    // first instructions is probed there.
    for sym in [
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "valloc",
        "pvalloc",
    ] {
        let (_, _, how) = find(&plan, sym);
        assert!(how.starts_with("emulated"), "{sym}: {how}");
    }
    // The exact plan for Debian 12's glibc 2.36 (the machine this project
    // runs on): free starts with `test %rdi,%rdi` (single-stepped), then an
    // emulated `je`; the memalign family with a 7-byte `cmpb $0,
    // __malloc_initialized(%rip)`; mmap with two syscall set-up moves.
    if glibc_version().as_deref() == Some("2.36") {
        let want: &[(&str, u64)] = &[
            ("malloc", 0),
            ("calloc", 0),
            ("realloc", 0),
            ("free", 3),
            ("posix_memalign", 7),
            ("aligned_alloc", 7),
            ("valloc", 7),
            ("pvalloc", 7),
            ("mmap64", 10),
        ];
        for &(sym, off) in want {
            let (_, got, how) = find(&plan, sym);
            assert_eq!(
                (*got, how.starts_with("emulated")),
                (off, true),
                "{sym}: {how}"
            );
        }
    }
}

fn glibc_version() -> Option<String> {
    let out = std::process::Command::new("ldd")
        .arg("--version")
        .output()
        .ok()?;
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .to_string();
    first.split_whitespace().last().map(str::to_string)
}
