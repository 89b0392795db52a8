//! The dashboard picks up the allocator of a process started after it
//! (privileged): a steady leaker run with jemalloc preloaded never calls
//! the host libc's malloc, so its leak is only seen if memtrace finds and
//! attaches libjemalloc within a refresh or so.

use std::process::{Command, Stdio};

use memtrace_tests::{ChildGuard, Headless, require_ebpf, serial, workload};

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
    let mt = Headless::start("5s", &["-d", "250ms"]);
    let leaker = ChildGuard(
        Command::new(&dripper)
            .env("LD_PRELOAD", JEMALLOC)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start dripper"),
    );
    let leaker_pid = leaker.pid();
    let v = mt.summary();
    drop(leaker);
    let stdout = v.to_string();
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
    // ~500 drips of 10,000 bytes in 5 s (plus what jemalloc's process
    // allocates besides); allow for the time before a refresh found
    // jemalloc. Without it the leaker shows nothing.
    assert!(
        bytes >= 100 * 10_000,
        "leaker's outstanding bytes: {bytes}\n{stdout}"
    );
}
