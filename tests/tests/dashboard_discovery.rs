//! The dashboard picks up the allocator of a process started after it
//! (privileged): a steady leaker run with jemalloc preloaded never calls
//! the host libc's malloc, so its leak is only seen if memtrace finds and
//! attaches libjemalloc within a refresh or so.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::Duration,
};

use memtrace_tests::{
    ChildGuard, assert_no_panic, bin, memtrace_cmd, require_ebpf, serial, workload,
};

const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

#[test]
fn dashboard_finds_preloaded_jemalloc_of_a_new_process() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    assert!(
        std::path::Path::new(JEMALLOC).exists(),
        "{JEMALLOC} is missing: install Debian's libjemalloc2 (cargo xtask setup does)"
    );
    let dripper = workload("dripper");
    let mut c = memtrace_cmd(&bin());
    c.args(["--headless", "5s", "-d", "250ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut mt = ChildGuard(c.spawn().expect("start memtrace"));
    // Let it attach, then start the leaker.
    std::thread::sleep(Duration::from_millis(1500));
    let leaker = ChildGuard(
        Command::new(&dripper)
            .env("LD_PRELOAD", JEMALLOC)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start dripper"),
    );
    let leaker_pid = leaker.pid();
    let (mut out, mut err) = (String::new(), String::new());
    let mut so = mt.0.stdout.take().expect("stdout");
    let mut se = mt.0.stderr.take().expect("stderr");
    // The summary (a few KiB) is printed at the end: read until EOF.
    so.read_to_string(&mut out).expect("read stdout");
    se.read_to_string(&mut err).expect("read stderr");
    let status = mt
        .wait_timeout(Duration::from_secs(60))
        .expect("memtrace ended");
    drop(leaker);
    let (stdout, stderr) = (out, err);
    assert_no_panic(&stderr);
    assert!(status.success(), "memtrace failed:\n{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{stdout}"));
    let allocators = v["allocators"].to_string();
    assert!(
        allocators.contains("libjemalloc.so.2 (allocator)"),
        "jemalloc was not attached: {allocators}"
    );
    let row = v["top"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["pid"].as_u64() == Some(u64::from(leaker_pid)))
        })
        .unwrap_or_else(|| panic!("no row for the leaker {leaker_pid}:\n{stdout}"));
    assert!(
        row["cgroup"].as_str().is_some_and(|c| c.starts_with('/')),
        "the leaker's row names no cgroup: {row}"
    );
    let bytes = row["outstanding_bytes"].as_u64().unwrap_or(0);
    // ~350 drips of 10,000 bytes in 3.5 s (plus what jemalloc's process
    // allocates besides); allow for the time before a refresh found
    // jemalloc. Without it the leaker shows nothing.
    assert!(
        bytes >= 100 * 10_000,
        "leaker's outstanding bytes: {bytes}\n{stdout}"
    );
}
