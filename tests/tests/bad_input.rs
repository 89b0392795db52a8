//! Bad input: one clear line and the right exit code, never a panic. Usage
//! errors (clap) exit 2; everything memtrace itself refuses exits 1.

use memtrace_tests::{
    Output, TempDir, assert_no_panic, assert_one_error_line, bin, is_root, memtrace_cmd,
    require_memtrace, run_with_timeout, secs,
};

fn memtrace(args: &[&str]) -> Option<Output> {
    require_memtrace()?;
    let mut c = memtrace_cmd(&bin());
    c.args(args);
    let out = run_with_timeout(&mut c, secs(60));
    assert_no_panic(&out.stderr);
    Some(out)
}

fn usage_error(args: &[&str]) {
    let Some(out) = memtrace(args) else { return };
    assert_eq!(out.status.code(), Some(2), "{args:?}:\n{}", out.describe());
    assert!(!out.stderr.trim().is_empty(), "{args:?}: no message");
}

/// Refused by memtrace (root needed for the checks after argument parsing;
/// as non-root the privilege error comes first, also one line, exit 1).
fn refused(args: &[&str], needle: &str) {
    let Some(out) = memtrace(args) else { return };
    assert_eq!(out.status.code(), Some(1), "{args:?}:\n{}", out.describe());
    let line = assert_one_error_line(&out);
    if is_root() {
        assert!(line.contains(needle), "{args:?}: {line:?} lacks {needle:?}");
    }
}

#[test]
fn pid_values_that_are_not_pids() {
    for pid in [
        "0",
        "-1",
        "-99999",
        "99999999999",
        "4194305",
        "abc",
        "1.5",
        "",
    ] {
        usage_error(&["report", "--pid", pid]);
    }
}

#[test]
fn pid_of_a_kernel_thread() {
    // PID 2 is kthreadd on Linux.
    refused(&["report", "--pid", "2"], "kernel thread");
}

#[test]
fn durations_that_are_not_durations() {
    for d in ["0", "0s", "-1s", "-5", "banana", "10x", "1e400"] {
        usage_error(&["report", "--pid", "1", "--duration", d]);
    }
}

#[test]
fn duration_without_pid() {
    refused(
        &["report", "--duration", "5s", "--", "/bin/true"],
        "--duration",
    );
}

#[test]
fn output_onto_a_directory() {
    let dir = TempDir::new("outdir");
    let d = dir.join("");
    refused(
        &["report", "-o", d.to_str().unwrap_or("/"), "--", "/bin/true"],
        "is a directory",
    );
}

#[test]
fn output_where_nothing_can_be_created() {
    refused(
        &[
            "report",
            "-o",
            "/proc/memtrace-report.txt",
            "--",
            "/bin/true",
        ],
        "cannot write report",
    );
}

#[test]
fn command_that_is_not_executable() {
    let dir = TempDir::new("noexec");
    let f = dir.join("data.txt");
    std::fs::write(&f, "not a program\n").expect("write");
    refused(&["report", "--", f.to_str().unwrap_or("x")], "cannot run");
}

#[test]
fn pid_with_dashboard_flags() {
    usage_error(&["--pid", "0"]);
    usage_error(&["--delay", "0"]);
    usage_error(&["--delay", "soon"]);
}

#[test]
fn children_with_pid() {
    usage_error(&["report", "--children", "--pid", "1"]);
}
