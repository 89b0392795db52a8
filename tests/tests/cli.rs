//! Command-line contract: output formats (privileged) and errors (need only
//! the binary; as root the tracer-dependent ones exercise the real checks).

use memtrace_tests::{
    Kind, Mode, Output, Report, TempDir, assert_no_panic, assert_one_error_line, assert_report,
    bin, memtrace_cmd, require_ebpf, require_memtrace, run_with_timeout, scenarios, secs, serial,
    workload,
};
use std::path::Path;

fn memtrace(args: &[&str]) -> Output {
    let mut c = memtrace_cmd(&bin());
    c.args(args);
    let out = run_with_timeout(&mut c, secs(60));
    assert_no_panic(&out.stderr);
    out
}

fn quick() -> String {
    workload("quick").to_str().expect("utf-8 path").to_string()
}

// ------------------------------------------------------------- formats

/// Folded: `root;...;leaf bytes` lines, root first; the leaf of the leak is
/// leak_quick, its caller main precedes it, and its lines sum to 3333.
#[test]
fn format_folded() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let dir = TempDir::new("folded");
    let out_path = dir.join("out.folded");
    let out = memtrace(&[
        "report",
        "--format",
        "folded",
        "-o",
        out_path.to_str().unwrap(),
        "--",
        &quick(),
    ]);
    assert!(out.status.success(), "{}", out.describe());
    let text = std::fs::read_to_string(&out_path).expect("folded output written");
    let mut total = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (stack, n) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("folded line without a count: {line:?}"));
        let n: u64 = n
            .parse()
            .unwrap_or_else(|_| panic!("folded line count not a number: {line:?}"));
        let frames: Vec<&str> = stack.split(';').collect();
        assert!(
            frames.iter().all(|f| !f.is_empty()),
            "empty frame in folded line {line:?}"
        );
        if frames.last() == Some(&"leak_quick") {
            let main = frames.iter().position(|f| *f == "main");
            assert!(
                main.is_some_and(|m| m + 2 == frames.len()),
                "folded line of leak_quick is not root-first ending in main;leak_quick: {line:?}"
            );
            total += n;
        }
        assert!(
            !frames.iter().any(|f| f.starts_with("noleak_") || (f.starts_with("leak_") && *f != "leak_quick")),
            "unexpected workload frame in {line:?}"
        );
    }
    assert_eq!(
        total, 3333,
        "bytes of the folded lines ending in leak_quick:\n{text}"
    );
}

/// Text: human-readable, to stdout when -o is absent; names the leak site.
#[test]
fn format_text_to_stdout() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let out = memtrace(&["report", "--format", "text", "--", &quick()]);
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("leak_quick"),
        "text report does not name leak_quick:\n{}",
        out.stdout
    );
}

/// JSON to stdout when -o is absent (the workload prints nothing).
#[test]
fn format_json_to_stdout() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let out = memtrace(&["report", "--format", "json", "--", &quick()]);
    assert!(out.status.success(), "{}", out.describe());
    let report = Report::parse(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.stdout));
    assert_report(&scenarios::QUICK, &report, Mode::Cmd);
    assert_eq!(report.outstanding(Kind::Heap, "leak_quick"), (3333, 3));
}

// -------------------------------------------------------------- errors

#[test]
fn error_unknown_flag_is_usage_error() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let out = memtrace(&["report", "--no-such-flag", "--", "/bin/true"]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        !out.stderr.trim().is_empty(),
        "usage error without a message"
    );
}

#[test]
fn error_unknown_subcommand_is_usage_error() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let out = memtrace(&["no-such-subcommand"]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
}

#[test]
fn error_unknown_format_is_usage_error() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let out = memtrace(&["report", "--format", "xml", "--", "/bin/true"]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
}

#[test]
fn error_bad_duration() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let out = memtrace(&["report", "--pid", "1", "--duration", "banana"]);
    match out.code() {
        Some(2) => {}
        Some(1) => {
            assert_one_error_line(&out);
        }
        _ => panic!(
            "--duration banana: expected exit 2 (or 1)\n{}",
            out.describe()
        ),
    }
}

/// A PID that does not exist right now.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (300..max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

#[test]
fn error_nonexistent_pid() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let pid = unused_pid().to_string();
    let out = memtrace(&["report", "--pid", &pid, "--format", "json"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_one_error_line(&out);
}

#[test]
fn error_command_not_found() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let out = memtrace(&["report", "--", "/nonexistent/memtrace-test-no-such-command"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_one_error_line(&out);
}

/// `-o` into a missing directory fails before tracing: the command never
/// runs and nothing is written.
#[test]
fn error_output_directory_missing() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let dir = TempDir::new("missing-o");
    let marker = dir.join("command-ran");
    let output = dir.join("no/such/dir/report.json");
    let script = format!("touch {}", marker.display());
    let out = memtrace(&[
        "report",
        "--format",
        "json",
        "-o",
        output.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_one_error_line(&out);
    assert!(
        !marker.exists(),
        "the command ran although -o could not be written"
    );
    assert!(!output.exists());
}

#[test]
fn error_neither_pid_nor_command() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let out = memtrace(&["report", "--format", "json"]);
    match out.code() {
        Some(2) => assert!(
            !out.stderr.trim().is_empty(),
            "usage error without a message"
        ),
        Some(1) => {
            assert_one_error_line(&out);
        }
        _ => panic!(
            "no --pid and no command: expected exit 2 or 1\n{}",
            out.describe()
        ),
    }
}

#[test]
fn error_both_pid_and_command() {
    let Some(_) = require_memtrace() else { return };
    let _g = serial();
    let dir = TempDir::new("both");
    let marker = dir.join("command-ran");
    let script = format!("touch {}", marker.display());
    let me = std::process::id().to_string();
    let out = memtrace(&["report", "--pid", &me, "--", "/bin/sh", "-c", &script]);
    match out.code() {
        Some(2) => {}
        Some(1) => {
            assert_one_error_line(&out);
        }
        _ => panic!(
            "--pid together with a command: expected exit 2 or 1\n{}",
            out.describe()
        ),
    }
    assert!(
        !marker.exists(),
        "the command ran although the arguments were rejected"
    );
}

/// Without root (as root: run as `nobody`), exit 1 with one line that
/// mentions root or CAP_BPF.
#[test]
fn error_not_root() {
    let Some(real) = require_memtrace() else {
        return;
    };
    let _g = serial();
    let dir = TempDir::new("nonroot");
    // A copy nobody can surely execute.
    let copy = dir.join("memtrace");
    std::fs::copy(&real, &copy).expect("copy memtrace");
    let mut c = memtrace_cmd(&copy);
    c.args(["report", "--format", "json", "--", "/bin/true"]);
    if memtrace_tests::is_root() {
        use std::os::unix::process::CommandExt;
        c.uid(65534).gid(65534).current_dir("/");
    } else if memtrace_tests::has_bpf_privileges() {
        eprintln!("skipped: this process has BPF capabilities and cannot drop them");
        return;
    }
    let out = run_with_timeout(&mut c, secs(60));
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let line = assert_one_error_line(&out).to_lowercase();
    assert!(
        line.contains("root") || line.contains("cap_bpf"),
        "the error does not mention root or CAP_BPF: {line}"
    );
}
