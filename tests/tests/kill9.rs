//! After `kill -9` of memtrace, the traced process runs at full speed again:
//! no breakpoint is left behind. A malloc loop is timed before, during and
//! after.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use memtrace_tests::{bin, memtrace_cmd, require_ebpf, serial, workload};

/// Median of the next `n` per-pair timings from the speedometer.
fn median(lines: &mpsc::Receiver<u64>, n: usize) -> u64 {
    let mut v: Vec<u64> = (0..n)
        .map(|_| {
            lines
                .recv_timeout(Duration::from_secs(60))
                .expect("speedometer stopped reporting")
        })
        .collect();
    v.sort_unstable();
    v[n / 2]
}

fn drain(lines: &mpsc::Receiver<u64>) {
    while lines.try_recv().is_ok() {}
}

#[test]
fn kill_9_leaves_no_breakpoint_behind() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let mut speedo = Command::new(workload("speedo"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start speedometer");
    let stdout = speedo.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(ns) = l.trim().parse::<u64>()
                && tx.send(ns).is_err()
            {
                return;
            }
        }
    });
    let before = median(&lines, 7);

    let mut mt = memtrace_cmd(&bin());
    mt.args([
        "report",
        "--pid",
        &speedo.id().to_string(),
        "--format",
        "json",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut mt = mt.spawn().expect("start memtrace");
    let mut err = BufReader::new(mt.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("memtrace stderr");
    assert!(line.contains("attached"), "memtrace did not attach: {line}");
    drain(&lines);
    let during = median(&lines, 5);

    // SAFETY: sending SIGKILL to our own child.
    unsafe { libc::kill(mt.id() as i32, libc::SIGKILL) };
    let _ = mt.wait();
    drain(&lines);
    let after = median(&lines, 7);
    drop(speedo.stdin.take());
    let _ = speedo.wait();

    eprintln!("ns per malloc+free pair: before {before}, traced {during}, after kill -9 {after}");
    assert!(
        during > before * 5,
        "probes were not active: {before} vs {during}"
    );
    assert!(
        after * 3 < during && after < before * 3 + 50,
        "still slow after kill -9: before {before}, during {during}, after {after}"
    );
}
