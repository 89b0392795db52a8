//! The benchmark's phased floor (`--floor-phases FILE`, hidden). One traced
//! run switches its probe programs between the floor (they return at once:
//! only the uprobe traps cost) and tracing every [`PHASE`], and logs each
//! switch, so `cargo xtask bench` compares the two within one process,
//! phase against the phases around it. Separate runs of the floor and of
//! tracing are seconds apart, and a shared host's speed drifts by more than
//! the difference between them in that time.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use memtrace_common::MAP_PHASE;

use crate::system::monotonic_ns;

/// How long each phase lasts.
pub const PHASE: Duration = Duration::from_millis(100);

pub struct Phases {
    map: Array<MapData, u32>,
    floor: bool,
    since: Instant,
    /// One line per switch: CLOCK_MONOTONIC ns, then `floor` or `trace`.
    log: String,
    path: PathBuf,
}

impl Phases {
    /// Take the switch out of `ebpf` (loaded in phased mode) and start with
    /// a floor phase.
    pub fn start(ebpf: &mut Ebpf, path: PathBuf) -> Result<Self> {
        let map = ebpf
            .take_map(MAP_PHASE)
            .ok_or_else(|| anyhow!("eBPF map {MAP_PHASE} is missing"))?;
        let map = Array::try_from(map).context("eBPF map PHASE")?;
        let mut p = Self {
            map,
            floor: false,
            since: Instant::now(),
            log: String::new(),
            path,
        };
        p.switch()?;
        Ok(p)
    }

    fn switch(&mut self) -> Result<()> {
        self.floor = !self.floor;
        self.map
            .set(0, u32::from(self.floor), 0)
            .context("switching the floor phase")?;
        self.since = Instant::now();
        let what = if self.floor { "floor" } else { "trace" };
        let _ = writeln!(self.log, "{} {what}", monotonic_ns());
        Ok(())
    }

    /// Switch if the phase has lasted long enough.
    pub fn tick(&mut self) -> Result<()> {
        if self.since.elapsed() >= PHASE {
            self.switch()?;
        }
        Ok(())
    }

    /// Write the log of switches.
    pub fn finish(self) -> Result<()> {
        std::fs::write(&self.path, &self.log)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}
