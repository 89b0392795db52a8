//! Loading the eBPF object and attaching its programs.

pub mod discover;
pub mod elf;
mod multi;
pub mod prologue;

use std::{
    collections::HashSet,
    io,
    num::NonZeroU32,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeError, UProbeLinkId, UProbeScope},
    },
};
use memtrace_common::{
    GLOBAL_FLOOR_ONLY, GLOBAL_SAMPLE_BYTES, GLOBAL_SELF_TGID, GLOBAL_TARGET_TGID,
    GLOBAL_THREAD_LAST, MAP_EVENTS, MAP_SAMPLED, MAP_THREADS, func,
};

use self::{elf::ElfSyms, prologue::Choice};

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

/// An allocator entry point to probe.
pub struct ProbeSpec {
    /// Symbol names to try, in order (aliases share an address).
    pub symbols: &'static [&'static str],
    /// `memtrace_common::func::*`, passed to the entry program as cookie.
    pub func: u16,
    /// Whether the return program is attached too.
    pub ret: bool,
}

const fn spec(symbols: &'static [&'static str], func: u16, ret: bool) -> ProbeSpec {
    ProbeSpec { symbols, func, ret }
}

/// The C library's allocator and mapping functions. reallocarray is not
/// here: glibc's tail-calls realloc, whose probes see it.
pub const LIBC: &[ProbeSpec] = &[
    spec(&["malloc"], func::MALLOC, true),
    spec(&["calloc"], func::CALLOC, true),
    spec(&["realloc"], func::REALLOC, true),
    spec(&["free"], func::FREE, false),
    spec(&["posix_memalign"], func::POSIX_MEMALIGN, true),
    spec(&["aligned_alloc"], func::ALIGNED_ALLOC, true),
    spec(&["memalign"], func::MEMALIGN, true),
    spec(&["valloc"], func::VALLOC, true),
    spec(&["pvalloc"], func::PVALLOC, true),
    spec(&["mmap64", "mmap"], func::MMAP, true),
    spec(&["munmap"], func::MUNMAP, false),
    spec(&["mremap"], func::MREMAP, true),
];

/// libstdc++'s operator new (plain, nothrow, aligned): no frame pointer,
/// so its own entry records the caller for the malloc it makes. The array
/// forms `_Znam`/`_ZnamSt11align_val_t` tail-jump to these and need no
/// probe of their own.
pub const CXX: &[ProbeSpec] = &[
    spec(&["_Znwm"], func::CXX_NEW, false),
    spec(&["_ZnwmRKSt9nothrow_t"], func::CXX_NEW, false),
    spec(&["_ZnamRKSt9nothrow_t"], func::CXX_NEW, false),
    spec(&["_ZnwmSt11align_val_t"], func::CXX_NEW, false),
    spec(
        &["_ZnwmSt11align_val_tRKSt9nothrow_t"],
        func::CXX_NEW,
        false,
    ),
    spec(
        &["_ZnamSt11align_val_tRKSt9nothrow_t"],
        func::CXX_NEW,
        false,
    ),
];

const ENTRY_PROGRAM: &str = "alloc_enter";
const MALLOC_PROGRAM: &str = "malloc_enter";
const FREE_PROGRAM: &str = "free_enter";
const RET_PROGRAM: &str = "alloc_ret";
const SESSION_PROGRAM: &str = "alloc_session";
const LOADER_PROGRAM: &str = "loader_stop";

/// Where one probe goes.
#[derive(Clone, Debug)]
pub struct Planned {
    pub symbol: &'static str,
    pub func: u16,
    pub ret: bool,
    pub file_offset: u64,
    pub choice: Choice,
    /// File offset and size of the segment holding the probe.
    pub segment: (u64, u64),
}

impl Planned {
    /// The entry program's cookie: function id (bits 0..16), the stack
    /// delta (16..24), and where the probe's code segment is (see
    /// [`code_bits`]).
    fn cookie(&self) -> u64 {
        u64::from(self.func) | (self.choice.sp_delta & 0xff) << 16 | code_bits(self)
    }
}

/// Bits 24..64 of a cookie: the probe's offset into its executable segment
/// (24..44) and the segment's size (44..64), in 16-byte units, so the
/// program can tell whether an address is in the allocator's code. Zero
/// when either does not fit (16 MiB).
fn code_bits(p: &Planned) -> u64 {
    const LIMIT: u64 = 1 << 20;
    let (seg_off, seg_size) = p.segment;
    let off = p.file_offset.saturating_sub(seg_off) / 16;
    let size = seg_size.div_ceil(16);
    if off >= LIMIT || size >= LIMIT || p.file_offset < seg_off {
        return 0;
    }
    off << 24 | size << 44
}

/// Decide where to plant each probe of `specs` in `lib`. Symbols that are
/// aliases of one already planned (same address) are skipped.
pub fn plan(lib: &Path, specs: &[ProbeSpec]) -> Result<(Vec<Planned>, Vec<&'static str>)> {
    let elf = ElfSyms::load(lib, &symbol_names(specs))?;
    Ok(plan_syms(&elf, specs.iter()))
}

/// Every symbol name `specs` may probe.
pub fn symbol_names<'a>(specs: impl IntoIterator<Item = &'a ProbeSpec>) -> Vec<&'static str> {
    specs
        .into_iter()
        .flat_map(|s| s.symbols.iter().copied())
        .collect()
}

/// [`plan`] on an ELF file already indexed (with the names of `specs`).
pub fn plan_syms<'a>(
    elf: &ElfSyms,
    specs: impl IntoIterator<Item = &'a ProbeSpec>,
) -> (Vec<Planned>, Vec<&'static str>) {
    let mut seen = HashSet::new();
    let mut planned = Vec::new();
    let mut missing = Vec::new();
    for s in specs {
        let Some((symbol, sym)) = s
            .symbols
            .iter()
            .find_map(|&n| elf.get(n).map(|sym| (n, sym)))
        else {
            missing.push(s.symbols[0]);
            continue;
        };
        if !seen.insert(sym.file_offset) {
            continue;
        }
        let choice = prologue::choose(elf.code(sym, 32), !s.ret);
        planned.push(Planned {
            symbol,
            func: s.func,
            ret: s.ret,
            file_offset: sym.file_offset + choice.offset,
            choice,
            segment: sym.segment,
        });
    }
    (planned, missing)
}

/// Knobs of the eBPF side, fixed at load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Only emit exec/exit events for this process (0: all).
    pub target_tgid: u32,
    /// Programs return at once (the overhead floor).
    pub floor_only: bool,
    pub ring_bytes: u32,
    /// Mean bytes between samples (0: trace every allocation).
    pub sample_bytes: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            target_tgid: 0,
            floor_only: false,
            ring_bytes: 16 << 20,
            sample_bytes: 0,
        }
    }
}

/// Load the eBPF object with `opts` and load (not attach) its programs.
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    let self_tgid = std::process::id();
    let floor = u32::from(opts.floor_only);
    let target = opts.target_tgid;
    let sample = opts.sample_bytes;
    let log_level = crate::ebpf_log::level();
    let sampled_entries = sampled_entries(sample);
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
    Ok(Loaded { ebpf, uprobes })
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
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("eBPF program {name} missing"))?
        .try_into()
        .with_context(|| format!("eBPF program {name} is not a uprobe"))
}

/// The uprobe links memtrace holds, so they can be detached quickly.
#[derive(Default)]
pub struct Links {
    perf: Vec<(&'static str, UProbeLinkId)>,
    multi: Vec<OwnedFd>,
}

impl Links {
    /// Detach every link. Each detach waits for an RCU grace period (~90 ms
    /// in a VM): uprobe_multi links pay it once per link, and are closed
    /// from parallel threads so their waits overlap.
    pub fn detach(self, ebpf: &mut Ebpf) {
        let mut perf = Vec::with_capacity(self.perf.len());
        for (prog, id) in self.perf {
            if let Ok(p) = uprobe(ebpf, prog)
                && let Ok(link) = p.take_link(id)
            {
                perf.push(link);
            }
        }
        std::thread::scope(|s| {
            for link in self.multi {
                s.spawn(move || drop(link));
            }
            for link in perf {
                s.spawn(move || drop(link));
            }
        });
    }
}

/// Which processes the probes fire for.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    All,
    Process(NonZeroU32),
}

/// Attach the planned probes to `lib` for `scope`.
pub fn attach(
    loaded: &mut Loaded,
    lib: &Path,
    planned: &[Planned],
    scope: Scope,
    links: &mut Links,
) -> Result<()> {
    let explain = |e: ProgramError, what: &str| explain_attach(e, what, lib);
    match &loaded.uprobes {
        UProbes::Multi {
            entry,
            malloc,
            free,
            ret,
            session,
            ..
        } => {
            let pid = match scope {
                Scope::All => 0,
                Scope::Process(p) => p.get(),
            };
            let mut link = |prog: &OwnedFd, ps: &[&Planned], mode, what| -> Result<()> {
                if ps.is_empty() {
                    return Ok(());
                }
                let offsets: Vec<u64> = ps.iter().map(|p| p.file_offset).collect();
                let cookies: Vec<u64> = ps.iter().map(|p| p.cookie()).collect();
                let link = multi::attach(prog, lib, &offsets, &cookies, mode, pid)
                    .map_err(|e| explain(io_program_error(e), what))?;
                links.multi.push(link);
                Ok(())
            };
            let (frees, others): (Vec<&Planned>, Vec<&Planned>) =
                planned.iter().partition(|p| p.func == func::FREE && !p.ret);
            let (rets, entries): (Vec<&Planned>, Vec<&Planned>) =
                others.iter().partition(|p| p.ret);
            link(free, &frees, multi::Mode::Entry, "allocator frees")?;
            match session {
                Some(session) => {
                    link(entry, &entries, multi::Mode::Entry, "allocator entries")?;
                    link(session, &rets, multi::Mode::Session, "allocator calls")?;
                }
                None => {
                    let (mallocs, others): (Vec<&Planned>, Vec<&Planned>) =
                        others.iter().partition(|p| p.func == func::MALLOC && p.ret);
                    link(malloc, &mallocs, multi::Mode::Entry, "malloc entries")?;
                    link(entry, &others, multi::Mode::Entry, "allocator entries")?;
                    link(ret, &rets, multi::Mode::Return, "allocator returns")?;
                }
            }
        }
        UProbes::Perf => {
            let scope = match scope {
                Scope::All => UProbeScope::AllProcesses,
                Scope::Process(p) => UProbeScope::OneProcess(p),
            };
            for p in planned {
                let at = || UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(p.file_offset),
                    cookie: Some(p.cookie()),
                };
                let id = uprobe(&mut loaded.ebpf, ENTRY_PROGRAM)?
                    .attach(at(), lib, scope)
                    .map_err(|e| explain(e, p.symbol))?;
                links.perf.push((ENTRY_PROGRAM, id));
                if p.ret {
                    let id = uprobe(&mut loaded.ebpf, RET_PROGRAM)?
                        .attach(at(), lib, scope)
                        .map_err(|e| explain(e, p.symbol))?;
                    links.perf.push((RET_PROGRAM, id));
                }
            }
        }
    }
    Ok(())
}

/// Attach the loader hook (`loader_stop`) at `file_offset` of `lib` (the
/// dynamic loader's `_dl_debug_state`) for one process.
pub fn attach_loader(
    loaded: &mut Loaded,
    lib: &Path,
    file_offset: u64,
    pid: NonZeroU32,
    links: &mut Links,
) -> Result<()> {
    let explain = |e: ProgramError| explain_attach(e, "_dl_debug_state", lib);
    match &loaded.uprobes {
        UProbes::Multi { loader, .. } => {
            let link = multi::attach(
                loader,
                lib,
                &[file_offset],
                &[0],
                multi::Mode::Entry,
                pid.get(),
            )
            .map_err(|e| explain(io_program_error(e)))?;
            links.multi.push(link);
        }
        UProbes::Perf => {
            let at = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(file_offset),
                cookie: None,
            };
            let id = uprobe(&mut loaded.ebpf, LOADER_PROGRAM)?
                .attach(at, lib, UProbeScope::OneProcess(pid))
                .map_err(explain)?;
            links.perf.push((LOADER_PROGRAM, id));
        }
    }
    Ok(())
}

fn io_program_error(e: io::Error) -> ProgramError {
    ProgramError::SyscallError(aya::sys::SyscallError {
        call: "bpf_link_create",
        io_error: e,
    })
}

fn explain_attach(e: ProgramError, symbol: &str, lib: &Path) -> anyhow::Error {
    let what = format!("attaching uprobe to {symbol} in {}", lib.display());
    let einval = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::EINVAL),
        ProgramError::UProbeError(UProbeError::FileError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::EINVAL)
        }
        _ => false,
    };
    if einval {
        anyhow!(
            "{what}: the kernel refused it (EINVAL); another tracer (bcc memleak, bpftrace, \
             perf probe) most likely holds a uprobe on the same function with a different \
             ref_ctr_offset (dmesg: 'ref_ctr_offset mismatch'): stop it and retry"
        )
    } else {
        anyhow::Error::new(e).context(what)
    }
}

fn raw_tp(ebpf: &mut Ebpf, prog: &str, tp: &str) -> Result<()> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("eBPF program {prog} missing"))?
        .try_into()?;
    p.attach(tp)
        .with_context(|| format!("attaching raw tracepoint {tp}"))?;
    Ok(())
}

/// Attach the process lifecycle tracepoints (exec, exit). The exit program
/// that reads `group_dead` needs kernel 6.16+; older kernels get the one
/// that takes the leader's exit for the process's.
pub fn attach_lifecycle(ebpf: &mut Ebpf) -> Result<()> {
    raw_tp(ebpf, "sched_exec", "sched_process_exec")?;
    raw_tp(ebpf, "sched_exit", "sched_process_exit")
        .or_else(|_| raw_tp(ebpf, "sched_exit_leader", "sched_process_exit"))
}

/// Standard library directories, in the dynamic loader's search order.
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// The host's C library: the one memtrace itself runs on.
pub fn host_libc() -> Result<PathBuf> {
    mapped_library(std::process::id(), "libc.so.6")?
        .or_else(|| find_in_lib_dirs("libc.so.6"))
        .ok_or_else(|| anyhow!("cannot find the host's libc.so.6"))
}

pub fn find_in_lib_dirs(name: &str) -> Option<PathBuf> {
    LIB_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The path of a library named `base` (e.g. `libc.so.6`) mapped by `pid`.
pub fn mapped_library(pid: u32, base: &str) -> io::Result<Option<PathBuf>> {
    let maps = crate::procmaps::read_maps(pid)?;
    Ok(maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|f| f == base))
        .map(PathBuf::from))
}

/// Plan and attach every allocator probe for a process whose C library is
/// `libc` and whose C++ runtime (if any) is `libstdcxx`.
pub fn attach_allocators(
    loaded: &mut Loaded,
    libc: &Path,
    libstdcxx: Option<&Path>,
    scope: Scope,
    links: &mut Links,
) -> Result<Vec<(PathBuf, Planned)>> {
    let mut all = Vec::new();
    let (planned, missing) = plan(libc, LIBC)?;
    if let Some(m) = missing.iter().find(|&&m| m == "malloc" || m == "free") {
        bail!(
            "{} has no symbol {m}: not a C library memtrace can trace",
            libc.display()
        );
    }
    attach(loaded, libc, &planned, scope, links)?;
    all.extend(planned.into_iter().map(|p| (libc.to_path_buf(), p)));
    if let Some(cxx) = libstdcxx {
        let (planned, _) = plan(cxx, CXX)?;
        attach(loaded, cxx, &planned, scope, links)?;
        all.extend(planned.into_iter().map(|p| (cxx.to_path_buf(), p)));
    }
    Ok(all)
}
