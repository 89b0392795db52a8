//! A thread that dies inside an allocator call leaves no state behind
//! (privileged, system-wide). The victim's main thread is killed while
//! blocked inside malloc; a new process then gets the same thread id
//! (through ns_last_pid) and the same stack layout (ASLR off): every one of
//! its allocations must be traced, none taken for a call nested in the dead
//! thread's.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use memtrace_tests::{ChildGuard, Headless, require_ebpf, serial, summary_rows, workload};

/// The first field of /proc/PID/task/PID/syscall: the system call the
/// thread is blocked in.
fn blocked_in(pid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{pid}/syscall")).ok()?;
    s.split_whitespace().next().map(str::to_owned)
}

#[test]
fn thread_dead_inside_malloc_leaves_no_state() {
    if !require_ebpf() {
        return;
    }
    let _g = serial();
    let prog = workload("tid_reuse");
    let mt = Headless::start("6s", &["-d", "250ms"]);

    // The victim: its stderr is a pipe this test never reads.
    let mut victim = ChildGuard(
        Command::new("setarch")
            .args(["-R"])
            .arg(&prog)
            .arg("victim")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the victim"),
    );
    let pid = victim.0.id();
    // futex (202 on x86-64): the main thread waits for the arena lock,
    // inside malloc.
    let start = Instant::now();
    while blocked_in(pid).as_deref() != Some("202") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the victim's main thread never blocked in malloc (last: {:?})",
            blocked_in(pid)
        );
        if let Ok(Some(st)) = victim.0.try_wait() {
            panic!("the victim exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.0.kill().expect("kill the victim");
    victim.0.wait().expect("reap the victim");

    // The leaker, with the victim's pid (and so its main thread's id).
    let mut leaker = None;
    for _ in 0..200 {
        fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid - 1))
            .expect("write /proc/sys/kernel/ns_last_pid");
        let child = ChildGuard(
            Command::new("setarch")
                .args(["-R"])
                .arg(&prog)
                .arg("leaker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the leaker"),
        );
        if child.0.id() == pid {
            leaker = Some(child);
            break;
        }
    }
    let mut leaker = leaker.unwrap_or_else(|| panic!("no process got pid {pid} again"));
    let mut ready = String::new();
    BufReader::new(leaker.0.stdout.take().expect("leaker stdout"))
        .read_line(&mut ready)
        .expect("read the leaker's ready line");
    assert_eq!(ready, "ready\n", "the leaker failed before its leaks");

    let summary = mt.summary();
    drop(leaker);
    let rows = summary_rows(&summary, pid);
    assert!(
        rows.iter().any(|r| {
            r["exited"].as_bool() == Some(false)
                && r["outstanding_bytes"].as_u64() == Some(2 * 4321)
                && r["outstanding_allocations"].as_u64() == Some(2)
        }),
        "the leaker's two blocks of 4,321 bytes are not all there; rows of pid {pid}: {rows:?}"
    );
}
