//! Child processes of the benchmark: spawning with a stdin gate, reaping
//! with `wait4` (for the child's own CPU time and peak RSS), signals,
//! output watched line by line, and the uprobe breakpoints a tracer plants
//! in a process's libc.
//!
//! xtask has no libc dependency; std links glibc anyway, so the three
//! calls needed are declared here.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Read, Write as _},
    path::Path,
    process::{ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

pub const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const WNOHANG: i32 = 1;
const EINTR: i32 = 4;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

/// `struct rusage` on x86_64 Linux.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RawRusage {
    utime: Timeval,
    stime: Timeval,
    maxrss: i64,
    /// ixrss .. nivcsw, unused here.
    rest: [i64; 13],
}

unsafe extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut RawRusage) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn getrusage(who: i32, rusage: *mut RawRusage) -> i32;
}

const RUSAGE_SELF: i32 = 0;
const RUSAGE_CHILDREN: i32 = -1;

fn cpu_of(ru: &RawRusage) -> Duration {
    let t = |tv: Timeval| {
        Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64)
    };
    t(ru.utime) + t(ru.stime)
}

/// CPU time of this process and of the children it reaped.
pub fn own_cpu() -> Duration {
    let mut total = Duration::ZERO;
    for who in [RUSAGE_SELF, RUSAGE_CHILDREN] {
        let mut ru = RawRusage::default();
        // SAFETY: ru is valid for writes.
        if unsafe { getrusage(who, &mut ru) } == 0 {
            total += cpu_of(&ru);
        }
    }
    total
}

/// The host's CPU time from /proc/stat: (busy, steal), in clock ticks
/// (USER_HZ, 100 on Linux).
pub fn host_cpu_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    Some((busy, *v.get(7)?))
}

/// Sends `sig` to `pid` (a child of ours that has not been reaped).
fn send(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; callers pass the pid
    // of an unreaped child, so it cannot name another process.
    unsafe {
        kill(pid, sig);
    }
}

/// How a child ended, with the resources it used.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    raw_status: i32,
    /// User + system CPU time. wait4 reports the child's own usage plus
    /// that of the children it reaped itself.
    pub cpu: Duration,
    /// Peak resident set size (the larger of the child's and its reaped
    /// children's).
    pub maxrss_bytes: u64,
    /// From spawn to reaping.
    pub wall: Duration,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.raw_status & 0x7f == 0 && (self.raw_status >> 8) & 0xff == 0
    }

    pub fn describe(&self) -> String {
        if self.raw_status & 0x7f == 0 {
            format!("exit status {}", (self.raw_status >> 8) & 0xff)
        } else {
            format!("killed by signal {}", self.raw_status & 0x7f)
        }
    }
}

/// Where a child's stdout or stderr goes.
pub enum Sink {
    /// Read line by line (see [`Proc::wait_stdout`], [`Proc::wait_stderr`] and [`Proc::stdout_text`]).
    Lines,
    /// Appended to a file (a log).
    File(File),
    Null,
}

impl Sink {
    pub fn log(path: &Path) -> Result<Self> {
        let f = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self::File(f))
    }
}

/// Lines of one output stream, read by a thread.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    /// The reader thread hit end of file.
    closed: bool,
}

impl Lines {
    fn start(r: impl Read + Send + 'static, log: Option<File>) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut log = log;
            let mut reader = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Some(f) = log.as_mut() {
                            let _ = f.write_all(&buf);
                        }
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
            closed: false,
        }
    }

    /// Waits until a line satisfies `pred` (returned), the stream ends or
    /// `deadline` passes (None).
    fn wait_for(&mut self, pred: &dyn Fn(&str) -> bool, deadline: Instant) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line);
                    if hit {
                        return self.seen.last().cloned();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
        None
    }

    /// Everything read until end of file, or until `deadline` (a
    /// grandchild may hold the pipe open).
    fn drain(&mut self, deadline: Instant) -> String {
        self.wait_for(&|_| false, deadline);
        self.seen.join("\n")
    }
}

/// A running child. Dropping it kills (SIGKILL) and reaps it if it is
/// still running, so no tracer outlives a failed measurement.
pub struct Proc {
    pub pid: i32,
    name: String,
    stdin: Option<ChildStdin>,
    stdout: Option<Lines>,
    stderr: Option<Lines>,
    started: Instant,
    exit: Option<Exit>,
}

impl Proc {
    /// Spawns `cmd`. With `gate`, stdin is a pipe kept open until
    /// [`Proc::release`] (the benchmark workloads wait for it); otherwise
    /// stdin is /dev/null.
    pub fn spawn(name: &str, cmd: &mut Command, gate: bool, out: Sink, err: Sink) -> Result<Self> {
        cmd.stdin(if gate { Stdio::piped() } else { Stdio::null() });
        let read_stdout = matches!(out, Sink::Lines);
        cmd.stdout(match out {
            Sink::Lines => Stdio::piped(),
            Sink::File(f) => Stdio::from(f),
            Sink::Null => Stdio::null(),
        });
        // stderr is always read line by line (for error messages), and
        // copied to the log when there is one.
        let err_log = match err {
            Sink::File(f) => Some(f),
            Sink::Lines | Sink::Null => None,
        };
        cmd.stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child
            .stdout
            .take()
            .filter(|_| read_stdout)
            .map(|s| Lines::start(s, None));
        let stderr = child.stderr.take().map(|s| Lines::start(s, err_log));
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        // We reap the child ourselves with wait4; std's handle never waits.
        Ok(Self {
            pid,
            name: name.to_owned(),
            stdin: child.stdin.take(),
            stdout,
            stderr,
            started,
            exit: None,
        })
    }

    /// Opens the gate: writes a newline (stdin stays open, for a workload
    /// with a second gate).
    pub fn release(&mut self) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = s.write_all(b"\n");
            let _ = s.flush();
        }
    }

    pub fn signal(&self, sig: i32) {
        if self.exit.is_none() {
            send(self.pid, sig);
        }
    }

    /// Reaps the child if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<Exit>> {
        if let Some(e) = self.exit {
            return Ok(Some(e));
        }
        let mut status = 0;
        let mut ru = RawRusage::default();
        loop {
            // SAFETY: status and ru are valid for writes; pid is our child.
            let r = unsafe { wait4(self.pid, &mut status, WNOHANG, &mut ru) };
            if r == self.pid {
                let exit = Exit {
                    raw_status: status,
                    cpu: cpu_of(&ru),
                    maxrss_bytes: ru.maxrss.max(0) as u64 * 1024,
                    wall: self.started.elapsed(),
                };
                self.exit = Some(exit);
                return Ok(Some(exit));
            }
            if r == 0 {
                return Ok(None);
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(EINTR) {
                return Err(anyhow!("wait4({}) for {}: {err}", self.pid, self.name));
            }
        }
    }

    /// Waits for the child to exit; after `timeout`, kills it and fails.
    pub fn wait(&mut self, timeout: Duration) -> Result<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_wait()? {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("{} timed out after {:.0?}", self.name, timeout);
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.exit.is_some() {
            return;
        }
        send(self.pid, SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Waits for a stdout line satisfying `pred`.
    pub fn wait_stdout(
        &mut self,
        pred: &dyn Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        self.stdout.as_mut()?.wait_for(pred, deadline)
    }

    /// Waits for a stderr line satisfying `pred`.
    pub fn wait_stderr(
        &mut self,
        pred: &dyn Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        self.stderr.as_mut()?.wait_for(pred, deadline)
    }

    /// All of stdout (call after the child exited).
    pub fn stdout_text(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        self.stdout
            .as_mut()
            .map(|l| l.drain(deadline))
            .unwrap_or_default()
    }

    /// The last non-empty stderr line (for error messages).
    pub fn last_error(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_millis(500);
        let Some(l) = self.stderr.as_mut() else {
            return String::new();
        };
        l.drain(deadline);
        // bpftrace warns about RLIMIT_MEMLOCK and tracefs detach on every
        // run; prefer a line that is not one of those.
        let lines: Vec<&String> = l.seen.iter().filter(|s| !s.trim().is_empty()).collect();
        lines
            .iter()
            .rev()
            .find(|s| !s.contains("RLIMIT_MEMLOCK") && !s.contains("detach"))
            .or(lines.last())
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    /// Why the child failed: its exit and its last stderr line.
    pub fn failure(&mut self, exit: &Exit) -> String {
        let last = self.last_error();
        if last.is_empty() {
            format!("{} {}", self.name, exit.describe())
        } else {
            format!("{} {}: {}", self.name, exit.describe(), last)
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// KiB of anonymous (copied-on-write) memory in the executable mappings of
/// libc.so.6 in process `pid`. A uprobe breakpoint replaces the probed page
/// by a private copy, so this turns positive once a tracer's probes are
/// planted in that process, whether the tracer scoped them to it or not.
pub fn libc_text_anon_kib(pid: i32) -> Option<u64> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut in_libc_text = false;
    let mut total = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode path".
            let perms = words.next().unwrap_or("");
            let path = words.nth(3).unwrap_or("");
            in_libc_text = perms.starts_with("r-x") && path.ends_with("/libc.so.6");
        } else if in_libc_text && first == "Anonymous:" {
            total += words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(total)
}

/// File descriptors of process `pid` that hold probes: bpf links (aya's
/// uprobe_multi and raw tracepoint links) and perf events (bcc's, hence
/// bpftrace's, uprobes).
pub fn probe_fds(pid: i32) -> usize {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t == "anon_inode:bpf_link" || t == "anon_inode:[perf_event]"
        })
        .count()
}

/// Waits until `tracer` has planted its probes in `target`: the tracer
/// holds probe file descriptors ([`probe_fds`]), the breakpoints show in
/// the target's libc ([`libc_text_anon_kib`] grew from `before`, taken
/// before the tracer started; when another tracer's breakpoints were
/// already there, the pages may not change, so the descriptors must do),
/// and neither count has changed for 150 ms.
pub fn wait_planted(
    target: &Proc,
    tracer: &mut Proc,
    before: u64,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    let mut last = (0, before);
    let mut since = Instant::now();
    loop {
        if let Some(exit) = tracer.try_wait()? {
            bail!("{}", tracer.failure(&exit));
        }
        let now = (
            probe_fds(tracer.pid),
            libc_text_anon_kib(target.pid).unwrap_or(0),
        );
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now.0 > 0
            && (now.1 > before || before > 0)
            && since.elapsed() >= Duration::from_millis(150)
        {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "no probe appeared in the workload's libc within {timeout:.0?} \
                 ({} probe descriptors, {} KiB of libc text copied)",
                now.0,
                now.1
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Some process holds probes (bpf links or perf events: see
/// [`probe_fds`]), so the host may be paying for them. Between runs the
/// benchmark's own tracers have exited, so any holder is another tracer.
/// (Anonymous pages in this process's libc text, the earlier test, stay
/// after a system-wide tracer detaches: copy-on-write pages are not given
/// back, so every later run looked traced.)
pub fn foreign_tracer() -> bool {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .any(|pid| pid != me && probe_fds(pid) > 0)
}

/// After our own system-wide tracer exited: waits (at most `timeout`) until
/// no process holds probes any more, so the next run does not start under
/// them.
pub fn wait_unplanted(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while foreign_tracer() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}
