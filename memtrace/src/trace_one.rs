//! `memtrace report`: trace one process (attached to, or launched) and
//! write its leak report.

use std::{
    num::NonZeroU32,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{ReportArgs, Tuning},
    collect::Collector,
    launch::{self, ChildState},
    output::Output,
    phases::Phases,
    probes::{
        self, LoadOptions,
        discover::{self, Discovery},
    },
    procmaps, report,
    symbolize::Symbols,
    system,
    tracker::{Limits, Tracker},
};

/// How often the ring buffer is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(2);

pub fn run(args: ReportArgs, tuning: &Tuning) -> Result<()> {
    if args.pid.is_none() && args.command.is_empty() {
        bail!("report needs --pid PID or a command after `--` (see memtrace report --help)");
    }
    if args.duration.is_some() && args.pid.is_none() {
        bail!("--duration applies to --pid; a command is traced until it exits");
    }
    // Fail on an unwritable output before tracing anything.
    let output = args.output.as_deref().map(Output::reserve).transpose()?;
    system::preflight()?;

    let target = match args.pid {
        Some(pid) => Target::Attach(validate_pid(pid)?),
        None => Target::Launch(launch::spawn_suspended(&args.command)?),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let prog = args
        .command
        .first()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let outcome = rt.block_on(trace(target, &prog, args.duration, tuning))?;
    let text = report::render(&outcome, args.format)?;
    match output {
        Some(o) => o.commit(&text),
        None => write_stdout(&text),
    }
}

fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("writing the report to stdout"),
    }
}

enum Target {
    Attach(u32),
    Launch(launch::Child),
}

/// Check that `pid` is a process memtrace can attach to.
fn validate_pid(pid: u32) -> Result<u32> {
    if pid == std::process::id() {
        bail!("PID {pid} is memtrace itself");
    }
    if !procmaps::alive(pid) {
        bail!("no process with PID {pid}");
    }
    if procmaps::is_kernel_thread(pid) {
        bail!("PID {pid} is a kernel thread: it has no user-space allocations");
    }
    if !procmaps::has_live_threads(pid) {
        bail!("PID {pid} is exiting (a zombie)");
    }
    Ok(pid)
}

fn scope(pid: u32) -> Result<NonZeroU32> {
    NonZeroU32::new(pid).ok_or_else(|| anyhow!("invalid PID 0"))
}

/// How often the memory map is checked for new objects (dlopen without a
/// loader stop, a process attached with --pid).
const RESCAN_EVERY: Duration = Duration::from_millis(250);

/// The allocators of the traced process and the links to them.
struct Allocators {
    discovery: Discovery,
    links: probes::Links,
    pid: NonZeroU32,
    /// Stop the process at its loader's hook (only a launched command,
    /// which memtrace ptraces).
    loader: bool,
    signature: std::collections::HashSet<discover::FileId>,
    last_scan: Instant,
    /// Whether the executable's call sites were looked for (once per image).
    exe_sites: bool,
}

impl Allocators {
    fn new(pid: u32, loader: bool) -> Result<Self> {
        Ok(Self {
            discovery: Discovery::default(),
            links: probes::Links::default(),
            pid: scope(pid)?,
            loader,
            signature: Default::default(),
            last_scan: Instant::now(),
            exe_sites: false,
        })
    }

    /// Attach to every allocator object newly mapped by the process.
    fn scan(&mut self, loaded: &mut probes::Loaded) -> Result<usize> {
        let pid = self.pid.get();
        self.last_scan = Instant::now();
        self.signature = discover::signature(pid).unwrap_or_default();
        let loader = self.loader.then_some(self.pid);
        let n = self
            .discovery
            .scan(
                loaded,
                pid,
                probes::Scope::Process(self.pid),
                loader,
                &mut self.links,
            )
            .with_context(|| format!("reading the memory map of PID {pid}"))?;
        if !self.exe_sites {
            self.exe_sites = true;
            match probes::add_exe_sites(loaded, pid) {
                Ok(0) => {}
                Ok(n) => self.discovery.note(format!(
                    "the executable keeps no frame pointers: stacks step out of its \
                     allocating functions by its unwind tables ({n} call sites{})",
                    if n >= probes::MAX_SITES {
                        ", the most kept: callers further from the allocator are not followed"
                    } else {
                        ""
                    }
                )),
                Err(e) if crate::procmaps::alive(pid) => self.discovery.note(format!(
                    "{e:#}: the callers of its functions without frame pointers may be missing"
                )),
                Err(_) => {}
            }
        }
        Ok(n)
    }

    /// Start afresh: the process exec'd (links of the old image detached).
    fn rescan_after_exec(&mut self, loaded: &mut probes::Loaded) -> Result<()> {
        std::mem::take(&mut self.links).detach(&mut loaded.ebpf);
        self.discovery.forget_links();
        self.exe_sites = false;
        self.scan(loaded)?;
        Ok(())
    }

    /// On the timer: scan again if the set of mapped files changed. Objects
    /// found this way were mapped without memtrace seeing it at once: their
    /// earliest allocations may be missed, and the report says so.
    fn poll(&mut self, loaded: &mut probes::Loaded) {
        if self.last_scan.elapsed() < RESCAN_EVERY {
            return;
        }
        self.last_scan = Instant::now();
        let Ok(sig) = discover::signature(self.pid.get()) else {
            return;
        };
        if sig == self.signature {
            return;
        }
        let before = self.discovery.found.len();
        if let Ok(n) = self.scan(loaded)
            && n > 0
        {
            let late: Vec<String> = self.discovery.found[before..].to_vec();
            for f in late {
                if !self.loader {
                    // --pid: say so (a launched command's stderr is its own).
                    eprintln!("memtrace: also tracing {f}");
                }
                self.discovery.notes.push(format!(
                    "{f} was found by a periodic scan of the memory map (up to {} ms after it \
                     was mapped): allocations it served before then are not seen",
                    RESCAN_EVERY.as_millis()
                ));
            }
        }
    }
}

async fn trace(
    mut target: Target,
    prog: &str,
    duration: Option<Duration>,
    tuning: &Tuning,
) -> Result<report::Report> {
    let pid = match &target {
        Target::Attach(p) => *p,
        Target::Launch(c) => c.pid,
    };
    let opts = LoadOptions {
        target_tgid: pid,
        floor: match (tuning.floor, &tuning.floor_phases) {
            (_, Some(_)) => memtrace_common::floor::PHASED,
            (true, None) => memtrace_common::floor::ON,
            (false, None) => memtrace_common::floor::OFF,
        },
        ring_bytes: tuning.ring_bytes,
        sample_bytes: tuning.sample_bytes.unwrap_or(0),
    };
    let mut loaded = probes::load(&opts)?;
    let mut alloc = Allocators::new(pid, matches!(target, Target::Launch(_)))?;
    if let Target::Attach(pid) = &target {
        let r = alloc.scan(&mut loaded);
        if r.is_err() || !alloc.discovery.has_allocator() {
            let Allocators {
                links, discovery, ..
            } = alloc;
            links.detach(&mut loaded.ebpf);
            r?;
            let why = discovery.notes.join("; ");
            bail!(
                "found no allocator to trace in PID {pid}'s memory map{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            );
        }
    }
    probes::attach_lifecycle(&mut loaded.ebpf)?;
    let mut messages = crate::ebpf_log::Messages::start(&mut loaded.ebpf);
    let mut tracker = Tracker::with_filter(vec![pid]);
    tracker.set_limits(Limits {
        allocations: tuning.max_allocations,
        ..Limits::default()
    });
    tracker.set_sample_bytes(tuning.sample_bytes.unwrap_or(0));
    let mut col = Collector::new(&mut loaded.ebpf, tracker)?;
    let mut phases = match &tuning.floor_phases {
        Some(path) => Some(Phases::start(&mut loaded.ebpf, path.clone())?),
        None => None,
    };

    let mut sigint = signal(SignalKind::interrupt()).context("installing signal handlers")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing signal handlers")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing signal handlers")?;

    let started = Instant::now();
    let mut ident = Ident::default();
    match &mut target {
        Target::Attach(pid) => {
            ident.refresh(*pid);
            col.stacks.prime(*pid);
            eprintln!("memtrace: attached to PID {pid}");
        }
        Target::Launch(child) => {
            child.trace()?;
            child.release(prog)?;
        }
    }
    let deadline = duration.map(|d| started + d);
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut interrupts = 0;
    let mut ticks: u32 = 0;
    let exited = loop {
        tokio::select! {
            _ = drain.tick() => {}
            _ = sigint.recv() => interrupts += 1,
            _ = sigterm.recv() => interrupts += 1,
            _ = sighup.recv() => interrupts += 1,
        }
        messages.flush();
        if let Some(p) = &mut phases {
            p.tick()?;
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(64) {
            // The name changes only at exec: every ~128 ms is plenty (and
            // the exit stop and the end read it again).
            ident.refresh(pid);
        }
        if col.drain() > 0 {
            // Normalize new stacks at once: the process may exit any time.
            col.resolve_new_stacks();
        }
        alloc.poll(&mut loaded);
        match &mut target {
            Target::Attach(pid) => {
                if col.take_thread_execs().contains(pid) {
                    alloc
                        .rescan_after_exec(&mut loaded)
                        .context("re-attaching after an exec")?;
                }
                if interrupts > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                    break false;
                }
                let frozen = col.tracker.get(*pid).is_some_and(|p| p.exited_ns.is_some());
                if frozen || !procmaps::has_live_threads(*pid) {
                    break true;
                }
            }
            Target::Launch(child) => {
                // The command got the terminal's SIGINT too: wait for it to
                // exit, unless the user insists.
                if interrupts > 1 {
                    break false;
                }
                match child.poll() {
                    ChildState::Running => {}
                    ChildState::ExitStop => {
                        // Its memory is still intact: take the last events
                        // and normalize their stacks now.
                        col.drain();
                        col.resolve_new_stacks();
                        ident.refresh(pid);
                        child.resume_stopped();
                    }
                    ChildState::ExecStop { former_tid } => {
                        // A new image: find its allocators (a static
                        // executable's own, the loader's hook) before it
                        // runs. Links made for the leader still hold (by
                        // inode, for this process); an exec from another
                        // thread needs them made again.
                        let r = if former_tid == pid {
                            alloc.scan(&mut loaded).map(|_| ())
                        } else {
                            alloc.rescan_after_exec(&mut loaded)
                        };
                        child.resume_stopped();
                        r.context("attaching to the command's allocators")?;
                    }
                    ChildState::LoaderStop => {
                        // The loader mapped objects and runs none of them yet.
                        let r = alloc.scan(&mut loaded);
                        child.resume_stopped();
                        r.context("attaching to the command's allocators")?;
                    }
                    // The leader is gone but other threads go on.
                    ChildState::Gone(_) if procmaps::has_live_threads(pid) => {}
                    ChildState::Gone(_) => break true,
                }
            }
        }
    };
    let traced_for = started.elapsed();
    if let Some(p) = phases {
        p.finish()?;
    }
    col.drain();
    if !exited {
        col.resolve_new_stacks();
        ident.refresh(pid);
    }
    // Leave the traced process alone as soon as possible.
    let Allocators {
        links, discovery, ..
    } = alloc;
    links.detach(&mut loaded.ebpf);
    col.drain();
    col.resolve_new_stacks();
    let now_ns = system::monotonic_ns();
    let kc = col.kernel_counters();
    let empty;
    let p = match col.tracker.get(pid) {
        Some(p) => p,
        None => {
            empty = crate::tracker::Process::new(pid, now_ns);
            &empty
        }
    };
    let mut notes = Vec::new();
    if matches!(target, Target::Attach(_)) {
        notes.push(
            "attached to a running process: allocations made before attach are not seen, \
             and frees of them count as untracked frees"
                .to_string(),
        );
    }
    if !discovery.found.is_empty() {
        notes.push(format!("allocators traced: {}", discovery.found.join(", ")));
    }
    if discovery.found.is_empty() {
        notes.push("no allocator was found in the process: nothing could be traced".into());
    }
    notes.extend(discovery.notes);
    notes.extend(ident.notes());
    if opts.sample_bytes > 0 && !loaded.has_sessions() {
        notes.push(
            "uprobe sessions are not available (kernel 6.13+, uprobe_multi): unsampled \
             calls still took their return probe"
                .into(),
        );
    }
    if kc.return_without_entry > 0 {
        notes.push(format!(
            "{} allocator returns had no recorded entry (calls in progress at attach)",
            kc.return_without_entry
        ));
    }
    if col.stacks.unmapped_frames > 0 {
        notes.push(format!(
            "{} stack frames were in no file mapping of the process (JIT code, or \
             mapped after the process exited): shown by address",
            col.stacks.unmapped_frames
        ));
    }
    let meta = report::Meta {
        pid,
        comm: ident.comm.unwrap_or_else(|| short_name(prog)),
        exe: ident.exe.unwrap_or_else(|| prog.to_string()),
        exited,
        duration_ms: traced_for.as_millis() as u64,
        now_ns: p.exited_ns.unwrap_or(now_ns),
        notes,
    };
    let losses = report::Losses {
        lost_events: kc.lost() + col.tracker.totals.decode_errors,
        stack_failures: kc.stack_truncated,
    };
    let mut symbols = Symbols::default();
    let input = report::input_of(p, &col.stacks, usize::MAX);
    Ok(report::build(&input, &mut symbols, meta, losses))
}

fn short_name(prog: &str) -> String {
    Path::new(prog)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| prog.to_string())
}

/// Name and executable of the traced process, read while it lives.
#[derive(Default)]
struct Ident {
    comm: Option<String>,
    exe: Option<String>,
    /// Its cgroup (v2 path), which names a container or service.
    cgroup: Option<String>,
    /// Its root directory, when not memtrace's (chroot, container).
    root: Option<String>,
}

impl Ident {
    fn refresh(&mut self, pid: u32) {
        if let Some(c) = procmaps::comm(pid) {
            self.comm = Some(c);
        }
        if let Some(e) = procmaps::exe(pid) {
            self.exe = Some(e);
        }
        if let Some(c) = procmaps::cgroup(pid) {
            self.cgroup = Some(c);
        }
        if !procmaps::same_root(pid)
            && let Ok(r) = std::fs::read_link(format!("/proc/{pid}/root"))
        {
            self.root = Some(r.to_string_lossy().into_owned());
        }
    }

    /// Report notes naming where the process ran.
    fn notes(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(c) = &self.cgroup {
            v.push(format!("cgroup: {c}"));
        }
        if let Some(r) = &self.root {
            v.push(format!(
                "root directory: {r} (chroot or container); PIDs are the host's"
            ));
        }
        v
    }
}
