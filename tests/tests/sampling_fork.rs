//! Sampling system-wide (privileged): a parent and its forked child hold
//! the same heap address. The kernel's set of sampled blocks is keyed by
//! process as well as address, so the child's free of its copy does not
//! hide the parent's later free of its own: only the parent's real leak
//! stays outstanding.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    time::Duration,
};

use memtrace_tests::{
    ChildGuard, assert_no_panic, bin, memtrace_cmd, require_ebpf, serial, workload,
};

#[test]
fn forked_child_free_does_not_hide_parent_free() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let prog = workload("fork_sampled");
    let mut c = memtrace_cmd(&bin());
    // Every allocation of a byte or more is sampled at a 1-byte rate: the
    // estimates are the exact figures.
    c.args(["--headless", "3s", "-d", "250ms", "--sample-bytes", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut mt = ChildGuard(c.spawn().expect("start memtrace"));
    let mut err = BufReader::new(mt.0.stderr.take().expect("stderr"));
    let mut line = String::new();
    let mut early = String::new();
    loop {
        line.clear();
        let n = err.read_line(&mut line).expect("read memtrace's stderr");
        assert!(n > 0, "memtrace ended before attaching:\n{early}");
        early.push_str(&line);
        if line.contains("attached in") {
            break;
        }
    }
    let mut wl = ChildGuard(
        Command::new(&prog)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fork_sampled"),
    );
    let wl_pid = wl.0.id();
    let mut ready = String::new();
    BufReader::new(wl.0.stdout.take().expect("workload stdout"))
        .read_line(&mut ready)
        .expect("read the workload's ready line");
    assert_eq!(ready, "ready\n", "the workload failed before its leak");
    let mut out = String::new();
    mt.0.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read memtrace's summary");
    let mut rest = String::new();
    err.read_to_string(&mut rest)
        .expect("read memtrace's stderr");
    let status = mt
        .wait_timeout(Duration::from_secs(60))
        .expect("memtrace ended");
    drop(wl);
    let stderr = early + &rest;
    assert_no_panic(&stderr);
    assert!(status.success(), "memtrace failed:\n{out}\n{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{out}"));
    let row = v["top"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["pid"].as_u64() == Some(u64::from(wl_pid)))
        })
        .unwrap_or_else(|| panic!("no row for the workload {wl_pid}:\n{out}"));
    // The parent's free of the address its child freed first is seen:
    // only the 7,777 bytes remain.
    assert_eq!(
        (
            row["outstanding_bytes"].as_u64(),
            row["outstanding_allocations"].as_u64()
        ),
        (Some(7777), Some(1)),
        "the parent's row: {row}"
    );
    assert_eq!(row["frees"].as_u64(), Some(1), "the parent's row: {row}");
}
