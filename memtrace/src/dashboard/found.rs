//! Which allocators the dashboard probes: the host's C library and C++
//! runtime from the start, then every allocator object any process maps (a
//! container's own libc, a static executable, a preloaded jemalloc), found
//! by scanning the memory maps of processes new since the last refresh,
//! and of a few known ones in turn (for `dlopen`). Each object is attached
//! once, system-wide (or for the `-p` processes), by device and inode.

use std::{collections::HashSet, num::NonZeroU32};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::probes::{self, Links, Loaded, Scope, discover::Discovery};

/// Known processes re-scanned per refresh, in turn.
const ROTATION_PER_REFRESH: usize = 32;

pub struct Found {
    pub discovery: Discovery,
    /// The `-p` processes (empty: every process).
    pids: Vec<u32>,
    known: HashSet<u32>,
    rotation: Vec<u32>,
    notes_shown: usize,
}

impl Found {
    pub fn new(pids: &[u32]) -> Self {
        Self {
            discovery: Discovery::default(),
            pids: pids.to_vec(),
            known: HashSet::new(),
            rotation: Vec::new(),
            notes_shown: 0,
        }
    }

    /// The first attach: fails when nothing at all can be traced.
    pub fn start(&mut self, loaded: &mut Loaded, links: &mut Links) -> Result<()> {
        if self.pids.is_empty() {
            // Host libc first: processes started later with it are traced
            // from their first allocation.
            let libc = probes::host_libc()?;
            let cxx = probes::find_in_lib_dirs("libstdc++.so.6");
            probes::attach_allocators(loaded, &libc, cxx.as_deref(), Scope::All, links)?;
            for n in std::mem::take(&mut loaded.notes) {
                self.discovery.note(n);
            }
            self.discovery.mark_attached(&libc);
            if let Some(c) = &cxx {
                self.discovery.mark_attached(c);
            }
            self.refresh(loaded, links);
            return Ok(());
        }
        for &pid in &self.pids.clone() {
            let scope = NonZeroU32::new(pid)
                .map(Scope::Process)
                .ok_or_else(|| anyhow!("invalid PID 0"))?;
            let before = self.discovery.found.len();
            self.discovery
                .scan(loaded, pid, scope, None, links)
                .with_context(|| format!("reading the memory map of PID {pid}"))?;
            if self.discovery.found.len() == before && !self.discovery.has_allocator() {
                bail!(
                    "found no allocator to trace in PID {pid}'s memory map{}",
                    match self.discovery.notes.last() {
                        Some(n) => format!(" ({n})"),
                        None => String::new(),
                    }
                );
            }
        }
        Ok(())
    }

    /// Scan new processes, and a few known ones, for allocators not yet
    /// attached.
    pub fn refresh(&mut self, loaded: &mut Loaded, links: &mut Links) {
        if !self.pids.is_empty() {
            for &pid in &self.pids {
                if let Some(p) = NonZeroU32::new(pid) {
                    let _ = self
                        .discovery
                        .scan(loaded, pid, Scope::Process(p), None, links);
                }
            }
            return;
        }
        let me = std::process::id();
        let now: HashSet<u32> = list_pids().into_iter().filter(|&p| p != me).collect();
        let fresh: Vec<u32> = now.difference(&self.known).copied().collect();
        for &pid in &fresh {
            let _ = self.discovery.scan(loaded, pid, Scope::All, None, links);
        }
        if self.rotation.is_empty() {
            self.rotation = self.known.intersection(&now).copied().collect();
        }
        let n = self.rotation.len().min(ROTATION_PER_REFRESH);
        for pid in self.rotation.split_off(self.rotation.len() - n) {
            let _ = self.discovery.scan(loaded, pid, Scope::All, None, links);
        }
        self.known = now;
    }

    /// Notes not shown yet.
    pub fn new_notes(&mut self) -> Vec<String> {
        let n = self.discovery.notes[self.notes_shown..].to_vec();
        self.notes_shown = self.discovery.notes.len();
        n
    }
}

/// Every process id in /proc.
fn list_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
