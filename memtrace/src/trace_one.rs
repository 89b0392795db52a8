//! `memtrace report`: trace one process (attached to, or launched) and
//! write its leak report.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{ReportArgs, Tuning},
    collect::Collector,
    launch::{self, ChildState},
    output::Output,
    probes::{self, LoadOptions},
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

/// The C library and C++ runtime a process uses, as paths memtrace can
/// open (through the process's own root).
fn libraries_of(pid: u32) -> Result<(PathBuf, Option<PathBuf>)> {
    let in_root = |p: PathBuf| PathBuf::from(format!("/proc/{pid}/root{}", p.display()));
    let libc = probes::mapped_library(pid, "libc.so.6")
        .with_context(|| format!("reading the memory map of PID {pid}"))?
        .ok_or_else(|| {
            anyhow!(
                "PID {pid} does not use a dynamically linked glibc (libc.so.6): \
                 static binaries and other allocators are not supported yet"
            )
        })?;
    let cxx = probes::mapped_library(pid, "libstdc++.so.6").ok().flatten();
    Ok((in_root(libc), cxx.map(in_root)))
}

fn scope(pid: u32) -> Result<probes::Scope> {
    NonZeroU32::new(pid)
        .map(probes::Scope::Process)
        .ok_or_else(|| anyhow!("invalid PID 0"))
}

/// Plan and attach every allocator probe for `pid`.
fn attach(
    loaded: &mut probes::Loaded,
    pid: u32,
    libs: &(PathBuf, Option<PathBuf>),
) -> Result<probes::Links> {
    let mut links = probes::Links::default();
    let r = probes::attach_allocators(loaded, &libs.0, libs.1.as_deref(), scope(pid)?, &mut links);
    match r {
        Ok(_) => Ok(links),
        Err(e) => {
            links.detach(&mut loaded.ebpf);
            Err(e)
        }
    }
}

/// Re-attach the probes of `pid`: a thread other than the leader exec'd,
/// and PID-scoped links follow the leader they were made for.
fn reattach(
    loaded: &mut probes::Loaded,
    links: &mut probes::Links,
    pid: u32,
    libs: &(PathBuf, Option<PathBuf>),
) -> Result<()> {
    std::mem::take(links).detach(&mut loaded.ebpf);
    *links = attach(loaded, pid, libs).context("re-attaching after an exec from a thread")?;
    Ok(())
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
        floor_only: tuning.floor,
        ring_bytes: tuning.ring_bytes,
        stack_entries: tuning.stack_entries,
        sample_bytes: tuning.sample_bytes.unwrap_or(0),
    };
    let mut loaded = probes::load(&opts)?;
    let libs = match &target {
        Target::Attach(pid) => libraries_of(*pid)?,
        Target::Launch(_) => (
            probes::host_libc()?,
            probes::find_in_lib_dirs("libstdc++.so.6"),
        ),
    };
    let mut links = attach(&mut loaded, pid, &libs)?;
    probes::attach_lifecycle(&mut loaded.ebpf)?;
    let mut messages = crate::ebpf_log::Messages::start(&mut loaded.ebpf);
    let mut tracker = Tracker::with_filter(vec![pid]);
    tracker.set_limits(Limits {
        allocations: tuning.max_allocations,
        ..Limits::default()
    });
    tracker.set_sample_bytes(tuning.sample_bytes.unwrap_or(0));
    let mut col = Collector::new(&mut loaded.ebpf, tracker)?;

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
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(64) {
            col.maintain();
        }
        if col.drain() > 0 {
            // Normalize new stacks at once: the process may exit any time.
            col.resolve_new_stacks();
            ident.refresh(pid);
        }
        match &mut target {
            Target::Attach(pid) => {
                if col.take_thread_execs().contains(pid) {
                    reattach(&mut loaded, &mut links, *pid, &libs)?;
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
                        if former_tid != pid {
                            reattach(&mut loaded, &mut links, pid, &libs)?;
                        }
                        child.resume_stopped();
                    }
                    // The leader is gone but other threads go on.
                    ChildState::Gone(_) if procmaps::has_live_threads(pid) => {}
                    ChildState::Gone(_) => break true,
                }
            }
        }
    };
    let traced_for = started.elapsed();
    col.drain();
    if !exited {
        col.resolve_new_stacks();
        ident.refresh(pid);
    }
    // Leave the traced process alone as soon as possible.
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
    if kc.return_without_entry > 0 {
        notes.push(format!(
            "{} allocator returns had no recorded entry (calls in progress at attach)",
            kc.return_without_entry
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
        stack_failures: kc.stack_fail + col.stacks.fetch_failures,
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
}

impl Ident {
    fn refresh(&mut self, pid: u32) {
        if let Some(c) = procmaps::comm(pid) {
            self.comm = Some(c);
        }
        if let Some(e) = procmaps::exe(pid) {
            self.exe = Some(e);
        }
    }
}
