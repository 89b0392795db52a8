//! Running scenarios (natively and under memtrace) and checking reports
//! against their ground truth.

use crate::report::{
    Kind, Report, Truth, base_name, describe_stack, frame_fn, frames, function_matches,
    is_workload_site, parse_truth, stack_allocs, stack_bytes, stack_kind,
};
use crate::run::{Output, assert_no_panic, memtrace_cmd, run_timeout, run_with_timeout};
use crate::scenarios::Scenario;
use crate::{TempDir, bin, comm_of, final_image_path, resolve_arg, workload};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Environment variable naming the file a workload writes its ground truth to.
pub const TRUTH_ENV: &str = "MEMTRACE_TEST_TRUTH";

/// A scenario's ground truth as a [`Truth`] map.
pub fn expected_truth(s: &Scenario) -> Truth {
    let mut t = Truth::new();
    for e in s.expect {
        let v = t.entry((e.kind, e.func.to_string())).or_default();
        v.0 += e.bytes;
        v.1 += e.allocs;
    }
    t
}

/// Read a workload's ground-truth file (missing: empty).
pub fn read_truth(path: &Path) -> Truth {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_truth(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Truth::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// The scenario's workload binary and its resolved arguments.
pub fn scenario_command(s: &Scenario) -> (PathBuf, Vec<OsString>) {
    (
        workload(s.workload),
        s.args.iter().map(|a| resolve_arg(a)).collect(),
    )
}

/// Run a scenario's workload natively (no tracer) with `stdin`; returns its
/// output and the ground truth it wrote.
pub fn run_native(s: &Scenario) -> (Output, Truth) {
    let (exe, args) = scenario_command(s);
    let dir = TempDir::new("native");
    let truth_path = dir.join("truth");
    let mut child = Command::new(&exe)
        .args(&args)
        .env(TRUTH_ENV, &truth_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = s.stdin.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait workload");
    let _ = writer.join();
    let output = Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (output, read_truth(&truth_path))
}

/// A finished `memtrace report --format json` run.
pub struct Traced {
    pub report: Report,
    pub output: Output,
    /// What the workload wrote to `$MEMTRACE_TEST_TRUTH` (it inherits
    /// memtrace's environment).
    pub truth: Truth,
    pub dir: TempDir,
}

/// `memtrace report --format json -o <tmp>/report.json [extra...] -- cmd args...`
/// with `$MEMTRACE_TEST_TRUTH=<tmp>/truth`. Asserts exit status 0 and no
/// panic text; parses and validates the report.
pub fn trace_cmd(extra: &[&str], cmd: &Path, args: &[OsString]) -> Traced {
    let dir = TempDir::new("trace");
    let report_path = dir.join("report.json");
    let truth_path = dir.join("truth");
    let mut c = memtrace_cmd(&bin());
    c.args(["report", "--format", "json", "-o"])
        .arg(&report_path)
        .args(extra)
        .arg("--")
        .arg(cmd)
        .args(args)
        .env(TRUTH_ENV, &truth_path);
    let output = run_with_timeout(&mut c, run_timeout());
    assert_no_panic(&output.stderr);
    assert!(
        output.status.success(),
        "memtrace failed on {}:\n{}",
        cmd.display(),
        output.describe()
    );
    let text = std::fs::read_to_string(&report_path).unwrap_or_else(|e| {
        panic!(
            "memtrace exited 0 but wrote no report ({e}):\n{}",
            output.describe()
        )
    });
    let report = Report::parse(&text)
        .unwrap_or_else(|e| panic!("invalid report: {e}\n--- report ---\n{text}"));
    let truth = read_truth(&truth_path);
    Traced {
        report,
        output,
        truth,
        dir,
    }
}

/// How the report was obtained.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `-- CMD`: sees everything; the process exited.
    Cmd,
    /// `--pid`: attached late (untracked frees are expected).
    Pid { pid: u32, exited: bool },
}

/// Every difference between `r` and the scenario's ground truth (empty: the
/// report is exactly right).
pub fn report_errors(s: &Scenario, r: &Report, mode: Mode) -> Vec<String> {
    report_errors_for(s, r, mode, &final_image_path(s))
}

/// [`report_errors`] for a run whose final image is `image` (a variant
/// build of the scenario's workload, a copy of it).
pub fn report_errors_for(s: &Scenario, r: &Report, mode: Mode, image: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    let image = image.to_path_buf();

    // The process and image.
    let exe_ok = std::fs::canonicalize(r.exe())
        .map(|p| p == image)
        .unwrap_or(false);
    if !exe_ok {
        errs.push(format!("exe is {:?}, expected {:?}", r.exe(), image));
    }
    let comm = comm_of(&image);
    if r.comm() != comm {
        errs.push(format!("comm is {:?}, expected {comm:?}", r.comm()));
    }
    match mode {
        Mode::Cmd => {
            if !r.exited() {
                errs.push("exited is false for a -- CMD run".into());
            }
            let uf = r.summary("untracked_frees");
            if uf > s.max_untracked_frees {
                errs.push(format!(
                    "untracked_frees is {uf}, at most {} expected (a -- CMD run sees every allocation; free(NULL) is not a free)",
                    s.max_untracked_frees
                ));
            }
            // A launched command is traced from its first call: every
            // return has its entry (tail calls between allocator
            // functions included, as realloc(NULL, n) to malloc).
            let notes = r.json["notes"].as_array().cloned().unwrap_or_default();
            if let Some(n) = notes
                .iter()
                .filter_map(|n| n.as_str())
                .find(|n| n.contains("no recorded entry"))
            {
                errs.push(format!("a -- CMD run noted {n:?}"));
            }
        }
        Mode::Pid { pid, exited } => {
            if r.pid() != u64::from(pid) {
                errs.push(format!("pid is {}, expected {pid}", r.pid()));
            }
            if r.exited() != exited {
                errs.push(format!("exited is {}, expected {exited}", r.exited()));
            }
        }
    }
    if r.summary("lost_events") != 0 {
        errs.push(format!(
            "lost_events is {} (exact accounting impossible)",
            r.summary("lost_events")
        ));
    }

    // Every expected leak site, exactly.
    for e in s.expect {
        let stacks = r.stacks_for(e.kind, e.func);
        let (b, a) = stacks.iter().fold((0, 0), |(b, a), st| {
            (b + stack_bytes(st), a + stack_allocs(st))
        });
        if (b, a) != (e.bytes, e.allocs) {
            let anywhere: Vec<String> = r
                .stacks()
                .iter()
                .filter(|st| {
                    frames(st).iter().any(|f| {
                        f["function"]
                            .as_str()
                            .is_some_and(|n| function_matches(n, e.func))
                    })
                })
                .map(describe_stack)
                .collect();
            errs.push(format!(
                "{} {}: {} bytes / {} allocations outstanding, expected {} / {}{}",
                e.kind,
                e.func,
                b,
                a,
                e.bytes,
                e.allocs,
                if anywhere.is_empty() {
                    " (the function appears in no stack)".to_string()
                } else {
                    format!("; stacks mentioning it:\n    {}", anywhere.join("\n    "))
                }
            ));
            continue;
        }
        for st in &stacks {
            let f0 = &frames(st)[0];
            if let Some(caller) = e.caller {
                let f1 = frame_fn(st, 1);
                if !f1.is_some_and(|f| function_matches(f, caller)) {
                    errs.push(format!(
                        "{} {}: frames[1] is {:?}, expected the caller {caller} ({})",
                        e.kind,
                        e.func,
                        f1,
                        describe_stack(st)
                    ));
                }
            }
            if !s.source.is_empty() {
                let file_ok = f0["file"]
                    .as_str()
                    .is_some_and(|f| Path::new(f).file_name().is_some_and(|n| n == s.source));
                if !file_ok {
                    errs.push(format!(
                        "{} {}: frames[0].file is {}, expected a path ending in {}",
                        e.kind, e.func, f0["file"], s.source
                    ));
                }
                if f0["line"].as_u64().unwrap_or(0) == 0 {
                    errs.push(format!(
                        "{} {}: frames[0].line is {}, expected a line number",
                        e.kind, e.func, f0["line"]
                    ));
                }
            }
            let module_ok = f0["module"].as_str().is_some_and(|m| {
                std::fs::canonicalize(m)
                    .map(|p| p == image)
                    .unwrap_or(false)
            });
            if !module_ok {
                errs.push(format!(
                    "{} {}: frames[0].module is {}, expected {:?}",
                    e.kind, e.func, f0["module"], image
                ));
            }
        }
    }

    // No other workload allocation site anywhere: leak_*/noleak_* functions
    // may only appear as frames[0] of an expected (kind, function).
    for st in r.stacks() {
        for (i, f) in frames(st).iter().enumerate() {
            let Some(name) = f["function"].as_str() else {
                continue;
            };
            if !is_workload_site(name) {
                continue;
            }
            let kind = stack_kind(st).unwrap_or(Kind::Heap);
            let expected = s
                .expect
                .iter()
                .any(|e| e.kind == kind && function_matches(name, e.func));
            if i > 0 {
                errs.push(format!(
                    "workload site {name} is frames[{i}] of a reported stack (an allocation made inside it was charged to {:?}: allocator frames kept, or an allocator-internal mmap counted): {}",
                    frame_fn(st, 0),
                    describe_stack(st)
                ));
            } else if !expected {
                let why = if base_name(name).starts_with("noleak_") {
                    "must not be reported"
                } else {
                    "is not expected with this kind"
                };
                errs.push(format!(
                    "unexpected stack, {name} {why}: {}",
                    describe_stack(st)
                ));
            }
        }
    }
    errs
}

/// Panic with every difference between `r` and the ground truth.
pub fn assert_report(s: &Scenario, r: &Report, mode: Mode) {
    assert_report_for(s, r, mode, &final_image_path(s));
}

/// [`assert_report`] for a run whose final image is `image`.
pub fn assert_report_for(s: &Scenario, r: &Report, mode: Mode, image: &Path) {
    let errs = report_errors_for(s, r, mode, image);
    assert!(
        errs.is_empty(),
        "scenario {}: the report differs from the ground truth:\n  - {}\n--- all stacks ---\n{}",
        s.name,
        errs.join("\n  - "),
        r.describe()
    );
}

/// Trace a scenario with `memtrace report --format json -o <tmp> -- <workload>
/// [args]` and assert the report matches its ground truth exactly. Also
/// asserts the workload completed (it wrote the expected ground truth).
/// Call after `require_ebpf()` and with [`crate::serial`] held.
pub fn run_scenario(s: &Scenario) -> Traced {
    crate::check_page_size();
    let (exe, args) = scenario_command(s);
    for w in s.referenced_workloads() {
        workload(w);
    }
    let t = trace_cmd(&[], &exe, &args);
    let want = expected_truth(s);
    assert_eq!(
        t.truth, want,
        "scenario {}: under memtrace the workload did not complete as natively (its ground-truth dump differs); stderr:\n{}",
        s.name, t.output.stderr
    );
    assert_report(s, &t.report, Mode::Cmd);
    t
}

/// Wait for a process with a deadline of `secs` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
