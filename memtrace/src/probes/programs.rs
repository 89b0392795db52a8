//! Loading the eBPF object: its maps sized for this host, its globals set,
//! and its programs loaded (not attached), as `uprobe_multi` programs when
//! the kernel has them (6.6+), else as aya's perf-event uprobes.

use std::{
    collections::{HashMap, HashSet},
    os::fd::OwnedFd,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, EbpfLoader, programs::UProbe};
use memtrace_common::{
    GLOBAL_FLOOR_ONLY, GLOBAL_SAMPLE_BYTES, GLOBAL_SELF_TGID, GLOBAL_TARGET_TGID,
    GLOBAL_THREAD_LAST, MAP_EVENTS, MAP_SAMPLED, MAP_SAMPLED_LANES, MAP_TARGETS, MAP_THREADS,
    SAMPLED_LANE_WORDS, TARGET_OWN_IMAGE, TARGET_SAME_IMAGE,
};

use super::multi;

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

pub(super) const ENTRY_PROGRAM: &str = "alloc_enter";
pub(super) const MALLOC_PROGRAM: &str = "malloc_enter";
pub(super) const FREE_PROGRAM: &str = "free_enter";
pub(super) const RET_PROGRAM: &str = "alloc_ret";
pub(super) const SESSION_PROGRAM: &str = "alloc_session";
pub(super) const LOADER_PROGRAM: &str = "loader_stop";

/// Knobs of the eBPF side, fixed at load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Only emit exec/exit events for this process (0: all).
    pub target_tgid: u32,
    /// Whether programs return at once (the overhead floor):
    /// `memtrace_common::floor::*`.
    pub floor: u32,
    pub ring_bytes: u32,
    /// Mean bytes between samples (0: trace every allocation).
    pub sample_bytes: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            target_tgid: 0,
            floor: memtrace_common::floor::OFF,
            ring_bytes: 32 << 20,
            sample_bytes: 0,
        }
    }
}

/// Load the eBPF object with `opts` and load (not attach) its programs.
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    let self_tgid = std::process::id();
    let floor = opts.floor;
    let target = opts.target_tgid;
    let sample = opts.sample_bytes;
    let log_level = crate::ebpf_log::level();
    let sampled_entries = sampled_entries(sample);
    // The sampled set's filter (128 KiB) only exists when sampling.
    let lane_words = if sample == 0 { 1 } else { SAMPLED_LANE_WORDS };
    let slots = thread_slots();
    let thread_last = slots - 1;
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_SELF_TGID, &self_tgid, true)
        .override_global(GLOBAL_FLOOR_ONLY, &floor, true)
        .override_global(GLOBAL_TARGET_TGID, &target, true)
        .override_global(GLOBAL_SAMPLE_BYTES, &sample, true)
        .override_global(GLOBAL_THREAD_LAST, &thread_last, true)
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .map_max_entries(MAP_SAMPLED, sampled_entries)
        .map_max_entries(MAP_SAMPLED_LANES, lane_words)
        .map_max_entries(MAP_EVENTS, opts.ring_bytes)
        .map_max_entries(MAP_THREADS, slots)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for name in &names {
        if let Some(aya::programs::Program::RawTracePoint(p)) = ebpf.program_mut(name) {
            p.load()
                .with_context(|| format!("loading eBPF program {name}"))?;
        }
    }
    // uprobe_multi programs when the kernel has them (6.6+), else aya's
    // perf-event uprobes.
    // MEMTRACE_PERF_UPROBES=1 forces the perf-event path (for comparisons).
    let multi = if std::env::var_os("MEMTRACE_PERF_UPROBES").is_some() {
        Err(anyhow!("perf-event uprobes requested"))
    } else {
        multi::load_programs(
            &ebpf,
            EBPF_OBJECT,
            &[
                (ENTRY_PROGRAM, multi::BPF_TRACE_UPROBE_MULTI),
                (MALLOC_PROGRAM, multi::BPF_TRACE_UPROBE_MULTI),
                (FREE_PROGRAM, multi::BPF_TRACE_UPROBE_MULTI),
                (RET_PROGRAM, multi::BPF_TRACE_UPROBE_MULTI),
                (LOADER_PROGRAM, multi::BPF_TRACE_UPROBE_MULTI),
            ],
        )
    };
    // Uprobe sessions (6.13+) only matter when sampling: they let unsampled
    // calls skip their return probe. Without them, every call has one.
    let session = match (&multi, sample) {
        (Ok(_), s) if s != 0 => multi::load_programs(
            &ebpf,
            EBPF_OBJECT,
            &[(SESSION_PROGRAM, multi::BPF_TRACE_UPROBE_SESSION)],
        )
        .ok()
        .and_then(|mut v| v.pop()),
        _ => None,
    };
    let uprobes = match multi.map(<[OwnedFd; 5]>::try_from) {
        Ok(Ok([entry, malloc, free, ret, loader])) => UProbes::Multi {
            entry,
            malloc,
            free,
            ret,
            loader,
            session,
        },
        _ => {
            for name in [ENTRY_PROGRAM, RET_PROGRAM, LOADER_PROGRAM] {
                uprobe(&mut ebpf, name)?
                    .load()
                    .with_context(|| format!("loading eBPF program {name}"))?;
            }
            UProbes::Perf
        }
    };
    Ok(Loaded {
        ebpf,
        uprobes,
        lib_sites: HashSet::new(),
        exe_sites: HashMap::new(),
        notes: Vec::new(),
    })
}

/// Room for live sampled blocks: twice what the host's memory could hold
/// at one sample per `sample` bytes (a sample is one block, and blocks
/// smaller than `sample` are sampled less often), between 2^12 and 2^20.
/// Every free of an unsampled block looks its address up here, so the
/// table is kept no larger than it needs to be: a small one stays in the
/// CPU's caches.
fn sampled_entries(sample: u64) -> u32 {
    if sample == 0 {
        return 1;
    }
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(u64::MAX, |kib| kib.saturating_mul(1024));
    let want = (mem / sample).saturating_mul(2);
    want.clamp(1 << 12, 1 << 20).next_power_of_two() as u32
}

/// Slots of the per-thread in-flight array: one per possible thread id
/// (`pid_max`), up to 2^17 (5 MiB); threads with larger ids (hosts that
/// raised `pid_max`) use the hash map.
fn thread_slots() -> u32 {
    // For tests of the hash map path: MEMTRACE_THREAD_SLOTS=1 sends every
    // thread there.
    if let Some(n) = std::env::var("MEMTRACE_THREAD_SLOTS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        return n.clamp(1, 1 << 17);
    }
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1 << 22);
    pid_max.clamp(1024, 1 << 17)
}

/// How the uprobe programs are attached.
pub enum UProbes {
    /// One uprobe_multi link per library and direction (and one for the
    /// loader hook).
    Multi {
        entry: OwnedFd,
        /// The entry program of malloc (when it has a return probe).
        malloc: OwnedFd,
        /// The entry program of the heap's release functions.
        free: OwnedFd,
        ret: OwnedFd,
        loader: OwnedFd,
        /// Entry and return in one session, when sampling on a kernel that
        /// has them.
        session: Option<OwnedFd>,
    },
    /// aya's perf-event uprobes, one per offset.
    Perf,
}

impl Loaded {
    /// Whether calls can decline their return probe (uprobe sessions).
    pub fn has_sessions(&self) -> bool {
        matches!(
            self.uprobes,
            UProbes::Multi {
                session: Some(_),
                ..
            }
        )
    }
}

/// The loaded object and how its uprobes attach.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub uprobes: UProbes,
    /// Libraries whose call sites are in `LIB_SITES` (device, inode and
    /// executable segment), so each is read once.
    pub(super) lib_sites: HashSet<(u64, u64, u64)>,
    /// Executables whose call sites are in `LIB_SITES` (as `lib_sites`),
    /// and how many they have.
    pub(super) exe_sites: HashMap<(u64, u64, u64), usize>,
    /// What the user should know about the attach (libraries whose call
    /// sites could not all be recorded); taken by whoever reports notes.
    pub notes: Vec<String>,
}

impl Loaded {
    /// Add `tgid` to the processes whose exec and exit events are emitted
    /// and whose loader hook stops them (`report -- CMD --children`), or
    /// change its entry: `same_image` when it still runs the command's
    /// image (forked from it, no exec since).
    pub fn follow(&mut self, tgid: u32, same_image: bool) -> Result<()> {
        let v = if same_image {
            TARGET_SAME_IMAGE
        } else {
            TARGET_OWN_IMAGE
        };
        self.targets()?
            .insert(tgid, v, 0)
            .with_context(|| format!("adding PID {tgid} to {MAP_TARGETS}"))
    }

    /// Take `tgid` out of the followed processes (absent already is fine).
    pub fn unfollow(&mut self, tgid: u32) {
        if let Ok(mut m) = self.targets() {
            let _ = m.remove(&tgid);
        }
    }

    fn targets(&mut self) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, u8>> {
        let map = self
            .ebpf
            .map_mut(MAP_TARGETS)
            .ok_or_else(|| anyhow!("eBPF map {MAP_TARGETS} missing"))?;
        Ok(aya::maps::HashMap::try_from(map)?)
    }
}

pub(super) fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("eBPF program {name} missing"))?
        .try_into()
        .with_context(|| format!("eBPF program {name} is not a uprobe"))
}
