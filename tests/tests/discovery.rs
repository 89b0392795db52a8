//! Allocator discovery (privileged): memtrace finds the allocator each
//! process really uses — a static executable's own malloc, a preloaded
//! jemalloc or tcmalloc, a copy of libc at another path, a chroot's own
//! loader and libc, musl, an allocator dlopen()ed after start — and the
//! report is exactly the ground truth, as with the host's glibc.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use memtrace_tests::{
    Mode, TempDir, assert_report_for, expected_truth, read_truth, require_ebpf, scenario_test,
    scenarios, serial, trace_cmd, workload, workload_with,
};

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2.0";
const TCMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";

/// A file a Debian package installs (setup.rs installs it): a test must
/// fail, not skip, without it.
fn need(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install Debian's {package} (cargo xtask setup does)"
    );
    p
}

fn notes(t: &memtrace_tests::Traced) -> String {
    t.report.json["notes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Trace `cmd args` (the scenario's workload at `image`, maybe behind
/// `env`/`chroot`), check the exact ground truth, and that the allocator
/// named `allocator` (a substring of the report's notes) was traced.
fn check(
    s: &scenarios::Scenario,
    cmd: &Path,
    args: &[OsString],
    image: &Path,
    truth: Option<&Path>,
    allocator: &str,
) -> memtrace_tests::Traced {
    let t = trace_cmd(&[], cmd, args);
    let got = match truth {
        Some(p) => read_truth(p),
        None => t.truth.clone(),
    };
    assert_eq!(
        got,
        expected_truth(s),
        "the workload did not complete as natively; stderr:\n{}",
        t.output.stderr
    );
    assert_report_for(s, &t.report, Mode::Cmd, image);
    let n = notes(&t);
    assert!(
        n.contains(allocator),
        "the report's notes do not name {allocator} as traced:\n{n}"
    );
    t
}

fn env_cmd(vars: &[(&str, &Path)], prog: &Path, args: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vars
        .iter()
        .map(|(k, p)| {
            let mut s = OsString::from(format!("{k}="));
            s.push(p.as_os_str());
            s
        })
        .collect();
    v.push(prog.into());
    v.extend(args.iter().map(OsString::from));
    v
}

#[test]
fn static_executable_own_malloc() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let exe = workload_with("quick", None, &["-static"]);
    check(
        &scenarios::QUICK,
        &exe,
        &[],
        &exe,
        None,
        "quick (allocator)",
    );
}

#[test]
fn non_pie_plt_entries_are_not_an_allocator() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let exe = workload_with("plt", None, &["-no-pie", "-fno-pie"]);
    let t = check(
        &scenarios::PLT,
        &exe,
        &[],
        &exe,
        None,
        "libc.so.6 (allocator)",
    );
    let n = notes(&t);
    assert!(
        !n.contains("plt (allocator)"),
        "the executable's PLT entries were taken for an allocator:\n{n}"
    );
}

#[test]
fn preloaded_jemalloc() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let je = need(JEMALLOC, "libjemalloc2");
    let exe = workload("allocators");
    let args = env_cmd(&[("LD_PRELOAD", &je)], &exe, &["basic"]);
    check(
        &scenarios::ALLOC_BASIC,
        Path::new("/usr/bin/env"),
        &args,
        &exe,
        None,
        "libjemalloc.so.2 (allocator)",
    );
}

#[test]
fn preloaded_tcmalloc_cxx_new() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let tc = need(TCMALLOC, "libtcmalloc-minimal4");
    let exe = workload("cxx");
    let args = env_cmd(&[("LD_PRELOAD", &tc)], &exe, &["no-throw"]);
    check(
        &scenarios::CXX_NO_THROW,
        Path::new("/usr/bin/env"),
        &args,
        &exe,
        None,
        "libtcmalloc_minimal.so.4",
    );
}

/// C++ new/delete through jemalloc's own operator new/delete (sized and
/// aligned deletes included).
#[test]
fn preloaded_jemalloc_cxx_new() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let je = need(JEMALLOC, "libjemalloc2");
    let exe = workload("cxx");
    let args = env_cmd(&[("LD_PRELOAD", &je)], &exe, &["no-throw"]);
    check(
        &scenarios::CXX_NO_THROW,
        Path::new("/usr/bin/env"),
        &args,
        &exe,
        None,
        "libjemalloc.so.2 (allocator)",
    );
}

/// C++ new/delete through mimalloc's (its aligned deletes jump to
/// mi_free_*@plt, seen through free).
#[test]
fn preloaded_mimalloc_cxx_new() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let mi = need(MIMALLOC, "libmimalloc2.0");
    let exe = workload("cxx");
    let args = env_cmd(&[("LD_PRELOAD", &mi)], &exe, &["no-throw"]);
    check(
        &scenarios::CXX_NO_THROW,
        Path::new("/usr/bin/env"),
        &args,
        &exe,
        None,
        "libmimalloc.so.2.0 (allocator)",
    );
}

#[test]
fn libc_copy_at_another_path() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let dir = TempDir::new("libc-copy");
    std::fs::copy(Path::new(LIB_DIR).join("libc.so.6"), dir.join("libc.so.6")).expect("copy libc");
    let exe = workload("quick");
    let args = env_cmd(&[("LD_LIBRARY_PATH", dir.path())], &exe, &[]);
    let want = format!("{}/libc.so.6 (allocator)", dir.path().display());
    check(
        &scenarios::QUICK,
        Path::new("/usr/bin/env"),
        &args,
        &exe,
        None,
        &want,
    );
}

#[test]
fn chroot_with_own_loader_and_libc() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let root = TempDir::new("chroot");
    for (from, to) in [
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        (
            &format!("{LIB_DIR}/libc.so.6") as &str,
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
    ] {
        let dst = root.join(to);
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, &dst).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    }
    std::fs::copy(workload("quick"), root.join("quick")).expect("copy quick");
    let truth = root.join("truth");
    let args: Vec<OsString> = vec![
        "MEMTRACE_TEST_TRUTH=/truth".into(),
        "/usr/sbin/chroot".into(),
        root.path().into(),
        "/quick".into(),
    ];
    let t = check(
        &scenarios::QUICK,
        Path::new("/usr/bin/env"),
        &args,
        &root.join("quick"),
        Some(&truth),
        "/lib/x86_64-linux-gnu/libc.so.6 (allocator)",
    );
    let n = notes(&t);
    assert!(
        n.contains(&format!("root directory: {}", root.path().display())),
        "the report does not name the chroot:\n{n}"
    );
    assert!(
        n.contains("cgroup: /"),
        "the report does not name the cgroup:\n{n}"
    );
}

#[test]
fn stripped_static_executable_is_named_not_traced() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let dir = TempDir::new("stripped");
    let exe = dir.join("quick");
    std::fs::copy(workload_with("quick", None, &["-static"]), &exe).expect("copy");
    let st = std::process::Command::new("strip")
        .arg(&exe)
        .status()
        .expect("run strip");
    assert!(st.success(), "strip failed");
    let t = trace_cmd(&[], &exe, &[]);
    let n = notes(&t);
    assert!(
        n.contains("is statically linked without a symbol table: its allocator cannot be traced"),
        "{n}"
    );
    assert!(n.contains("no allocator was found"), "{n}");
    assert_eq!(t.report.summary("allocations"), 0);
}

#[test]
fn musl_program() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    need("/usr/bin/musl-gcc", "musl-tools");
    let exe = workload_with("quick", Some("musl-gcc"), &[]);
    check(
        &scenarios::QUICK,
        &exe,
        &[],
        &exe,
        None,
        "/usr/lib/x86_64-linux-musl/libc.so (allocator)",
    );
}

scenario_test!(
    dlopen_allocator_after_start,
    scenarios::DLOPEN,
    |t: &memtrace_tests::Traced| {
        need(MIMALLOC, "libmimalloc2.0");
        let n = notes(t);
        assert!(
            n.contains("libmimalloc.so.2.0 (allocator)"),
            "mimalloc not traced:\n{n}"
        );
        assert!(
            !n.contains("periodic scan"),
            "the dlopen()ed allocator was found late:\n{n}"
        );
    }
);

/// `--pid`: an allocator the process dlopen()s after memtrace attached is
/// found by the periodic scan of its memory map (memtrace says so on
/// stderr; the test waits for that line, then lets the process allocate).
#[test]
fn pid_attach_then_dlopen_allocator() {
    use memtrace_tests::{ChildGuard, LineReader, Report, bin, memtrace_cmd, secs};
    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    need(MIMALLOC, "libmimalloc2.0");
    let dir = TempDir::new("pid-dlopen");
    let report_path = dir.join("report.json");
    let mut target = ChildGuard(
        Command::new(workload("dlopen_alloc"))
            .arg("--wait")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn dlopen_alloc"),
    );
    let pid = target.pid();
    let mut t_in = target.0.stdin.take().expect("stdin");
    let mut t_out = LineReader::spawn(target.0.stdout.take().expect("stdout"));
    t_out.wait_for(|l| l == "ready", secs(30)).expect("ready");
    let mut m = memtrace_cmd(&bin());
    m.args([
        "report",
        "--pid",
        &pid.to_string(),
        "--format",
        "json",
        "-o",
    ])
    .arg(&report_path)
    .stderr(Stdio::piped());
    let mut mt = ChildGuard(m.spawn().expect("spawn memtrace"));
    let mut m_err = LineReader::spawn(mt.0.stderr.take().expect("stderr"));
    m_err
        .wait_for(|l| l.starts_with("memtrace: attached to PID"), secs(60))
        .expect("memtrace attached");
    t_in.write_all(b"\n").expect("write");
    t_in.flush().expect("flush");
    t_out.wait_for(|l| l == "loaded", secs(30)).expect("loaded");
    m_err
        .wait_for(
            |l| l.starts_with("memtrace: also tracing") && l.contains("libmimalloc"),
            secs(30),
        )
        .unwrap_or_else(|e| panic!("memtrace never found mimalloc ({e}):\n{}", m_err.text()));
    t_in.write_all(b"\n").expect("write");
    t_in.flush().expect("flush");
    let st = target.wait_timeout(secs(30)).expect("target exits");
    assert!(st.success(), "target failed: {st}");
    let st = mt.wait_timeout(secs(60)).expect("memtrace exits");
    let err = m_err.finish(secs(5));
    assert!(st.success(), "memtrace failed: {st}\n{err}");
    let text = std::fs::read_to_string(&report_path).expect("report written");
    let r = Report::parse(&text).expect("valid report");
    use memtrace_tests::Kind;
    assert_eq!(
        r.outstanding(Kind::Heap, "leak_dlopen_malloc"),
        (5 * 700, 5),
        "{}",
        r.describe()
    );
    assert_eq!(
        r.outstanding(Kind::Heap, "noleak_dlopen_churn"),
        (0, 0),
        "{}",
        r.describe()
    );
    let n = r.json["notes"].to_string();
    assert!(n.contains("periodic scan"), "{n}");
}
