//! `memtrace` with no subcommand: the live dashboard of every process.
//!
//! One event loop (`tokio::select!`) over a 2 ms drain tick (ring buffer,
//! terminal input, background answers), the refresh tick, and signals.
//! State lives in `app` (pure), drawing in `ui`, data in `view`.

pub mod app;
mod found;
pub mod keys;
pub mod model;
mod score;
mod terminal;
pub mod ui;
mod view;
mod worker;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use self::{found::Found, keys::Action, model::RowKey, view::View, worker::Worker};
use crate::{
    cli::{DashboardArgs, Tuning},
    collect::Collector,
    probes::{self, LoadOptions},
    procmaps, report, system,
    tracker::{Limits, Tracker},
};

/// How often the ring buffer (and the terminal) is polled. The 32 MiB ring
/// holds ~250 ms of events at 1M events/s, so 10 ms keeps up with any load
/// while costing memtrace few wake-ups (`report` polls every 2 ms, for
/// processes that may exit any moment).
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Sliding window of growth and rates.
const WINDOW: Duration = Duration::from_secs(30);

pub fn run(args: DashboardArgs, tuning: &Tuning) -> Result<()> {
    system::preflight()?;
    for &pid in &args.pids {
        if pid == std::process::id() {
            bail!("PID {pid} is memtrace itself");
        }
        if !procmaps::alive(pid) {
            bail!("no process with PID {pid}");
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(session(args, tuning))
}

/// Probes attached for the dashboard.
struct Tracing {
    loaded: probes::Loaded,
    links: probes::Links,
    col: Collector,
    found: Found,
}

fn attach(args: &DashboardArgs, tuning: &Tuning) -> Result<Tracing> {
    if tuning.floor_phases.is_some() {
        bail!("--floor-phases works with `memtrace report` only");
    }
    let opts = LoadOptions {
        target_tgid: 0,
        floor: u32::from(tuning.floor),
        ring_bytes: tuning.ring_bytes,
        sample_bytes: tuning.sample_bytes.unwrap_or(0),
    };
    let mut loaded = probes::load(&opts)?;
    let mut links = probes::Links::default();
    let mut found = Found::new(&args.pids);
    let r = found.start(&mut loaded, &mut links);
    if let Err(e) = r {
        links.detach(&mut loaded.ebpf);
        return Err(e);
    }
    probes::attach_lifecycle(&mut loaded.ebpf)?;
    let mut tracker = if args.pids.is_empty() {
        Tracker::new()
    } else {
        Tracker::with_filter(args.pids.clone())
    };
    tracker.set_limits(Limits {
        allocations: tuning.max_allocations,
        ..Limits::default()
    });
    tracker.set_sample_bytes(tuning.sample_bytes.unwrap_or(0));
    let col = Collector::new(&mut loaded.ebpf, tracker)?;
    Ok(Tracing {
        loaded,
        links,
        col,
        found,
    })
}

fn scope_text(pids: &[u32]) -> String {
    if pids.is_empty() {
        "all processes".into()
    } else {
        let v: Vec<String> = pids.iter().map(u32::to_string).collect();
        format!("PID {}", v.join(", "))
    }
}

async fn session(args: DashboardArgs, tuning: &Tuning) -> Result<()> {
    let t0 = Instant::now();
    let origin_ns = system::monotonic_ns();
    let mut tracing = attach(&args, tuning)?;
    let attach_ms = t0.elapsed().as_millis() as u64;
    let mut scope = scope_text(&args.pids);
    if let Some(n) = tuning.sample_bytes {
        scope.push_str(&format!(
            " · sampled every ~{} (estimates)",
            crate::report::text::human_bytes(n)
        ));
    }
    let mut view = View::new(origin_ns, WINDOW, scope);
    let outcome = match args.headless {
        Some(d) => headless(&mut tracing, &mut view, args.delay, d, attach_ms).await,
        None => interactive(&mut tracing, &mut view, &args, attach_ms).await,
    };
    let Tracing {
        mut loaded, links, ..
    } = tracing;
    links.detach(&mut loaded.ebpf);
    outcome
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        let s = |k| signal(k).context("installing signal handlers");
        Ok(Self {
            int: s(SignalKind::interrupt())?,
            term: s(SignalKind::terminate())?,
            hup: s(SignalKind::hangup())?,
        })
    }
}

/// What `--headless` prints at the end.
#[derive(Serialize)]
struct Summary {
    attach_ms: u64,
    watched_ms: u64,
    events: u64,
    events_per_s: f64,
    lost_events: u64,
    stack_failures: u64,
    untracked_frees: u64,
    processes: usize,
    cpu_percent: f64,
    /// memtrace's own resident memory at the end.
    rss_bytes: u64,
    /// Outstanding allocations held in memtrace's tables at the end.
    tracked_allocations: usize,
    /// Allocator objects attached (`path (what)`), in order.
    allocators: Vec<String>,
    /// Objects that could not be traced, one line each.
    notes: Vec<String>,
    top: Vec<SummaryRow>,
}

#[derive(Serialize)]
struct SummaryRow {
    pid: u32,
    comm: String,
    outstanding_bytes: u64,
    outstanding_allocations: u64,
    growth_bytes_per_s: f64,
    leak_score: f64,
    allocations: u64,
    frees: u64,
    exited: bool,
    /// The process's cgroup (names its container or service), if alive.
    cgroup: Option<String>,
}

async fn headless(
    t: &mut Tracing,
    view: &mut View,
    delay: Duration,
    duration: Duration,
    attach_ms: u64,
) -> Result<()> {
    let mut sig = Signals::new()?;
    // Whoever runs a headless dashboard (benchmarks, tests) may start its
    // workload from here on.
    eprintln!("memtrace: attached in {attach_ms} ms");
    let start = Instant::now();
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(delay);
    let mut cpu_sum = (0.0, 0u32);
    loop {
        tokio::select! {
            _ = drain.tick() => {
                if t.col.drain() > 0 {
                    t.col.resolve_new_stacks();
                }
            }
            _ = refresh.tick() => {
                t.found.refresh(&mut t.loaded, &mut t.links);
                let kc = t.col.kernel_counters();
                let snapshot = view.refresh(&mut t.col, &kc, system::monotonic_ns());
                if start.elapsed() > delay {
                    cpu_sum = (cpu_sum.0 + snapshot.header.cpu_percent, cpu_sum.1 + 1);
                }
            }
            _ = sig.int.recv() => break,
            _ = sig.term.recv() => break,
            _ = sig.hup.recv() => break,
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    // One last refresh after the last drain, so every figure below is of
    // the same moment.
    t.col.drain();
    t.col.resolve_new_stacks();
    let kc = t.col.kernel_counters();
    let snapshot = view.refresh(&mut t.col, &kc, system::monotonic_ns());
    let watched = start.elapsed();
    let mut rows = snapshot.rows;
    rows.sort_by(|a, b| b.leak_score.total_cmp(&a.leak_score));
    let counts = |key: RowKey| {
        t.col
            .tracker
            .live()
            .chain(t.col.tracker.exited())
            .find(|p| view::key_of(p) == key)
            .map_or((0, 0), |p| (p.counters.allocations, p.counters.frees))
    };
    let summary = Summary {
        attach_ms,
        watched_ms: watched.as_millis() as u64,
        events: t.col.tracker.totals.events,
        events_per_s: t.col.tracker.totals.events as f64 / watched.as_secs_f64().max(1e-9),
        lost_events: kc.lost() + t.col.tracker.totals.decode_errors,
        stack_failures: kc.stack_truncated,
        untracked_frees: snapshot.header.untracked_frees,
        processes: snapshot.header.processes,
        cpu_percent: if cpu_sum.1 > 0 {
            cpu_sum.0 / f64::from(cpu_sum.1)
        } else {
            0.0
        },
        rss_bytes: own_rss(),
        tracked_allocations: t.col.tracker.held(),
        allocators: t.found.discovery.found.clone(),
        notes: t.found.discovery.notes.clone(),
        top: rows
            .iter()
            .take(50)
            .map(|r| {
                let (allocations, frees) = counts(r.key);
                SummaryRow {
                    pid: r.pid,
                    comm: r.comm.clone(),
                    outstanding_bytes: r.outstanding_bytes,
                    outstanding_allocations: r.outstanding_allocations,
                    growth_bytes_per_s: r.growth_bytes_per_s,
                    leak_score: r.leak_score,
                    allocations,
                    frees,
                    exited: r.exited,
                    cgroup: procmaps::cgroup(r.pid),
                }
            })
            .collect(),
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

async fn interactive(
    t: &mut Tracing,
    view: &mut View,
    args: &DashboardArgs,
    attach_ms: u64,
) -> Result<()> {
    let mut sig = Signals::new()?;
    let mut worker = Worker::start().context("starting the symbolization thread")?;
    let mut term = terminal::Terminal::start()?;
    let mut app = app::App::new();
    app.set_status(format!(
        "attached in {attach_ms} ms; allocations before now are unknown"
    ));
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(args.delay);
    let mut open: Option<RowKey> = None;
    loop {
        let mut redraw = false;
        tokio::select! {
            _ = drain.tick() => {
                if t.col.drain() > 0 {
                    t.col.resolve_new_stacks();
                }
                for key in term.keys()? {
                    redraw = true;
                    match keys::handle_key(&mut app, key) {
                        Action::Quit => return Ok(()),
                        Action::Open(k) => {
                            open = Some(k);
                            if let Some(d) = view.detail(&t.col, k, &mut worker, system::monotonic_ns()) {
                                app.set_detail(d);
                            }
                        }
                        Action::Close => open = app.open_process(),
                        Action::Dump(k) => dump(t, view, &worker, k, args.dump_format, &mut app),
                        Action::None => {}
                    }
                }
                if term.resized() {
                    redraw = true;
                }
                for d in worker.poll() {
                    redraw = true;
                    match d {
                        Ok(p) => app.set_status(format!("report written to {}", p.display())),
                        Err(e) => app.set_error(format!("report failed: {e}")),
                    }
                }
            }
            _ = refresh.tick() => {
                t.found.refresh(&mut t.loaded, &mut t.links);
                for n in t.found.new_notes() {
                    app.set_error(format!("not traced: {n}"));
                }
                let kc = t.col.kernel_counters();
                let now = system::monotonic_ns();
                app.update(view.refresh(&mut t.col, &kc, now));
                if let Some(k) = open
                    && let Some(d) = view.detail(&t.col, k, &mut worker, now)
                {
                    app.set_detail(d);
                }
                redraw = true;
            }
            _ = sig.int.recv() => return Ok(()),
            _ = sig.term.recv() => return Ok(()),
            _ = sig.hup.recv() => return Ok(()),
        }
        if redraw {
            term.draw(|f| ui::draw(f, &app))?;
        }
    }
}

/// Start writing the report of `key` in the background.
fn dump(
    t: &Tracing,
    view: &View,
    worker: &Worker,
    key: RowKey,
    format: report::Format,
    app: &mut app::App,
) {
    let Some(p) = t
        .col
        .tracker
        .live()
        .chain(t.col.tracker.exited())
        .find(|p| view::key_of(p) == key)
    else {
        app.set_status(format!("PID {} is no longer tracked", key.pid));
        return;
    };
    let now = system::monotonic_ns();
    let ext = match format {
        report::Format::Text => "txt",
        report::Format::Json => "json",
        report::Format::Folded => "folded",
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!("memtrace-{}-{stamp}.{ext}", key.pid);
    let path = std::env::current_dir().map_or_else(|_| PathBuf::from(&name), |d| d.join(&name));
    let kc = t.col.kernel_counters();
    let meta = report::Meta {
        parent_pid: None,
        wait_status: None,
        pid: key.pid,
        comm: procmaps::comm(key.pid).unwrap_or_default(),
        exe: procmaps::exe(key.pid).unwrap_or_default(),
        exited: p.exited_ns.is_some(),
        duration_ms: now.saturating_sub(key.first_ns.min(now)) / 1_000_000,
        now_ns: p.exited_ns.unwrap_or(now),
        notes: std::iter::once(
            "from the dashboard: allocations made before memtrace started are not seen".into(),
        )
        .chain(procmaps::cgroup(key.pid).map(|c| format!("cgroup: {c}")))
        .collect(),
    };
    let losses = report::Losses {
        lost_events: kc.lost() + t.col.tracker.totals.decode_errors,
        stack_failures: kc.stack_truncated,
    };
    let _ = view;
    worker.dump(worker::Request::Dump {
        input: Box::new(report::input_of(p, &t.col.stacks, usize::MAX)),
        meta,
        losses,
        format,
        path: path.clone(),
    });
    app.set_status(format!("writing report to {}…", path.display()));
}
