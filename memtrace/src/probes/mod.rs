//! Loading the eBPF object and attaching its programs.

pub mod elf;
pub mod prologue;

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeError, UProbeLinkId, UProbeScope},
    },
};
use memtrace_common::{
    GLOBAL_FLOOR_ONLY, GLOBAL_SELF_TGID, GLOBAL_TARGET_TGID, MAP_EVENTS, MAP_STACKS,
};

use self::{elf::ElfSyms, prologue::Choice};

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

/// An allocator entry point to probe.
pub struct ProbeSpec {
    /// Symbol names to try, in order (aliases share an address).
    pub symbols: &'static [&'static str],
    /// The entry program.
    pub entry: &'static str,
    /// Whether the shared return program is attached too.
    pub ret: bool,
}

const fn spec(symbols: &'static [&'static str], entry: &'static str, ret: bool) -> ProbeSpec {
    ProbeSpec {
        symbols,
        entry,
        ret,
    }
}

/// The C library's allocator and mapping functions. reallocarray is not
/// here: glibc's tail-calls realloc, whose probes see it.
pub const LIBC: &[ProbeSpec] = &[
    spec(&["malloc"], "malloc_enter", true),
    spec(&["calloc"], "calloc_enter", true),
    spec(&["realloc"], "realloc_enter", true),
    spec(&["free"], "free_enter", false),
    spec(&["posix_memalign"], "posix_memalign_enter", true),
    spec(&["aligned_alloc"], "memalign_enter", true),
    spec(&["memalign"], "memalign_enter", true),
    spec(&["valloc"], "valloc_enter", true),
    spec(&["pvalloc"], "pvalloc_enter", true),
    spec(&["mmap64", "mmap"], "mmap_enter", true),
    spec(&["munmap"], "munmap_enter", false),
    spec(&["mremap"], "mremap_enter", true),
];

/// libstdc++'s operator new (plain and aligned): no frame pointer, so its
/// own entry records the caller for the malloc it makes.
pub const CXX: &[ProbeSpec] = &[
    spec(&["_Znwm"], "cxx_new_enter", false),
    spec(&["_ZnwmSt11align_val_t"], "cxx_new_enter", false),
];

const RET_PROGRAM: &str = "alloc_ret";

/// Where one probe was planted.
#[derive(Clone, Debug)]
pub struct Planned {
    pub symbol: &'static str,
    pub entry: &'static str,
    pub ret: bool,
    pub file_offset: u64,
    pub choice: Choice,
}

/// Decide where to plant each probe of `specs` in `lib`. Symbols that are
/// aliases of one already planned (same address) are skipped.
pub fn plan(lib: &Path, specs: &[ProbeSpec]) -> Result<(Vec<Planned>, Vec<&'static str>)> {
    let names: Vec<&str> = specs
        .iter()
        .flat_map(|s| s.symbols.iter().copied())
        .collect();
    let elf = ElfSyms::load(lib, &names)?;
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
        let choice = prologue::choose(elf.code(sym, 32));
        planned.push(Planned {
            symbol,
            entry: s.entry,
            ret: s.ret,
            file_offset: sym.file_offset + choice.offset,
            choice,
        });
    }
    Ok((planned, missing))
}

/// Knobs of the eBPF side, fixed at load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Only emit exec/exit events for this process (0: all).
    pub target_tgid: u32,
    /// Programs return at once (the overhead floor).
    pub floor_only: bool,
    pub ring_bytes: u32,
    pub stack_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            target_tgid: 0,
            floor_only: false,
            ring_bytes: 16 << 20,
            stack_entries: 32768,
        }
    }
}

/// Load the eBPF object with `opts` and load (not attach) its programs.
pub fn load(opts: &LoadOptions) -> Result<Ebpf> {
    let self_tgid = std::process::id();
    let floor = u32::from(opts.floor_only);
    let target = opts.target_tgid;
    let wakeup = u64::from(opts.ring_bytes / 4);
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_SELF_TGID, &self_tgid, true)
        .override_global(GLOBAL_FLOOR_ONLY, &floor, true)
        .override_global(GLOBAL_TARGET_TGID, &target, true)
        .override_global("WAKEUP_BYTES", &wakeup, true)
        .map_max_entries(MAP_EVENTS, opts.ring_bytes)
        .map_max_entries(MAP_STACKS, opts.stack_entries)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let prog = ebpf
            .program_mut(&name)
            .ok_or_else(|| anyhow!("program {name} vanished"))?;
        match prog {
            aya::programs::Program::UProbe(p) => p.load(),
            aya::programs::Program::RawTracePoint(p) => p.load(),
            _ => continue,
        }
        .with_context(|| format!("loading eBPF program {name} (verifier rejected it?)"))?;
    }
    Ok(ebpf)
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("eBPF program {name} missing"))?
        .try_into()
        .with_context(|| format!("eBPF program {name} is not a uprobe"))
}

/// The uprobe links memtrace holds, so they can be detached quickly.
#[derive(Default)]
pub struct Links(Vec<(&'static str, UProbeLinkId)>);

impl Links {
    /// Detach every link. Each uprobe detach waits for an RCU grace period
    /// (~250 ms in a VM); closing them from parallel threads lets the
    /// grace periods overlap, so detaching all takes about one.
    pub fn detach(self, ebpf: &mut Ebpf) {
        let mut owned = Vec::with_capacity(self.0.len());
        for (prog, id) in self.0 {
            if let Ok(p) = uprobe(ebpf, prog)
                && let Ok(link) = p.take_link(id)
            {
                owned.push(link);
            }
        }
        std::thread::scope(|s| {
            for link in owned {
                s.spawn(move || drop(link));
            }
        });
    }
}

/// Attach the planned probes to `lib` for `scope`.
pub fn attach(
    ebpf: &mut Ebpf,
    lib: &Path,
    planned: &[Planned],
    scope: UProbeScope,
    links: &mut Links,
) -> Result<()> {
    for p in planned {
        let at = || UProbeAttachLocation::AbsoluteOffset(p.file_offset);
        let explain = |e: ProgramError| explain_attach(e, p.symbol, lib);
        let id = uprobe(ebpf, p.entry)?
            .attach(at(), lib, scope)
            .map_err(explain)?;
        links.0.push((p.entry, id));
        if p.ret {
            let id = uprobe(ebpf, RET_PROGRAM)?
                .attach(at(), lib, scope)
                .map_err(explain)?;
            links.0.push((RET_PROGRAM, id));
        }
    }
    Ok(())
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

/// Attach the process lifecycle tracepoints (exec, exit).
pub fn attach_lifecycle(ebpf: &mut Ebpf) -> Result<()> {
    for (prog, tp) in [
        ("sched_exec", "sched_process_exec"),
        ("sched_exit", "sched_process_exit"),
    ] {
        let p: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("eBPF program {prog} missing"))?
            .try_into()?;
        p.attach(tp)
            .with_context(|| format!("attaching raw tracepoint {tp}"))?;
    }
    Ok(())
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
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|f| f == base))
        .map(PathBuf::from))
}

/// Plan and attach every allocator probe for a process whose C library is
/// `libc` and whose C++ runtime (if any) is `libstdcxx`.
pub fn attach_allocators(
    ebpf: &mut Ebpf,
    libc: &Path,
    libstdcxx: Option<&Path>,
    scope: UProbeScope,
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
    attach(ebpf, libc, &planned, scope, links)?;
    all.extend(planned.into_iter().map(|p| (libc.to_path_buf(), p)));
    if let Some(cxx) = libstdcxx {
        let (planned, _) = plan(cxx, CXX)?;
        attach(ebpf, cxx, &planned, scope, links)?;
        all.extend(planned.into_iter().map(|p| (cxx.to_path_buf(), p)));
    }
    Ok(all)
}
