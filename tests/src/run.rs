//! Running processes with deadlines, reading their output line by line, and
//! the checks every memtrace invocation must pass.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Deadline of one memtrace run (override: `MEMTRACE_TEST_TIMEOUT_SECS`).
pub fn run_timeout() -> Duration {
    let secs = std::env::var("MEMTRACE_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// A finished process.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// For failure messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn reader_thread(mut r: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Send `sig` to process `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Run `cmd` (stdin null unless configured; stdout and stderr captured)
/// and wait at most `timeout`; on timeout kill it and panic with what it
/// printed so far.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out_rx = reader_thread(child.stdout.take().expect("stdout"));
    let err_rx = reader_thread(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(st) => break st,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let grab = |rx: &Receiver<Vec<u8>>| {
                    rx.recv_timeout(Duration::from_secs(2))
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                panic!(
                    "{cmd:?} did not finish within {timeout:?}; killed.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    grab(&out_rx),
                    grab(&err_rx)
                );
            }
            // Polling for a deadline, not for synchronisation.
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    // Output pipes may be held open by orphaned grandchildren: bounded wait.
    let grab = |rx: &Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(10))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|_| "<output pipe still open 10 s after exit>".into())
    };
    Output {
        status,
        stdout: grab(&out_rx),
        stderr: grab(&err_rx),
    }
}

/// A `memtrace` command (binary under test) with `RUST_BACKTRACE=1` (so a
/// panic would be unmistakable) and stdin from /dev/null.
pub fn memtrace_cmd(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("RUST_BACKTRACE", "1").stdin(Stdio::null());
    c
}

/// Panic/backtrace text must never reach memtrace's stderr.
pub fn assert_no_panic(stderr: &str) {
    let lower = stderr.to_lowercase();
    for bad in [
        "panicked at",
        "backtrace",
        "thread 'main'",
        "note: run with",
    ] {
        assert!(
            !lower.contains(bad),
            "memtrace's stderr contains panic/backtrace text ({bad:?}):\n{stderr}"
        );
    }
}

/// An error exit: exactly one non-empty stderr line, starting `memtrace:`.
/// Returns that line.
pub fn assert_one_error_line(out: &Output) -> String {
    assert_no_panic(&out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("memtrace:"),
        "expected exactly one stderr line starting \"memtrace:\", got:\n{}",
        out.describe()
    );
    lines[0].to_string()
}

/// Reads a pipe line by line on a thread; lines can be awaited with a
/// deadline.
pub struct LineReader {
    rx: Receiver<String>,
    /// Every line received so far.
    pub seen: Vec<String>,
    eof: bool,
}

impl LineReader {
    pub fn spawn(r: impl Read + Send + 'static) -> LineReader {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut br = BufReader::new(r);
            loop {
                let mut buf = Vec::new();
                match br.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches('\n')
                            .to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        LineReader {
            rx,
            seen: Vec::new(),
            eof: false,
        }
    }

    /// Wait for a line satisfying `pred`. Err(reason) on EOF or timeout.
    pub fn wait_for(
        &mut self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eof {
                return Err("end of output".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no such line within {timeout:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.eof = true;
                }
            }
        }
    }

    /// Collect the remaining lines until EOF (or `timeout`).
    pub fn finish(&mut self, timeout: Duration) -> String {
        let _ = self.wait_for(|_| false, timeout);
        self.text()
    }

    pub fn text(&self) -> String {
        let mut s = self.seen.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    }
}

/// A child process killed (SIGKILL) and reaped on drop if still running.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Wait for exit with a deadline; None on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.0.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling for a deadline, not for synchronisation.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `memtrace --headless` (the dashboard's data path without a terminal),
/// started and waited for until attached: workloads started after `start`
/// returns are traced from their first allocation.
pub struct Headless {
    child: ChildGuard,
    stderr: BufReader<std::process::ChildStderr>,
    early: String,
}

impl Headless {
    /// Start `memtrace --headless DURATION ARGS...` and wait for its
    /// "attached in" line.
    pub fn start(duration: &str, args: &[&str]) -> Self {
        let mut c = memtrace_cmd(&crate::bin());
        c.args(["--headless", duration])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard(c.spawn().expect("start memtrace --headless"));
        let mut stderr = BufReader::new(child.0.stderr.take().expect("stderr"));
        let mut early = String::new();
        loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).expect("read memtrace's stderr");
            assert!(n > 0, "memtrace ended before attaching:\n{early}");
            early.push_str(&line);
            if line.contains("attached in") {
                return Self {
                    child,
                    stderr,
                    early,
                };
            }
        }
    }

    /// Wait for the end of the run and return its JSON summary, checking
    /// that memtrace succeeded without panic text.
    pub fn summary(mut self) -> serde_json::Value {
        let mut out = String::new();
        self.child
            .0
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read memtrace's summary");
        let mut rest = String::new();
        self.stderr
            .read_to_string(&mut rest)
            .expect("read memtrace's stderr");
        let status = self
            .child
            .wait_timeout(Duration::from_secs(60))
            .expect("memtrace ended");
        let stderr = self.early + &rest;
        assert_no_panic(&stderr);
        assert!(status.success(), "memtrace failed:\n{out}\n{stderr}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{out}"))
    }
}

/// The rows of a `--headless` summary for process `pid`.
pub fn summary_rows(summary: &serde_json::Value, pid: u32) -> Vec<serde_json::Value> {
    summary["top"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["pid"].as_u64() == Some(u64::from(pid)))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}
