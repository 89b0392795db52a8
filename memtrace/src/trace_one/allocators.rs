//! The allocators of one traced process: finding them in its memory map,
//! attaching to them, and again after dlopen or exec.

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::probes::{
    self,
    discover::{self, Discovery},
};

use super::scope;

/// How often the memory map is checked for new objects (dlopen without a
/// loader stop, a process attached with --pid).
const RESCAN_EVERY: Duration = Duration::from_millis(250);

/// The allocators of the traced process and the links to them.
pub(super) struct Allocators {
    pub(super) discovery: Discovery,
    pub(super) links: probes::Links,
    pid: NonZeroU32,
    /// Stop the process at its loader's hook (only a launched command,
    /// which memtrace ptraces).
    loader: bool,
    signature: std::collections::HashSet<discover::FileId>,
    last_scan: Instant,
    /// Whether the executable's call sites were looked for (once per image).
    exe_sites: bool,
    /// A followed child process (see `child`).
    child: bool,
}

impl Allocators {
    pub(super) fn new(pid: u32, loader: bool) -> Result<Self> {
        Ok(Self {
            discovery: Discovery::default(),
            links: probes::Links::default(),
            pid: scope(pid)?,
            loader,
            signature: Default::default(),
            last_scan: Instant::now(),
            exe_sites: false,
            child: false,
        })
    }

    /// For a child process followed with `--children` (held by memtrace's
    /// ptrace, so its loader's hook can stop it). Its executable's call
    /// sites are not looked for: `EXE_CODE` holds the command's.
    pub(super) fn child(pid: u32) -> Result<Self> {
        let mut a = Self::new(pid, true)?;
        a.child = true;
        Ok(a)
    }

    /// Attach to every allocator object newly mapped by the process.
    pub(super) fn scan(&mut self, loaded: &mut probes::Loaded) -> Result<usize> {
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
        if !self.exe_sites && !self.child {
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

    /// The leader exec'd: its links still hold (by inode, for this
    /// process); the new executable's call sites are looked for at the
    /// next scan.
    pub(super) fn new_image(&mut self) {
        self.exe_sites = false;
    }

    /// Start afresh: the process exec'd (links of the old image detached).
    pub(super) fn rescan_after_exec(&mut self, loaded: &mut probes::Loaded) -> Result<()> {
        std::mem::take(&mut self.links).detach(&mut loaded.ebpf);
        self.discovery.forget_links();
        self.exe_sites = false;
        self.scan(loaded)?;
        Ok(())
    }

    /// On the timer: scan again if the set of mapped files changed. Objects
    /// found this way were mapped without memtrace seeing it at once: their
    /// earliest allocations may be missed, and the report says so.
    pub(super) fn poll(&mut self, loaded: &mut probes::Loaded) {
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
