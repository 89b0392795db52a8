//! Unwinding through the allocator library's own code. A C library is
//! built without frame pointers, so when its code allocates (strdup,
//! asprintf, getline, realpath call malloc), the frame-pointer walk from
//! malloc's return finds the library function but not who called it: the
//! frame pointer register holds whatever that function kept in it.
//!
//! For each place in the library's code where an allocation function is
//! called (directly, through the library's PLT, or through a library
//! function that itself allocates, up to `LIB_DEPTH` levels), the library's
//! `.eh_frame` says where, after the call returns, the function's own
//! return address and its caller's frame pointer are: the eBPF return
//! program looks the return address up and steps out of the library with
//! one read per level.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Context as _, Result, anyhow};
use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection as _, X86_64,
};
use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, ObjectSymbolTable as _,
    RelocationTarget, read::elf::ElfFile64,
};

use memtrace_common::LIB_DEPTH;

/// At most this many call sites per library (glibc 2.36 has 3,644 for its
/// allocation and mapping functions).
pub const MAX_SITES: usize = 8192;

/// One call site: the return address's offset from the start of the
/// executable segment, and how to step out of the calling function there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    pub ra_off: u64,
    /// The canonical frame address is the stack pointer after the return
    /// plus this; the function's return address is just below it.
    pub cfa: u16,
    /// Where the caller's frame pointer was saved, from the CFA (negative),
    /// or 0: the function left the register alone.
    pub rbp_at: i16,
}

/// The call sites of `allocators` (symbol names) in the ELF file `data`
/// whose executable segment starts at file offset `seg_off`.
pub fn call_sites(data: &[u8], seg_off: u64, allocators: &[&str]) -> Result<Vec<Site>> {
    let file = ElfFile64::<object::Endianness>::parse(data).context("parsing ELF")?;
    let seg = file
        .segments()
        .find(|s| s.file_range().0 == seg_off)
        .ok_or_else(|| anyhow!("no segment at file offset {seg_off:#x}"))?;
    // Virtual address of the segment's first byte: return addresses are
    // counted from it.
    let seg_vaddr = seg.address();
    let wanted: HashSet<&str> = allocators.iter().copied().collect();

    let mut targets: HashSet<u64> = HashSet::new();
    for sym in file.dynamic_symbols() {
        if sym.name().is_ok_and(|n| wanted.contains(n)) && sym.address() != 0 {
            targets.insert(sym.address());
        }
    }
    targets.extend(plt_stubs(&file, &wanted));

    let eh = section(&file, ".eh_frame")?;
    let hdr = section(&file, ".eh_frame_hdr")?;
    let text = section(&file, ".text")?;
    let bases = BaseAddresses::default()
        .set_eh_frame(eh.0)
        .set_eh_frame_hdr(hdr.0)
        .set_text(text.0);
    let eh_frame = EhFrame::new(eh.1, LittleEndian);
    let parsed = EhFrameHdr::new(hdr.1, LittleEndian)
        .parse(&bases, 8)
        .context("parsing .eh_frame_hdr")?;
    let table = parsed
        .table()
        .ok_or_else(|| anyhow!(".eh_frame_hdr has no search table"))?;
    let mut ctx = UnwindContext::new();

    // Breadth first: calls to the allocators, then calls to the functions
    // making those, ...
    let mut sites: HashMap<u64, Site> = HashMap::new();
    let mut seen_fns: HashSet<u64> = HashSet::new();
    for _ in 0..LIB_DEPTH {
        let mut callers: BTreeSet<u64> = BTreeSet::new();
        for ra in calls_to(text.0, text.1, &targets) {
            if sites.len() >= MAX_SITES {
                break;
            }
            let Ok(fde) = table.fde_for_address(&eh_frame, &bases, ra, EhFrame::cie_from_offset)
            else {
                continue;
            };
            if seen_fns.insert(fde.initial_address()) {
                callers.insert(fde.initial_address());
            }
            let Ok(row) = fde.unwind_info_for_address(&eh_frame, &bases, &mut ctx, ra) else {
                continue;
            };
            // A function with a frame pointer is walked like any other.
            let CfaRule::RegisterAndOffset { register, offset } = *row.cfa() else {
                continue;
            };
            if register != X86_64::RSP {
                continue;
            }
            let rbp_at = match row.register(X86_64::RBP) {
                None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => 0,
                Some(RegisterRule::Offset(n)) => n,
                Some(_) => continue,
            };
            let (Ok(cfa), Ok(rbp_at)) = (u16::try_from(offset), i16::try_from(rbp_at)) else {
                continue;
            };
            if cfa < 8 || ra < seg_vaddr {
                continue;
            }
            let ra_off = ra - seg_vaddr;
            sites.insert(
                ra_off,
                Site {
                    ra_off,
                    cfa,
                    rbp_at,
                },
            );
        }
        if callers.is_empty() {
            break;
        }
        targets = callers.into_iter().collect();
    }
    let mut v: Vec<Site> = sites.into_values().collect();
    v.sort_by_key(|s| s.ra_off);
    Ok(v)
}

/// A section's address and bytes.
fn section<'a>(file: &ElfFile64<'a, object::Endianness>, name: &str) -> Result<(u64, &'a [u8])> {
    let s = file
        .section_by_name(name)
        .ok_or_else(|| anyhow!("no {name} section"))?;
    Ok((
        s.address(),
        s.data().with_context(|| format!("reading {name}"))?,
    ))
}

/// Return addresses of the `call rel32` instructions in `code` (at `addr`)
/// whose target is in `targets`. Bytes are scanned, not decoded: a false
/// match inside another instruction yields an address no call returns to,
/// never looked up.
fn calls_to(addr: u64, code: &[u8], targets: &HashSet<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, w) in code.windows(5).enumerate() {
        if w[0] != 0xe8 {
            continue;
        }
        let rel = i32::from_le_bytes([w[1], w[2], w[3], w[4]]);
        let ra = addr + i as u64 + 5;
        let target = ra.wrapping_add_signed(i64::from(rel));
        if targets.contains(&target) {
            out.push(ra);
        }
    }
    out
}

/// Entry addresses of the PLT stubs through which the file's own code
/// calls the `wanted` symbols: the stubs jump through a GOT slot that a
/// dynamic relocation fills with the symbol.
fn plt_stubs(file: &ElfFile64<'_, object::Endianness>, wanted: &HashSet<&str>) -> Vec<u64> {
    let Some(dynsyms) = file.dynamic_symbol_table() else {
        return Vec::new();
    };
    let mut slots = HashSet::new();
    for (got, rel) in file.dynamic_relocations().into_iter().flatten() {
        if let RelocationTarget::Symbol(i) = rel.target()
            && let Ok(sym) = dynsyms.symbol_by_index(i)
            && sym.name().is_ok_and(|n| wanted.contains(n))
        {
            slots.insert(got);
        }
    }
    let mut stubs = Vec::new();
    for name in [".plt", ".plt.got", ".plt.sec"] {
        let Ok((addr, code)) = section(file, name) else {
            continue;
        };
        // jmp *disp32(%rip): ff 25 disp32, maybe after endbr64 and a bnd
        // prefix; a call may target any of those starts.
        for (i, w) in code.windows(6).enumerate() {
            if w[0] != 0xff || w[1] != 0x25 {
                continue;
            }
            let disp = i32::from_le_bytes([w[2], w[3], w[4], w[5]]);
            let at = addr + i as u64;
            if slots.contains(&(at + 6).wrapping_add_signed(i64::from(disp))) {
                stubs.extend([
                    at,
                    at.wrapping_sub(1),
                    at.wrapping_sub(4),
                    at.wrapping_sub(5),
                ]);
            }
        }
    }
    stubs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_calls_by_target() {
        // call +0 (to 0x1005), nop, call -11 (to 0x1000)
        let code = [0xe8, 0, 0, 0, 0, 0x90, 0xe8, 0xf5, 0xff, 0xff, 0xff];
        let targets: HashSet<u64> = [0x1000u64].into_iter().collect();
        assert_eq!(calls_to(0x1000, &code, &targets), vec![0x100b]);
        let targets: HashSet<u64> = [0x1005u64].into_iter().collect();
        assert_eq!(calls_to(0x1000, &code, &targets), vec![0x1005]);
    }

    /// The host's glibc: strdup's call to malloc is a site, with a CFA
    /// above the stack pointer and the caller's rbp saved (strdup keeps the
    /// length in rbp).
    #[test]
    fn host_libc_strdup_calls_malloc() {
        let libc = crate::probes::host_libc().expect("the host's libc");
        let data = std::fs::read(&libc).expect("reading libc");
        let file = ElfFile64::<object::Endianness>::parse(&*data).expect("libc is ELF");
        let seg = file
            .segments()
            .find(|s| s.flags() == object::SegmentFlags::Elf { p_flags: 5 })
            .expect("libc has an executable segment");
        let (seg_off, _) = seg.file_range();
        let (start, size) = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok("strdup"))
            .map(|s| (s.address(), s.size()))
            .expect("libc defines strdup");
        let sites = call_sites(&data, seg_off, &["malloc"]).expect("call sites");
        let inside: Vec<&Site> = sites
            .iter()
            .filter(|s| {
                let ra = s.ra_off + seg.address();
                ra > start && ra <= start + size
            })
            .collect();
        assert_eq!(inside.len(), 1, "{inside:?}");
        assert!(inside[0].cfa >= 16 && inside[0].rbp_at < 0, "{inside:?}");
        assert!(sites.len() > 100, "{} sites", sites.len());
    }
}
