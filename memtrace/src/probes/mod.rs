//! The allocator probes: which functions to probe and where (`plan`, with
//! [`prologue`] choosing the instruction), loading the eBPF object
//! ([`programs`]), attaching it ([`links`]), and finding the allocators of
//! running processes ([`discover`]).

mod callsites;
pub mod discover;
pub mod elf;
mod exe;
mod links;
mod multi;
mod programs;
pub mod prologue;

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow};
use memtrace_common::func;

pub use self::{
    callsites::MAX_SITES,
    exe::add_exe_sites,
    links::{Links, Scope, attach, attach_allocators, attach_lifecycle, attach_loader},
    programs::{LoadOptions, Loaded, load},
};
use self::{elf::ElfSyms, prologue::Choice};

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
    /// The probe's attach cookie (`memtrace_common::probe_cookie`).
    fn cookie(&self) -> u64 {
        let (seg_off, seg_size) = self.segment;
        let off = self.file_offset.checked_sub(seg_off).unwrap_or(u64::MAX);
        memtrace_common::probe_cookie(self.func, self.choice.sp_delta, off, seg_size)
    }
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
