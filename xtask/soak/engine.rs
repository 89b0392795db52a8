//! The soak test's engine: runs `memtrace --headless` over the multi-process
//! workload `tests/workloads/soak_mix.c`, samples memtrace's RSS, freezes
//! the workload, collects memtrace's JSON summary and checks it against the
//! ground truth every workload process wrote.
//!
//! Shared by `cargo xtask soak` (xtask/src/soak.rs, the full run) and the
//! short CI version (tests/tests/soak.rs includes this file with `#[path]`),
//! so it uses std only: the two crates share no JSON or libc dependency.
//!
//! The run:
//! 1. start `memtrace --headless` (with a generous cap; it is stopped by
//!    SIGINT) and wait until it has attached: its uprobe and exec/exit
//!    tracepoint links are open (seen in /proc/PID/fdinfo);
//! 2. start the workload (its own process group) and sample memtrace's
//!    VmRSS every second for the run's duration;
//! 3. freeze the workload (SIGUSR1): every live process stops allocating and
//!    writes its ground truth; wait for all of it, then one refresh interval
//!    (plus margin) so memtrace's last snapshot holds the frozen state;
//! 4. SIGINT memtrace, parse its JSON; SIGTERM the workload;
//! 5. check (see [`evaluate`]).

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::{self, File},
    io::Read,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

/// The leak rates must be reported within this fraction.
pub const RATE_TOLERANCE: f64 = 0.05;
/// memtrace's refresh interval (its default `--delay`): growth is sampled at
/// it, and the freeze must outlast one.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long memtrace lists an exited process.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);
/// `top` holds at most this many rows.
pub const TOP_ROWS: usize = 50;
/// The RSS budget after warm-up: this fraction of the warm RSS, but at least
/// [`RSS_MIN_BUDGET`] bytes.
pub const RSS_BUDGET_FRACTION: f64 = 0.10;
pub const RSS_MIN_BUDGET: u64 = 4 << 20;
/// memtrace keeps state for every process's outstanding allocations, so
/// its RSS also follows other processes' activity: when more than this
/// share of the events traced came from other processes, an RSS over
/// budget is inconclusive rather than a leak.
pub const FOREIGN_BUSY: f64 = 0.10;

const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGUSR1: i32 = 10;
const SIGTERM: i32 = 15;
const CLOCK_BOOTTIME: i32 = 7;

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

// std links glibc; these two calls are all that is needed of it.
unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

fn send(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        kill(pid, sig);
    }
}

/// CLOCK_BOOTTIME in ns (the clock of the workload's timestamps).
fn boottime_ns() -> i64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe {
        clock_gettime(CLOCK_BOOTTIME, &mut ts);
    }
    ts.sec * 1_000_000_000 + ts.nsec
}

/// What to run.
pub struct Config {
    /// The memtrace binary.
    pub memtrace: PathBuf,
    /// The compiled `soak_mix` workload.
    pub workload: PathBuf,
    /// An empty directory for the ground truth, role links and logs.
    pub dir: PathBuf,
    /// How long the workload runs (leaks and churns) before the freeze.
    pub duration: Duration,
    /// Print a progress line (stderr) this often.
    pub progress_every: Option<Duration>,
    /// Prefix of progress lines, e.g. "xtask: soak:".
    pub prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Could not be judged (e.g. the machine was busy): not a pass either.
    Inconclusive,
}

/// One check.
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, pass: bool, detail: String) -> Self {
        let verdict = if pass { Verdict::Pass } else { Verdict::Fail };
        Self {
            name,
            verdict,
            detail,
        }
    }
}

/// The result of a run.
pub struct Outcome {
    pub checks: Vec<Check>,
    /// Human-readable numbers and check results (also in the run's
    /// directory: summary.txt, with memtrace.json and rss.tsv).
    pub text: String,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.verdict == Verdict::Pass)
    }

    /// "name" of each failed check, "name (inconclusive)" of the others
    /// not passed.
    pub fn failed(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(|c| match c.verdict {
                Verdict::Pass => None,
                Verdict::Fail => Some(c.name.to_owned()),
                Verdict::Inconclusive => Some(format!("{} (inconclusive)", c.name)),
            })
            .collect()
    }
}

// ------------------------------------------------------------- processes

/// A child killed (SIGKILL; its whole process group for `group`) and reaped
/// on drop if still running.
struct Guard {
    child: Child,
    group: bool,
}

impl Guard {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling for a deadline, not for synchronisation.
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.running() {
            let pid = self.pid();
            send(if self.group { -pid } else { pid }, SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

fn vm_rss(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// The link types of the bpf links `pid` holds open.
fn bpf_links(pid: i32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut types = Vec::new();
    for e in dir.flatten() {
        let is_link = fs::read_link(e.path())
            .map(|t| t.to_string_lossy().contains("bpf_link"))
            .unwrap_or(false);
        if !is_link {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(t) = info.lines().find_map(|l| l.strip_prefix("link_type:")) {
            types.push(t.trim().to_owned());
        }
    }
    types
}

/// Waits until memtrace has attached: it holds uprobe links and the two
/// exec/exit tracepoint links (attached last). Should memtrace ever attach
/// differently, a set of links unchanged for a second also counts.
fn wait_attached(mt: &mut Guard, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last: (usize, Instant) = (0, start);
    loop {
        if !mt.running() {
            return Err("memtrace exited before it attached".into());
        }
        let links = bpf_links(mt.pid());
        let uprobes = links.iter().filter(|t| t.contains("uprobe")).count();
        let tps = links.iter().filter(|t| t.contains("tracepoint")).count();
        if uprobes >= 1 && tps >= 2 {
            return Ok(start.elapsed());
        }
        if links.len() != last.0 {
            last = (links.len(), Instant::now());
        } else if !links.is_empty() && last.1.elapsed() >= Duration::from_secs(1) {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "memtrace did not attach within {timeout:?} (links: {links:?})"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_file(path: &Path, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not appear within {timeout:?}",
                path.display()
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// Everything the run collected, before judging.
struct Collected {
    attach_wait: Duration,
    ran: Duration,
    rss: Vec<(f64, u64)>,
    mt_status: ExitStatus,
    json: String,
    stderr: String,
    /// CLOCK_BOOTTIME when memtrace was told to stop.
    end_boot_ns: i64,
    truths: Vec<Truth>,
    parent: HashMap<String, String>,
    parent_final: HashMap<String, String>,
    workload_stderr: String,
}

/// Runs the soak and checks the result. Err: the run itself failed
/// (memtrace or the workload died, no JSON, ...).
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    let c = collect(cfg)?;
    let _ = fs::write(cfg.dir.join("memtrace.json"), &c.json);
    let mut rss_tsv = String::from("seconds\trss_bytes\n");
    for (t, b) in &c.rss {
        let _ = writeln!(rss_tsv, "{t:.1}\t{b}");
    }
    let _ = fs::write(cfg.dir.join("rss.tsv"), rss_tsv);
    let summary = parse_summary(&c.json)?;
    let outcome = evaluate(cfg, &c, &summary);
    let _ = fs::write(cfg.dir.join("summary.txt"), &outcome.text);
    Ok(outcome)
}

fn collect(cfg: &Config) -> Result<Collected, String> {
    fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
    // A cap in case we die without stopping it; SIGINT stops it.
    let cap = cfg.duration.as_secs() + 300;
    let mut cmd = Command::new(&cfg.memtrace);
    cmd.arg("--headless")
        .arg(format!("{cap}s"))
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.memtrace.display()))?;
    let mut mt = Guard {
        child,
        group: false,
    };
    let out_rx = read_all(mt.child.stdout.take().ok_or("no stdout")?);
    let err_rx = read_all(mt.child.stderr.take().ok_or("no stderr")?);
    let stderr_so_far = |rx: &Receiver<String>| rx.recv_timeout(Duration::from_secs(5)).ok();
    let attach_wait = match wait_attached(&mut mt, Duration::from_secs(60)) {
        Ok(d) => d,
        Err(e) => {
            drop(mt);
            return Err(format!(
                "{e}; stderr: {}",
                stderr_so_far(&err_rx).unwrap_or_default().trim()
            ));
        }
    };

    let wl_log = cfg.dir.join("workload.stderr");
    let log = File::create(&wl_log).map_err(|e| format!("{}: {e}", wl_log.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let maxsecs = cfg.duration.as_secs() + 300;
    let child = Command::new(&cfg.workload)
        .arg("parent")
        .arg(&cfg.dir)
        .arg(maxsecs.to_string())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.workload.display()))?;
    let mut wl = Guard { child, group: true };
    let workload_log = || fs::read_to_string(&wl_log).unwrap_or_default();

    let t0 = Instant::now();
    let end = t0 + cfg.duration;
    let mut rss = Vec::new();
    let mut next_progress = cfg.progress_every.map(|p| t0 + p);
    for k in 1u32.. {
        if let Some(b) = vm_rss(mt.pid()) {
            rss.push((t0.elapsed().as_secs_f64(), b));
        }
        if let Ok(Some(st)) = mt.child.try_wait() {
            return Err(format!(
                "memtrace exited during the run ({st}); stderr: {}",
                stderr_so_far(&err_rx).unwrap_or_default().trim()
            ));
        }
        if let Ok(Some(st)) = wl.child.try_wait() {
            return Err(format!(
                "the workload exited during the run ({st}); its stderr: {}",
                workload_log().trim()
            ));
        }
        if let Some(p) = next_progress
            && Instant::now() >= p
        {
            let b = rss.last().map_or(0, |s| s.1);
            eprintln!(
                "{} {} / {}: memtrace RSS {}",
                cfg.prefix,
                secs(t0.elapsed()),
                secs(cfg.duration),
                mib(b)
            );
            next_progress = cfg.progress_every.map(|e| p + e);
        }
        let next = t0 + Duration::from_secs(u64::from(k));
        if next >= end {
            sleep_until(end);
            break;
        }
        sleep_until(next);
    }
    if let Some(b) = vm_rss(mt.pid()) {
        rss.push((t0.elapsed().as_secs_f64(), b));
    }
    let ran = t0.elapsed();

    // Freeze, and wait for every live process's ground truth.
    send(wl.pid(), SIGUSR1);
    let ptext = wait_file(&cfg.dir.join("parent.truth"), Duration::from_secs(10))
        .map_err(|e| format!("freezing the workload: {e}; its stderr: {}", workload_log()))?;
    let parent = kv(&ptext);
    for item in parent
        .get("live")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let seq = item.split(':').next().unwrap_or(item);
        wait_file(
            &cfg.dir.join(format!("t{seq}.truth")),
            Duration::from_secs(10),
        )
        .map_err(|e| format!("freezing the workload: {e}"))?;
    }
    // memtrace drains every 2 ms and snapshots every REFRESH: after this,
    // its last snapshot holds the frozen state.
    thread::sleep(REFRESH + Duration::from_millis(250));

    let end_boot_ns = boottime_ns();
    send(mt.pid(), SIGINT);
    let mt_status = mt
        .wait_timeout(Duration::from_secs(60))
        .ok_or("memtrace did not exit within 60 s of SIGINT")?;
    let json = out_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "memtrace's stdout stayed open")?;
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();

    send(wl.pid(), SIGTERM);
    let wl_status = wl.wait_timeout(Duration::from_secs(30));
    let parent_final = fs::read_to_string(cfg.dir.join("parent.final"))
        .map(|s| kv(&s))
        .unwrap_or_default();
    if wl_status.is_none() {
        return Err("the workload did not exit within 30 s of SIGTERM".into());
    }
    Ok(Collected {
        attach_wait,
        ran,
        rss,
        mt_status,
        json,
        stderr,
        end_boot_ns,
        truths: read_truths(&cfg.dir)?,
        parent,
        parent_final,
        workload_stderr: workload_log(),
    })
}

// ----------------------------------------------------------- ground truth

/// One workload process's ground truth (`t<SEQ>.truth`).
#[derive(Clone, Debug)]
struct Truth {
    seq: u64,
    pid: u32,
    role: String,
    comm: String,
    state: String,
    allocs: u64,
    frees: u64,
    out_allocs: u64,
    out_bytes: u64,
    reallocs: u64,
    leaked_bytes: u64,
    rate: u64,
    end_boot_ns: i64,
}

fn kv(s: &str) -> HashMap<String, String> {
    s.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn parse_truth(s: &str) -> Result<Truth, String> {
    let m = kv(s);
    let text = |k: &str| m.get(k).cloned().ok_or(format!("no {k}= in {s:?}"));
    let num = |k: &str| -> Result<u64, String> {
        text(k)?.parse().map_err(|_| format!("bad {k}= in {s:?}"))
    };
    Ok(Truth {
        seq: num("seq")?,
        pid: num("pid")? as u32,
        role: text("role")?,
        comm: text("comm")?,
        state: text("state")?,
        allocs: num("allocs")?,
        frees: num("frees")?,
        out_allocs: num("out_allocs")?,
        out_bytes: num("out_bytes")?,
        reallocs: num("reallocs")?,
        leaked_bytes: num("leaked_bytes")?,
        rate: num("rate")?,
        end_boot_ns: num("end_boot_ns")? as i64,
    })
}

fn read_truths(dir: &Path) -> Result<Vec<Truth>, String> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('t') && name.ends_with(".truth") {
            let s = fs::read_to_string(e.path()).map_err(|e| format!("{name}: {e}"))?;
            v.push(parse_truth(&s).map_err(|e| format!("{name}: {e}"))?);
        }
    }
    v.sort_by_key(|t| t.seq);
    Ok(v)
}

// ---------------------------------------------------------- memtrace JSON

/// memtrace's headless summary.
#[derive(Debug, Default)]
struct Summary {
    attach_ms: u64,
    watched_ms: u64,
    events: u64,
    events_per_s: f64,
    lost_events: u64,
    stack_failures: u64,
    untracked_frees: u64,
    processes: u64,
    cpu_percent: f64,
    rss_bytes: u64,
    /// Newer memtraces: outstanding entries held over all processes.
    tracked_allocations: Option<u64>,
    top: Vec<Row>,
}

#[derive(Debug, Clone)]
struct Row {
    pid: u32,
    comm: String,
    outstanding_bytes: u64,
    outstanding_allocations: u64,
    growth_bytes_per_s: f64,
    leak_score: f64,
    allocations: u64,
    frees: u64,
    exited: bool,
}

fn parse_summary(text: &str) -> Result<Summary, String> {
    let j = Json::parse(text).map_err(|e| format!("memtrace's JSON: {e}: {text:?}"))?;
    let u = |v: &Json, k: &str| -> Result<u64, String> {
        v.get(k)
            .and_then(Json::as_u64)
            .ok_or(format!("memtrace's JSON: no integer {k}"))
    };
    let f = |v: &Json, k: &str| -> Result<f64, String> {
        v.get(k)
            .and_then(Json::as_f64)
            .ok_or(format!("memtrace's JSON: no number {k}"))
    };
    let mut top = Vec::new();
    for r in j.get("top").and_then(Json::as_array).ok_or("no top")? {
        top.push(Row {
            pid: u(r, "pid")? as u32,
            comm: r
                .get("comm")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned(),
            outstanding_bytes: u(r, "outstanding_bytes")?,
            outstanding_allocations: u(r, "outstanding_allocations")?,
            growth_bytes_per_s: f(r, "growth_bytes_per_s")?,
            leak_score: f(r, "leak_score")?,
            allocations: u(r, "allocations")?,
            frees: u(r, "frees")?,
            exited: matches!(r.get("exited"), Some(Json::Bool(true))),
        });
    }
    Ok(Summary {
        attach_ms: u(&j, "attach_ms")?,
        watched_ms: u(&j, "watched_ms")?,
        events: u(&j, "events")?,
        events_per_s: f(&j, "events_per_s")?,
        lost_events: u(&j, "lost_events")?,
        stack_failures: u(&j, "stack_failures")?,
        untracked_frees: u(&j, "untracked_frees")?,
        processes: u(&j, "processes")?,
        cpu_percent: f(&j, "cpu_percent")?,
        rss_bytes: u(&j, "rss_bytes")?,
        tracked_allocations: j.get("tracked_allocations").and_then(Json::as_u64),
        top,
    })
}

/// A JSON value; numbers keep their text, so integers stay exact.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(s: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: s.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(v)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(v) => Some(v),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected '{}'", c as char))
        }
    }

    fn value(&mut self, depth: u32) -> Result<Json, String> {
        if depth > 64 {
            return self.err("nested too deeply");
        }
        self.ws();
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    fields.push((k, self.value(depth + 1)?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let n = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                if n.is_empty() || n.parse::<f64>().is_err() {
                    self.i = start;
                    return self.err("bad value");
                }
                Ok(Json::Num(n.to_owned()))
            }
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| u32::from_str_radix(t, 16).ok());
        match h {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

// -------------------------------------------------------------- checking

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn signed_mib(b: i64) -> String {
    format!("{:+.2} MiB", b as f64 / (1u64 << 20) as f64)
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Least-squares slope of (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// RSS after warm-up: the sample at 25 % of the run is the reference; the
/// largest sample of the second half may exceed it by the budget at most.
struct RssVerdict {
    first: u64,
    warm: u64,
    warm_t: f64,
    late_max: u64,
    end: u64,
    budget: u64,
    /// Bytes per minute after warm-up.
    slope: f64,
    pass: bool,
}

fn rss_verdict(rss: &[(f64, u64)], ran: f64) -> Option<RssVerdict> {
    let first = rss.first()?.1;
    let (warm_t, warm) = *rss.iter().find(|s| s.0 >= ran * 0.25)?;
    let late_max = rss.iter().filter(|s| s.0 >= ran * 0.5).map(|s| s.1).max()?;
    let budget = ((warm as f64 * RSS_BUDGET_FRACTION) as u64).max(RSS_MIN_BUDGET);
    let after: Vec<(f64, f64)> = rss
        .iter()
        .filter(|s| s.0 >= warm_t)
        .map(|s| (s.0 / 60.0, s.1 as f64))
        .collect();
    Some(RssVerdict {
        first,
        warm,
        warm_t,
        late_max,
        end: rss.last()?.1,
        budget,
        slope: slope(&after),
        pass: late_max <= warm + budget,
    })
}

/// The ground truth of the workload process `row` belongs to, if any: the
/// latest process with its pid, when the names agree (memtrace shows "?"
/// for a process that exited before its name was read).
fn truth_of<'a>(row: &Row, by_pid: &HashMap<u32, &'a Truth>) -> Option<&'a Truth> {
    by_pid
        .get(&row.pid)
        .copied()
        .filter(|t| row.comm == t.comm || row.comm == "?")
}

fn evaluate(cfg: &Config, c: &Collected, s: &Summary) -> Outcome {
    let mut checks = Vec::new();
    let mut text = String::new();
    let p = &cfg.prefix;
    let ran = c.ran.as_secs_f64();

    let mut by_pid: HashMap<u32, &Truth> = HashMap::new();
    for t in &c.truths {
        by_pid.insert(t.pid, t); // sorted by seq: the latest wins
    }
    let leakers: Vec<&Truth> = c.truths.iter().filter(|t| t.role == "leaker").collect();
    let children: Vec<&Truth> = c.truths.iter().filter(|t| t.role == "child").collect();
    let leaking_children = children.iter().filter(|t| t.rate > 0).count();
    let wl_allocs: u64 = c.truths.iter().map(|t| t.allocs).sum();
    let wl_frees: u64 = c.truths.iter().map(|t| t.frees).sum();
    let wl_leaked: u64 = c.truths.iter().map(|t| t.leaked_bytes).sum();
    let cpu_ms = |k: &str| -> Option<u64> { c.parent_final.get(k)?.parse().ok() };
    let wl_cpu = cpu_ms("children_cpu_ms").map(|ms| ms + cpu_ms("parent_cpu_ms").unwrap_or(0));
    // Events of the workload: one per allocator call (a realloc is one
    // call but counts an allocation and a free), one exec per worker, one
    // exit per exited worker, the parent's exec.
    let wl_events: u64 = c
        .truths
        .iter()
        .map(|t| t.allocs + t.frees - t.reallocs + 1 + u64::from(t.state == "exited"))
        .sum::<u64>()
        + 1;
    let foreign = s.events.saturating_sub(wl_events);
    let foreign_share = foreign as f64 / s.events.max(1) as f64;

    let _ = writeln!(
        text,
        "{p} {} of workload; memtrace attached {:.2}s after start (attach_ms {}), watched {:.1}s",
        secs(c.ran),
        c.attach_wait.as_secs_f64(),
        s.attach_ms,
        s.watched_ms as f64 / 1000.0
    );
    let _ = writeln!(
        text,
        "{p} workload: {} processes ({} leakers, {} children of which {} leaking), \
         {} allocations, {} frees, {} leaked, CPU {}",
        c.truths.len(),
        leakers.len(),
        children.len(),
        leaking_children,
        thousands(wl_allocs),
        thousands(wl_frees),
        mib(wl_leaked),
        wl_cpu.map_or("?".into(), |ms| format!(
            "{:.1}s ({:.1}% of one core)",
            ms as f64 / 1000.0,
            ms as f64 / 10.0 / ran.max(1e-9)
        )),
    );
    let _ = writeln!(
        text,
        "{p} memtrace: {} events ({}/s; about {} or {:.0}% from other processes), lost {}, \
         stack failures {} ({:.1}% of events), untracked frees {}, {} live processes at the \
         end, tracked allocations {}, CPU {:.1}%, RSS at exit {}",
        thousands(s.events),
        thousands(s.events_per_s.round() as u64),
        thousands(foreign),
        foreign_share * 100.0,
        s.lost_events,
        thousands(s.stack_failures),
        s.stack_failures as f64 * 100.0 / s.events.max(1) as f64,
        thousands(s.untracked_frees),
        s.processes,
        s.tracked_allocations.map_or("?".into(), thousands),
        s.cpu_percent,
        mib(s.rss_bytes)
    );

    // (1) RSS flat after warm-up.
    match rss_verdict(&c.rss, ran) {
        Some(v) => {
            let _ = writeln!(
                text,
                "{p} memtrace RSS: first {}, at {:.0}s (25%) {}, second-half max {} ({}), end {}, \
                 slope after warm-up {}/min ({} samples)",
                mib(v.first),
                v.warm_t,
                mib(v.warm),
                mib(v.late_max),
                signed_mib(v.late_max as i64 - v.warm as i64),
                mib(v.end),
                signed_mib(v.slope as i64),
                c.rss.len()
            );
            let mut detail = format!(
                "second-half max {} vs {} at 25% of the run: {} (budget {}: max of {:.0}% and {})",
                mib(v.late_max),
                mib(v.warm),
                signed_mib(v.late_max as i64 - v.warm as i64),
                signed_mib(v.budget as i64),
                RSS_BUDGET_FRACTION * 100.0,
                mib(RSS_MIN_BUDGET)
            );
            let verdict = if v.pass {
                Verdict::Pass
            } else if foreign_share > FOREIGN_BUSY {
                let _ = write!(
                    detail,
                    "; but {:.0}% of the events came from other processes, whose outstanding \
                     allocations memtrace tracks too: rerun on a quiet machine",
                    foreign_share * 100.0
                );
                Verdict::Inconclusive
            } else {
                Verdict::Fail
            };
            checks.push(Check {
                name: "rss-flat",
                verdict,
                detail,
            });
        }
        None => checks.push(Check::new(
            "rss-flat",
            false,
            format!("too few RSS samples ({})", c.rss.len()),
        )),
    }

    // Rows of workload processes.
    let ours: Vec<(&Row, &Truth)> = s
        .top
        .iter()
        .filter_map(|r| truth_of(r, &by_pid).map(|t| (r, t)))
        .collect();
    let foreign_reused = s
        .top
        .iter()
        .filter(|r| by_pid.contains_key(&r.pid) && truth_of(r, &by_pid).is_none())
        .count();

    // (2) allocations - frees == outstanding allocations, per workload row.
    let bad_sum: Vec<String> = ours
        .iter()
        .filter(|(r, _)| r.allocations.checked_sub(r.frees) != Some(r.outstanding_allocations))
        .map(|(r, _)| {
            format!(
                "{} {}: {} - {} != {}",
                r.comm, r.pid, r.allocations, r.frees, r.outstanding_allocations
            )
        })
        .collect();
    checks.push(Check::new(
        "counters-add-up",
        bad_sum.is_empty() && !ours.is_empty(),
        if ours.is_empty() {
            "no workload process in memtrace's table".into()
        } else if bad_sum.is_empty() {
            format!(
                "allocations - frees == outstanding_allocations for all {} workload rows",
                ours.len()
            )
        } else {
            format!(
                "{} of {} rows: {}",
                bad_sum.len(),
                ours.len(),
                bad_sum.join("; ")
            )
        },
    ));

    // (3) lost events.
    checks.push(Check::new(
        "no-lost-events",
        s.lost_events == 0,
        format!(
            "lost_events {} (stack failures {}, untracked frees {} are reported, not judged)",
            s.lost_events, s.stack_failures, s.untracked_frees
        ),
    ));

    // (4) + (5) the leakers.
    let _ = writeln!(
        text,
        "{p} leakers (growth: memtrace's 30-s least-squares slope; the last ~1 s before the \
         end is the frozen state):"
    );
    let _ = writeln!(
        text,
        "{p}   {:<15} {:>7} {:>4} {:>9} {:>11} {:>7}  {:>23}  {:>21}  {:>21}",
        "comm",
        "pid",
        "rank",
        "rate B/s",
        "growth B/s",
        "error",
        "outstanding B mt/truth",
        "allocations mt/truth",
        "frees mt/truth"
    );
    let mut rate_fail = Vec::new();
    let mut rate_detail = Vec::new();
    for t in &leakers {
        let row = ours.iter().find(|(_, tt)| tt.seq == t.seq).map(|(r, _)| *r);
        match row {
            Some(r) => {
                // Rank by leak score (top is sorted by it).
                let rank = 1 + s.top.iter().filter(|o| o.leak_score > r.leak_score).count();
                let err = (r.growth_bytes_per_s - t.rate as f64) / t.rate as f64;
                if err.abs() > RATE_TOLERANCE {
                    rate_fail.push(t.comm.clone());
                }
                rate_detail.push(format!("{} {:+.2}%", t.comm, err * 100.0));
                let _ = writeln!(
                    text,
                    "{p}   {:<15} {:>7} {:>4} {:>9} {:>11.0} {:>+6.2}%  {:>23}  {:>21}  {:>21}",
                    t.comm,
                    t.pid,
                    rank,
                    t.rate,
                    r.growth_bytes_per_s,
                    err * 100.0,
                    format!("{}/{}", r.outstanding_bytes, t.out_bytes),
                    format!("{}/{}", r.allocations, t.allocs),
                    format!("{}/{}", r.frees, t.frees)
                );
            }
            None => {
                rate_fail.push(format!("{} (not listed)", t.comm));
                let _ = writeln!(
                    text,
                    "{p}   {:<15} {:>7} not in memtrace's table",
                    t.comm, t.pid
                );
            }
        }
    }
    checks.push(Check::new(
        "leak-rates",
        rate_fail.is_empty() && leakers.len() == 3,
        format!(
            "within {:.0}%: {}{}",
            RATE_TOLERANCE * 100.0,
            rate_detail.join(", "),
            if rate_fail.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", rate_fail.join(", "))
            }
        ),
    ));

    // (5) exact ground truth of every workload row (leakers included).
    let mut mismatch = Vec::new();
    for (r, t) in &ours {
        let got = (
            r.allocations,
            r.frees,
            r.outstanding_allocations,
            r.outstanding_bytes,
        );
        let want = (t.allocs, t.frees, t.out_allocs, t.out_bytes);
        if got != want {
            mismatch.push(format!(
                "{} {} ({}): memtrace allocs/frees/outstanding allocs/bytes {:?}, truth {:?}",
                t.comm, t.pid, t.state, got, want
            ));
        }
    }
    let leakers_exact = leakers
        .iter()
        .filter(|t| ours.iter().any(|(_, tt)| tt.seq == t.seq))
        .count();
    checks.push(Check::new(
        "exact-truth",
        mismatch.is_empty() && leakers_exact == leakers.len() && !ours.is_empty(),
        if mismatch.is_empty() {
            format!(
                "allocations, frees, outstanding allocations and bytes equal the ground truth \
                 for all {} workload rows ({} leakers)",
                ours.len(),
                leakers_exact
            )
        } else {
            format!(
                "{} of {} rows differ: {}",
                mismatch.len(),
                ours.len(),
                mismatch.join("; ")
            )
        },
    ));

    // (6) listing: leakers live, exited children listed for ~10 s.
    let grace_ns = EXIT_GRACE.as_nanos() as i64;
    let mut listing = Vec::new();
    for (r, t) in &ours {
        let should_be_exited = t.state == "exited";
        if r.exited != should_be_exited {
            listing.push(format!(
                "{} {} is {} but listed with exited={}",
                t.comm, t.pid, t.state, r.exited
            ));
        }
        if should_be_exited && c.end_boot_ns - t.end_boot_ns > grace_ns + 3_000_000_000 {
            listing.push(format!(
                "{} {} exited {:.1}s before the end but is still listed",
                t.comm,
                t.pid,
                (c.end_boot_ns - t.end_boot_ns) as f64 / 1e9
            ));
        }
    }
    let recent: Vec<&&Truth> = children
        .iter()
        .filter(|t| t.state == "exited" && c.end_boot_ns - t.end_boot_ns < grace_ns - 2_000_000_000)
        .collect();
    let recent_listed = recent
        .iter()
        .filter(|t| ours.iter().any(|(_, tt)| tt.seq == t.seq))
        .count();
    let full = s.top.len() >= TOP_ROWS;
    if !full && recent_listed < recent.len() {
        listing.push(format!(
            "only {recent_listed} of the {} children that exited in the last {}s are listed \
             (the table is not full)",
            recent.len(),
            (EXIT_GRACE - Duration::from_secs(2)).as_secs()
        ));
    }
    let exited_rows = ours.iter().filter(|(r, _)| r.exited).count();
    let unnamed = ours.iter().filter(|(r, _)| r.comm == "?").count();
    let _ = writeln!(
        text,
        "{p} table: {} rows ({}), {} of the workload ({} exited, {} live), {} named '?', \
         {} rows with a reused workload pid; {} of {} children that exited in the last {}s \
         listed",
        s.top.len(),
        if full { "full" } else { "not full" },
        ours.len(),
        exited_rows,
        ours.len() - exited_rows,
        unnamed,
        foreign_reused,
        recent_listed,
        recent.len(),
        (EXIT_GRACE - Duration::from_secs(2)).as_secs()
    );
    checks.push(Check::new(
        "listing",
        listing.is_empty(),
        if listing.is_empty() {
            format!(
                "live/exited state matches for all {} workload rows; exited ones listed for \
                 ~{}s{}",
                ours.len(),
                EXIT_GRACE.as_secs(),
                if full {
                    " (table full: completeness not judged)"
                } else {
                    ""
                }
            )
        } else {
            listing.join("; ")
        },
    ));

    // (7) the run itself was sound.
    let num = |m: &HashMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
    let failures = num(&c.parent, "child_failures").unwrap_or(u64::MAX);
    let deaths = num(&c.parent, "leaker_deaths").unwrap_or(u64::MAX);
    let spawned = num(&c.parent, "spawned").unwrap_or(0);
    let lower = c.stderr.to_lowercase();
    let panicked = ["panicked at", "backtrace", "thread 'main'"]
        .iter()
        .any(|b| lower.contains(b));
    let mut health = Vec::new();
    if !c.mt_status.success() {
        health.push(format!("memtrace exited with {}", c.mt_status));
    }
    if panicked {
        health.push("memtrace's stderr has panic text".into());
    }
    if failures != 0 {
        health.push(format!("{failures} children failed"));
    }
    if deaths != 0 {
        health.push(format!("{deaths} leakers died"));
    }
    if c.truths.len() as u64 != spawned {
        health.push(format!(
            "{} ground-truth files for {spawned} processes spawned",
            c.truths.len()
        ));
    }
    if !c.workload_stderr.trim().is_empty() {
        health.push(format!("workload stderr: {}", c.workload_stderr.trim()));
    }
    checks.push(Check::new(
        "run-health",
        health.is_empty(),
        if health.is_empty() {
            format!(
                "memtrace exited 0 without panic text; {spawned} processes spawned, every one \
                 wrote its ground truth; no child failed, no leaker died"
            )
        } else {
            health.join("; ")
        },
    ));

    // Not judged: rows of other processes whose counters do not add up.
    let other_bad: Vec<&Row> = s
        .top
        .iter()
        .filter(|r| truth_of(r, &by_pid).is_none())
        .filter(|r| r.allocations.checked_sub(r.frees) != Some(r.outstanding_allocations))
        .collect();
    if !other_bad.is_empty() {
        let examples: Vec<String> = other_bad
            .iter()
            .take(5)
            .map(|r| {
                format!(
                    "{} {} ({}): {} - {} vs {}",
                    r.comm,
                    r.pid,
                    if r.exited { "exited" } else { "live" },
                    r.allocations,
                    r.frees,
                    r.outstanding_allocations
                )
            })
            .collect();
        let _ = writeln!(
            text,
            "{p} note: {} of {} other processes' rows have allocations - frees != \
             outstanding_allocations (still allocating after memtrace's last snapshot?): {}",
            other_bad.len(),
            s.top.len() - ours.len(),
            examples.join("; ")
        );
    }
    if !c.stderr.trim().is_empty() {
        let _ = writeln!(text, "{p} memtrace stderr: {}", c.stderr.trim());
    }

    let _ = writeln!(text, "{p} checks:");
    for ch in &checks {
        let _ = writeln!(
            text,
            "{p}   [{}] {}: {}",
            match ch.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Inconclusive => "INCONCLUSIVE",
            },
            ch.name,
            ch.detail
        );
    }
    let _ = writeln!(
        text,
        "{p} {} of {} checks passed; files in {}",
        checks
            .iter()
            .filter(|ch| ch.verdict == Verdict::Pass)
            .count(),
        checks.len(),
        cfg.dir.display()
    );
    Outcome { checks, text }
}
