//! Sampling system-wide (privileged): a parent and its forked child hold
//! the same heap address. The kernel's set of sampled blocks is keyed by
//! process as well as address, so the child's free of its copy does not
//! hide the parent's later free of its own: only the parent's real leak
//! stays outstanding.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use memtrace_tests::{ChildGuard, Headless, require_ebpf, serial, summary_rows, workload};

#[test]
fn forked_child_free_does_not_hide_parent_free() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let prog = workload("fork_sampled");
    // Every allocation of a byte or more is sampled at a 1-byte rate: the
    // estimates are the exact figures.
    let mt = Headless::start("3s", &["-d", "250ms", "--sample-bytes", "1"]);
    let mut wl = ChildGuard(
        Command::new(&prog)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fork_sampled"),
    );
    let mut ready = String::new();
    BufReader::new(wl.0.stdout.take().expect("workload stdout"))
        .read_line(&mut ready)
        .expect("read the workload's ready line");
    assert_eq!(ready, "ready\n", "the workload failed before its leak");
    let summary = mt.summary();
    let rows = summary_rows(&summary, wl.pid());
    drop(wl);
    // The parent's free of the address its child freed first is seen:
    // only the 7,777 bytes remain.
    assert!(
        rows.iter().any(|r| {
            r["outstanding_bytes"].as_u64() == Some(7777)
                && r["outstanding_allocations"].as_u64() == Some(1)
                && r["frees"].as_u64() == Some(1)
        }),
        "the parent's rows: {rows:?}"
    );
}
