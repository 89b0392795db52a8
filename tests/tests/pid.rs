//! `memtrace report --pid` on a running leaker (privileged).
//!
//! Synchronisation, without sleeps: the target prints "ready"; memtrace is
//! started and the test waits for its stderr line
//! `memtrace: attached to PID <pid>`; then the test sends the target the
//! command byte 'l' and waits for its "done"; then collection is ended by
//! the target exiting ('q'), by SIGTERM/SIGINT to memtrace, or by
//! `--duration`.

use memtrace_tests::{
    ChildGuard, LineReader, Mode, Report, Scenario, TRUTH_ENV, TempDir, assert_no_panic,
    assert_report, bin, expected_truth, memtrace_cmd, read_truth, require_ebpf, scenario_command,
    scenarios, secs, serial, signal,
};
use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// The target exits ('q'); memtrace notices and reports.
    TargetExits,
    /// memtrace gets this signal while the target keeps running.
    Signal(i32),
    /// `--duration 5s` runs out while the target keeps running.
    Duration,
}

const DURATION_SECS: u64 = 5;

fn send(stdin: &mut Option<std::process::ChildStdin>, byte: u8) {
    let w = stdin.as_mut().expect("target stdin open");
    w.write_all(&[byte]).expect("write to the target");
    w.flush().expect("flush");
}

fn pid_session(s: &Scenario, stop: Stop) {
    memtrace_tests::check_page_size();
    let (exe, args) = scenario_command(s);
    let dir = TempDir::new("pid");
    let truth_path = dir.join("truth");
    let report_path = dir.join("report.json");

    // The target.
    let mut target = ChildGuard(
        Command::new(&exe)
            .args(&args)
            .env(TRUTH_ENV, &truth_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pidleaker"),
    );
    let pid = target.pid();
    let mut t_in = Some(target.0.stdin.take().expect("stdin"));
    let mut t_out = LineReader::spawn(target.0.stdout.take().expect("stdout"));
    let mut t_err = LineReader::spawn(target.0.stderr.take().expect("stderr"));
    if let Err(e) = t_out.wait_for(|l| l == "ready", secs(30)) {
        panic!(
            "target never said ready ({e}); stderr:\n{}",
            t_err.finish(secs(1))
        );
    }

    // memtrace.
    let mut m = memtrace_cmd(&bin());
    m.args([
        "report",
        "--pid",
        &pid.to_string(),
        "--format",
        "json",
        "-o",
    ])
    .arg(&report_path);
    if let Stop::Duration = stop {
        m.args(["--duration", &format!("{DURATION_SECS}s")]);
    }
    m.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut mt = ChildGuard(m.spawn().expect("spawn memtrace"));
    let mut m_out = LineReader::spawn(mt.0.stdout.take().expect("stdout"));
    let mut m_err = LineReader::spawn(mt.0.stderr.take().expect("stderr"));
    let attached = format!("memtrace: attached to PID {pid}");
    if let Err(e) = m_err.wait_for(|l| l == attached, secs(60)) {
        let status = mt.wait_timeout(secs(1));
        panic!(
            "memtrace never printed {attached:?} ({e}); status {status:?}\n--- stderr ---\n{}",
            m_err.finish(secs(1))
        );
    }

    // The leaks.
    send(&mut t_in, b'l');
    if let Err(e) = t_out.wait_for(|l| l == "done", secs(60)) {
        panic!(
            "target never said done ({e}); stderr:\n{}",
            t_err.finish(secs(1))
        );
    }

    // End of collection.
    let exited = matches!(stop, Stop::TargetExits);
    match stop {
        Stop::TargetExits => {
            send(&mut t_in, b'q');
            t_in = None;
            let st = target.wait_timeout(secs(60)).expect("target did not exit");
            assert!(
                st.success(),
                "target failed: {st}; stderr:\n{}",
                t_err.finish(secs(1))
            );
        }
        Stop::Signal(sig) => signal(mt.pid(), sig),
        Stop::Duration => {}
    }
    let timeout = secs(60);
    let Some(mstatus) = mt.wait_timeout(timeout) else {
        panic!(
            "memtrace did not finish within {timeout:?} after {stop:?}\n--- stderr ---\n{}",
            m_err.text()
        );
    };
    let m_stderr = m_err.finish(secs(5));
    let m_stdout = m_out.finish(secs(5));
    assert_no_panic(&m_stderr);
    assert!(
        mstatus.success(),
        "memtrace exited with {mstatus} after {stop:?}\n--- stdout ---\n{m_stdout}\n--- stderr ---\n{m_stderr}"
    );
    if !exited {
        // The target outlived the collection: let it exit now.
        send(&mut t_in, b'q');
        drop(t_in.take());
        let st = target.wait_timeout(secs(60)).expect("target did not exit");
        assert!(
            st.success(),
            "target failed: {st}; stderr:\n{}",
            t_err.finish(secs(1))
        );
    }
    assert_eq!(
        read_truth(&truth_path),
        expected_truth(s),
        "the target's own ground truth"
    );

    let text = std::fs::read_to_string(&report_path)
        .unwrap_or_else(|e| panic!("no report after {stop:?} ({e}); stderr:\n{m_stderr}"));
    let report = Report::parse(&text).unwrap_or_else(|e| panic!("invalid report: {e}\n{text}"));
    assert_report(s, &report, Mode::Pid { pid, exited });
    // noleak_pid_free_untracked freed a block allocated before the attach.
    assert!(
        report.summary("untracked_frees") >= 1,
        "untracked_frees = {}, expected >= 1 (a pre-attach block was freed)",
        report.summary("untracked_frees")
    );
    if let Stop::Duration = stop {
        let d = report.duration_ms();
        assert!(
            (DURATION_SECS * 1000 - 500..DURATION_SECS * 1000 + 30_000).contains(&d),
            "duration_ms = {d} for --duration {DURATION_SECS}s"
        );
    }
}

#[test]
fn pid_until_target_exits() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    pid_session(&scenarios::PID, Stop::TargetExits);
}

#[test]
fn pid_until_sigterm() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    pid_session(&scenarios::PID, Stop::Signal(libc::SIGTERM));
}

#[test]
fn pid_until_sigint() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    pid_session(&scenarios::PID, Stop::Signal(libc::SIGINT));
}

#[test]
fn pid_until_duration() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    pid_session(&scenarios::PID, Stop::Duration);
}

/// A target churning malloc/free on another thread while memtrace attaches
/// (allocator calls in flight at attach time) and all along.
#[test]
fn pid_busy_target() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    pid_session(&scenarios::PID_BUSY, Stop::TargetExits);
}
