//! The traced program's own code, when it keeps no frame pointer. Rust
//! builds without one by default: a `Vec` or `String` that grows calls
//! `RawVec::finish_grow`, which calls the allocator, and the frame-pointer
//! walk from there finds `finish_grow` and nothing above it. A C program
//! built with `-O2` loses the callers of its malloc wrappers the same way.
//!
//! As for the allocator library's own functions (see `callsites`), the
//! executable's `.eh_frame` says how to step out of each function at each
//! call that leads to an allocation; the eBPF return program does it when
//! the allocation's innermost frame lies in the executable segment named
//! in `EXE_CODE` (one process: the one `memtrace report` traces).

use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::Array;
use memtrace_common::{ExeCode, MAP_EXE_CODE};
use object::{Object as _, ObjectSegment as _, read::elf::ElfFile64};

use super::{CXX, LIBC, Loaded, callsites::Reach, links::record_lib_sites, symbol_names};
use crate::procmaps;

/// What the program may call that allocates and returns where the
/// allocation's return probe fires: the C library's functions that have a
/// return probe, those that allocate on the caller's behalf (their own
/// frames are stepped out of by the library's sites), C++'s operator new
/// (the array forms tail-jump to the plain ones, which have probes), and
/// `std::string`'s members (both ABIs), compiled into libstdc++, whose
/// frames its sites step out of.
pub(super) fn allocating() -> Vec<&'static str> {
    const ON_BEHALF: &[&str] = &[
        "_ZNSt7__cxx1112basic_string*",
        "_ZNSs*",
        "reallocarray",
        "strdup",
        "strndup",
        "__strdup",
        "asprintf",
        "vasprintf",
        "getline",
        "getdelim",
        "realpath",
        "open_memstream",
        "_Znam",
        "_ZnamSt11align_val_t",
    ];
    let probed = LIBC.iter().filter(|s| s.ret).chain(CXX);
    let mut names = symbol_names(probed);
    names.extend_from_slice(ON_BEHALF);
    names
}

/// Step out of `pid`'s executable's own functions: record the call sites
/// of its executable segment in `LIB_SITES` (once per file) and where the
/// segment is mapped in `EXE_CODE`. Returns how many sites the executable
/// has: none when it keeps frame pointers (the walk needs no help) or has
/// no unwind tables.
pub fn add_exe_sites(loaded: &mut Loaded, pid: u32) -> Result<usize> {
    // A new image: what was recorded for the process's last one no longer
    // applies, whatever this one has.
    update_exe_code(loaded, |c| {
        if c.tgid == pid {
            c.tgid = 0;
        }
    })?;
    let exe = procmaps::exe(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/exe"))?;
    let maps = procmaps::read_maps(pid).with_context(|| format!("reading /proc/{pid}/maps"))?;
    let snapshot = procmaps::Snapshot::parse(&maps);
    let Some(m) = snapshot.mappings().iter().find(|m| *m.path == *exe) else {
        // No executable mapping of the file (an interpreter's script, a
        // process that exited): nothing to do.
        return Ok(0);
    };
    let path = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    let data = std::fs::read(&path).with_context(|| format!("reading {exe}"))?;
    let file =
        ElfFile64::<object::Endianness>::parse(&*data).with_context(|| format!("parsing {exe}"))?;
    // The executable segment the mapping starts with.
    let Some(seg) = file.segments().find(|s| {
        let (off, _) = s.file_range();
        matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & 1 != 0)
            && off & !0xfff == m.offset
    }) else {
        return Ok(0);
    };
    let (seg_off, _) = seg.file_range();
    let seg_size = seg.size();
    let lo = m.start + (seg_off - m.offset);
    let id = std::fs::metadata(&path).map(|md| (md.dev(), md.ino(), seg_off));
    // Once per file (a static executable's were recorded as an allocator's).
    let recorded = id.as_ref().ok().and_then(|id| {
        loaded
            .exe_sites
            .get(id)
            .copied()
            .or_else(|| loaded.lib_sites.contains(id).then_some(1))
    });
    let sites = match recorded {
        Some(n) => n,
        None => {
            let n = record_lib_sites(
                &mut loaded.ebpf,
                &data,
                (seg_off, seg_size),
                Reach::Allocating(&allocating()),
            )
            .with_context(|| exe.clone())?;
            if let Ok(id) = id {
                loaded.lib_sites.insert(id);
                loaded.exe_sites.insert(id, n);
            }
            n
        }
    };
    if sites == 0 {
        return Ok(0);
    }
    update_exe_code(loaded, |c| {
        *c = ExeCode {
            tgid: pid,
            sites_gen: c.sites_gen,
            lo,
            hi: lo + seg_size,
            units: seg_size.div_ceil(256),
        }
    })?;
    Ok(sites)
}

/// Read, change and write back the one `EXE_CODE` entry.
fn update_exe_code(loaded: &mut Loaded, f: impl FnOnce(&mut ExeCode)) -> Result<()> {
    let map = loaded
        .ebpf
        .map_mut(MAP_EXE_CODE)
        .ok_or_else(|| anyhow!("eBPF map {MAP_EXE_CODE} missing"))?;
    let mut map = Array::<_, ExeCode>::try_from(map)?;
    let mut code = map
        .get(&0, 0)
        .with_context(|| format!("reading {MAP_EXE_CODE}"))?;
    f(&mut code);
    map.set(0, code, 0)
        .with_context(|| format!("setting {MAP_EXE_CODE}"))
}
