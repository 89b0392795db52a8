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
    probes::{self, LoadOptions},
    procmaps, report,
    symbolize::Symbols,
    system,
    tracker::{Limits, Tracker},
};

mod allocators;
mod children;
mod ident;

use self::{allocators::Allocators, children::Children, ident::Ident};

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
    let outcome = rt.block_on(trace(target, &prog, args.duration, args.children, tuning))?;
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

async fn trace(
    mut target: Target,
    prog: &str,
    duration: Option<Duration>,
    follow_children: bool,
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
    // A launched command's ptrace stops (a new process, an exec, its
    // loader's hook, its exit) send memtrace a SIGCHLD: act at once rather
    // than at the next drain, as the stopped thread waits for memtrace.
    let launched = matches!(target, Target::Launch(_));
    let mut sigchld = signal(SignalKind::child()).context("installing signal handlers")?;

    let started = Instant::now();
    let mut ident = Ident::default();
    let mut children = Children::new(follow_children);
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
    let mut wait_status = None;
    let exited = 'run: loop {
        // Whether to do the periodic work; a SIGCHLD alone only asks for
        // the ptrace stops (a program taking many signals stops at each).
        let periodic = tokio::select! {
            _ = drain.tick() => true,
            _ = sigint.recv() => { interrupts += 1; true }
            _ = sigterm.recv() => { interrupts += 1; true }
            _ = sighup.recv() => { interrupts += 1; true }
            _ = sigchld.recv(), if launched => false,
        };
        if periodic {
            messages.flush();
            if let Some(p) = &mut phases {
                p.tick()?;
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(64) {
                // The name changes only at exec: every ~128 ms is plenty
                // (and the exit stop and the end read it again).
                ident.refresh(pid);
            }
            if col.drain() > 0 {
                // Normalize new stacks at once: the process may exit any
                // time.
                col.resolve_new_stacks();
            }
            alloc.poll(&mut loaded);
            children.poll(&mut loaded);
        }
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
                // Every stop waiting: one SIGCHLD may stand for several.
                loop {
                    match child.poll() {
                        ChildState::Running => break,
                        ChildState::ExitStop { pid: p } => {
                            // Its memory is still intact: take the last events
                            // and normalize their stacks now.
                            col.drain();
                            col.resolve_new_stacks();
                            if p == pid {
                                ident.refresh(pid);
                            } else if let Some(f) = children.get_mut(p) {
                                f.ident.refresh(p);
                            }
                            child.resume_stopped();
                        }
                        ChildState::ExecStop { pid: p, former_tid } => {
                            // A new image: find its allocators (a static
                            // executable's own, the loader's hook) before it
                            // runs. Links made for the leader still hold (by
                            // inode, for this process); an exec from another
                            // thread needs them made again.
                            let a = if p == pid {
                                Some(&mut alloc)
                            } else {
                                children.get_mut(p).map(|f| &mut f.alloc)
                            };
                            let r = match a {
                                Some(a) if former_tid == p => {
                                    a.new_image();
                                    a.scan(&mut loaded).map(|_| ())
                                }
                                Some(a) => a.rescan_after_exec(&mut loaded),
                                None => Ok(()),
                            };
                            children.on_exec(p, p == pid, &mut loaded);
                            child.resume_stopped();
                            if p == pid {
                                r.context("attaching to the command's allocators")?;
                            } else {
                                children.on_error(p, r);
                            }
                        }
                        ChildState::LoaderStop { pid: p } => {
                            // The loader mapped objects and runs none of them yet.
                            let r = if p == pid {
                                alloc.scan(&mut loaded).map(|_| ())
                            } else {
                                children
                                    .get_mut(p)
                                    .map_or(Ok(()), |f| f.alloc.scan(&mut loaded).map(|_| ()))
                            };
                            child.resume_stopped();
                            if p == pid {
                                r.context("attaching to the command's allocators")?;
                            } else {
                                children.on_error(p, r);
                            }
                        }
                        ChildState::NewProcess { pid: c, parent } => {
                            children.on_new(
                                c,
                                parent,
                                parent == pid,
                                child,
                                &mut loaded,
                                &mut col.tracker,
                            );
                        }
                        ChildState::ChildGone { pid: c, status } => {
                            children.on_gone(c, status, &mut loaded);
                        }
                        // The leader is gone but other threads go on.
                        ChildState::Gone(s) if procmaps::has_live_threads(pid) => {
                            wait_status = wait_status.or(s);
                            // Look again at the next drain.
                            break;
                        }
                        ChildState::Gone(s) => {
                            wait_status = wait_status.or(s);
                            break 'run true;
                        }
                    }
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
    children.detach_all(&mut loaded);
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
    notes.extend(children.notes_for_command());
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
        parent_pid: None,
        wait_status,
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
    let mut r = report::build(&input, &mut symbols, meta, losses);
    r.children = children.reports(&col, &mut symbols, losses, now_ns);
    Ok(r)
}

pub(super) fn short_name(prog: &str) -> String {
    Path::new(prog)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| prog.to_string())
}
