//! `report -- CMD --children`: the processes the command creates (fork,
//! vfork, posix_spawn; at any depth), each held at its first instruction,
//! attached to, and reported on its own after the command. Without
//! `--children` they are let go at once and counted.

use std::time::Instant;

use anyhow::Result;
use memtrace_common::TARGETS_MAX;

use super::{Allocators, Ident, short_name};
use crate::{
    collect::Collector, launch, probes, procmaps, report, symbolize::Symbols, tracker::Tracker,
};

/// At most this many child processes are followed (the eBPF side's table
/// of followed processes).
const MAX_FOLLOWED: usize = TARGETS_MAX as usize;

/// A child process being followed.
pub(super) struct Followed {
    pid: u32,
    parent: u32,
    /// It still runs the command's image (forked, no exec since): the
    /// command's executable call sites apply to it.
    same_image: bool,
    pub(super) alloc: Allocators,
    pub(super) ident: Ident,
    started: Instant,
    /// When it was seen gone, and its wait status.
    ended: Option<Instant>,
    status: Option<i32>,
    /// Attach failures: its allocations may be missing.
    notes: Vec<String>,
}

pub(super) struct Children {
    follow: bool,
    list: Vec<Followed>,
    /// Processes created and let go untraced: without `--children`, or
    /// past `MAX_FOLLOWED`.
    untraced: u64,
    /// Detaches of exited children's links, each waiting out its grace
    /// periods (~90 ms in a VM) off the event loop.
    detaching: Vec<std::thread::JoinHandle<()>>,
}

impl Children {
    pub(super) fn new(follow: bool) -> Self {
        Self {
            follow,
            list: Vec::new(),
            untraced: 0,
            detaching: Vec::new(),
        }
    }

    pub(super) fn get_mut(&mut self, pid: u32) -> Option<&mut Followed> {
        self.list
            .iter_mut()
            .rev()
            .find(|f| f.pid == pid && f.ended.is_none())
    }

    /// Process `pid` was created by a traced one and is held before its
    /// first instruction: follow it (attach, then let it run) or let it go.
    pub(super) fn on_new(
        &mut self,
        pid: u32,
        parent: u32,
        parent_same_image: bool,
        child: &mut launch::Child,
        loaded: &mut probes::Loaded,
        tracker: &mut Tracker,
    ) {
        let alloc = match Allocators::child(pid) {
            Ok(a) if self.follow && self.list.len() < MAX_FOLLOWED => a,
            _ => {
                self.untraced += 1;
                child.detach_stopped();
                return;
            }
        };
        tracker.watch(pid);
        let same_image = parent_same_image || self.get_mut(parent).is_some_and(|p| p.same_image);
        let mut f = Followed {
            pid,
            parent,
            same_image,
            alloc,
            ident: Ident::default(),
            started: Instant::now(),
            ended: None,
            status: None,
            notes: Vec::new(),
        };
        let r = loaded
            .follow(pid, same_image)
            .and_then(|()| f.alloc.scan(loaded).map(drop));
        if let Err(e) = r {
            f.notes
                .push(format!("{e:#}: some of its allocations may be missing"));
        }
        f.ident.refresh(pid);
        child.follow(pid);
        child.resume_stopped();
        self.list.push(f);
    }

    /// Process `pid` exec'd (the command, or a child): the children still
    /// running its image no longer run the command's, or child `pid`
    /// itself no longer does.
    pub(super) fn on_exec(&mut self, pid: u32, command: bool, loaded: &mut probes::Loaded) {
        for f in self
            .list
            .iter_mut()
            .filter(|f| f.same_image && f.ended.is_none() && (command || f.pid == pid))
        {
            f.same_image = false;
            let _ = loaded.follow(f.pid, false);
        }
    }

    /// Keep an attach failure of child `pid` for its report.
    pub(super) fn on_error(&mut self, pid: u32, r: Result<()>) {
        if let (Err(e), Some(f)) = (r, self.get_mut(pid)) {
            f.notes
                .push(format!("{e:#}: some of its allocations may be missing"));
        }
    }

    /// Child `pid` is gone: let go of its probes.
    pub(super) fn on_gone(&mut self, pid: u32, status: i32, loaded: &mut probes::Loaded) {
        if let Some(f) = self.get_mut(pid) {
            f.ended = Some(Instant::now());
            f.status = Some(status);
            let links = std::mem::take(&mut f.alloc.links);
            self.detaching.push(links.detach_later(&mut loaded.ebpf));
            loaded.unfollow(pid);
        }
    }

    /// On the timer: look for objects the live children mapped.
    pub(super) fn poll(&mut self, loaded: &mut probes::Loaded) {
        for f in self.list.iter_mut().filter(|f| f.ended.is_none()) {
            f.alloc.poll(loaded);
        }
    }

    /// The end: let go of every child's probes, and read who the live ones
    /// are now.
    pub(super) fn detach_all(&mut self, loaded: &mut probes::Loaded) {
        for f in &mut self.list {
            let links = std::mem::take(&mut f.alloc.links);
            self.detaching.push(links.detach_later(&mut loaded.ebpf));
            loaded.unfollow(f.pid);
            if f.ended.is_none() {
                f.ident.refresh(f.pid);
            }
        }
        // In parallel: their grace periods overlap.
        for h in self.detaching.drain(..) {
            let _ = h.join();
        }
    }

    /// What the command's report says about its children.
    pub(super) fn notes_for_command(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.list.is_empty() {
            v.push(format!(
                "followed {} child process{} (reported after this one); lost events and cut \
                 stacks are counted over all of them",
                self.list.len(),
                if self.list.len() == 1 { "" } else { "es" }
            ));
        }
        if self.untraced > 0 {
            let n = self.untraced;
            let s = if n == 1 { "" } else { "es" };
            v.push(if self.follow {
                format!(
                    "{n} more child process{s} ran untraced: at most {MAX_FOLLOWED} are followed"
                )
            } else {
                format!(
                    "the command started {n} child process{s}, not traced (--children follows them)"
                )
            });
        }
        v
    }

    /// A report for each followed child, in the order they started.
    pub(super) fn reports(
        &self,
        col: &Collector,
        symbols: &mut Symbols,
        losses: report::Losses,
        now_ns: u64,
    ) -> Vec<report::Report> {
        let now = Instant::now();
        self.list
            .iter()
            .map(|f| {
                let empty;
                let p = match col.tracker.get(f.pid) {
                    Some(p) => p,
                    None => {
                        empty = crate::tracker::Process::new(f.pid, now_ns);
                        &empty
                    }
                };
                let mut notes = vec![format!(
                    "child process of PID {}, traced from its first instruction: blocks it \
                     inherited at the fork are its parent's (its frees of them count as \
                     untracked frees)",
                    f.parent
                )];
                let d = &f.alloc.discovery;
                if d.found.is_empty() {
                    notes.push(
                        "no allocator was found in the process: nothing could be traced".into(),
                    );
                } else {
                    notes.push(format!("allocators traced: {}", d.found.join(", ")));
                }
                notes.extend(d.notes.iter().cloned());
                notes.extend(f.notes.iter().cloned());
                notes.extend(f.ident.notes());
                let exe = f.ident.exe.clone().unwrap_or_default();
                let meta = report::Meta {
                    pid: f.pid,
                    parent_pid: Some(f.parent),
                    wait_status: f.status,
                    comm: f.ident.comm.clone().unwrap_or_else(|| short_name(&exe)),
                    exe,
                    exited: p.exited_ns.is_some() || f.ended.is_some() || !procmaps::alive(f.pid),
                    duration_ms: f.ended.unwrap_or(now).duration_since(f.started).as_millis()
                        as u64,
                    now_ns: p.exited_ns.unwrap_or(now_ns),
                    notes,
                };
                let input = report::input_of(p, &col.stacks, usize::MAX);
                report::build(&input, symbols, meta, losses)
            })
            .collect()
    }
}
