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
    let got = got_slots(&file, &wanted);
    targets.extend(plt_stubs(&file, &got));

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
    let fn_start = |at: u64| {
        table
            .fde_for_address(&eh_frame, &bases, at, EhFrame::cie_from_offset)
            .ok()
            .map(|fde| fde.initial_address())
    };
    let mut ctx = UnwindContext::new();
    let code_range = seg_vaddr..seg_vaddr + seg.size();
    let branches = branches(text.0, text.1, &got, &code_range);

    // Breadth first: calls to the allocators, then calls to the functions
    // making those, ...
    let mut sites: HashMap<u64, Site> = HashMap::new();
    let mut seen_fns: HashSet<u64> = HashSet::new();
    for level in 0..LIB_DEPTH {
        let reaches = |targets: &HashSet<u64>, dest: Dest| match dest {
            Dest::Addr(a) => targets.contains(&a),
            // The allocators themselves, through the GOT: the first level.
            Dest::Wanted => level == 0,
        };
        // A function that jumps to a target (a tail call) returns where the
        // target returns: calls to it are calls to the target.
        loop {
            let jumpers: Vec<u64> = branches
                .iter()
                .filter(|b| !b.call && reaches(&targets, b.dest))
                .filter_map(|b| fn_start(b.at))
                .filter(|f| !targets.contains(f))
                .collect();
            if jumpers.is_empty() {
                break;
            }
            targets.extend(jumpers);
        }
        let mut callers: BTreeSet<u64> = BTreeSet::new();
        for b in branches
            .iter()
            .filter(|b| b.call && reaches(&targets, b.dest))
        {
            if sites.len() >= MAX_SITES {
                break;
            }
            let ra = b.ra;
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

/// Where a branch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    /// To this address (direct, or through a GOT slot holding it).
    Addr(u64),
    /// To an allocator the file imports, through its GOT slot.
    Wanted,
}

/// A call or jump found in the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Branch {
    /// The instruction's address.
    at: u64,
    /// The address after it (a call's return address).
    ra: u64,
    call: bool,
    dest: Dest,
}

/// What a GOT slot holds once relocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Addr(u64),
    Wanted,
}

/// The calls and jumps in `code` (at `addr`): `call`/`jmp rel32` into
/// `code_range` (the executable segment), and `call`/`jmp *disp32(%rip)`
/// through a GOT slot in `got` (how code built without a PLT, Rust's among
/// it, calls functions). Bytes are scanned, not decoded: a false match
/// inside another instruction yields an address no call returns to, never
/// looked up (most land outside the segment and are not kept).
fn branches(
    addr: u64,
    code: &[u8],
    got: &HashMap<u64, Slot>,
    code_range: &std::ops::Range<u64>,
) -> Vec<Branch> {
    let mut out = Vec::new();
    for i in 0..code.len() {
        let w = &code[i..code.len().min(i + 6)];
        let at = addr + i as u64;
        match w {
            [op @ (0xe8 | 0xe9), a, b, c, d, ..] => {
                let rel = i32::from_le_bytes([*a, *b, *c, *d]);
                let ra = at + 5;
                let dest = ra.wrapping_add_signed(i64::from(rel));
                if !code_range.contains(&dest) {
                    continue;
                }
                out.push(Branch {
                    at,
                    ra,
                    call: *op == 0xe8,
                    dest: Dest::Addr(dest),
                });
            }
            [0xff, modrm @ (0x15 | 0x25), a, b, c, d] => {
                let disp = i32::from_le_bytes([*a, *b, *c, *d]);
                let ra = at + 6;
                let dest = match got.get(&ra.wrapping_add_signed(i64::from(disp))) {
                    Some(Slot::Addr(x)) => Dest::Addr(*x),
                    Some(Slot::Wanted) => Dest::Wanted,
                    None => continue,
                };
                out.push(Branch {
                    at,
                    ra,
                    call: *modrm == 0x15,
                    dest,
                });
            }
            _ => {}
        }
    }
    out
}

/// The GOT slots a dynamic relocation fills with an allocator named in
/// `wanted` (imported) or with an address in the file itself (a
/// relative relocation, or a symbol the file defines).
fn got_slots(
    file: &ElfFile64<'_, object::Endianness>,
    wanted: &HashSet<&str>,
) -> HashMap<u64, Slot> {
    let dynsyms = file.dynamic_symbol_table();
    let mut slots = HashMap::new();
    for (got, rel) in file.dynamic_relocations().into_iter().flatten() {
        match rel.target() {
            RelocationTarget::Symbol(i) => {
                let Some(sym) = dynsyms.as_ref().and_then(|t| t.symbol_by_index(i).ok()) else {
                    continue;
                };
                if sym.name().is_ok_and(|n| wanted.contains(n)) {
                    slots.insert(got, Slot::Wanted);
                } else if sym.address() != 0 && rel.addend() == 0 {
                    slots.insert(got, Slot::Addr(sym.address()));
                }
            }
            // R_X86_64_RELATIVE: the slot holds the load base plus the
            // addend, an address in the file.
            RelocationTarget::Absolute
                if rel.flags()
                    == (object::RelocationFlags::Elf {
                        r_type: object::elf::R_X86_64_RELATIVE,
                    }) =>
            {
                if let Ok(a) = u64::try_from(rel.addend()) {
                    slots.insert(got, Slot::Addr(a));
                }
            }
            _ => {}
        }
    }
    slots
}

/// Entry addresses of the PLT stubs through which the file's own code
/// calls the allocators it imports: the stubs jump through a GOT slot that
/// a dynamic relocation fills with the symbol.
fn plt_stubs(file: &ElfFile64<'_, object::Endianness>, got: &HashMap<u64, Slot>) -> Vec<u64> {
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
            if got.get(&(at + 6).wrapping_add_signed(i64::from(disp))) == Some(&Slot::Wanted) {
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
    fn finds_branches() {
        // call +0 (to 0x1005), nop, call -11 (to 0x1000), jmp *0x10(%rip)
        // (slot 0x1021), jmp -5 at the very end (to 0x1016)
        let code = [
            0xe8, 0, 0, 0, 0, 0x90, 0xe8, 0xf5, 0xff, 0xff, 0xff, 0xff, 0x25, 0x10, 0, 0, 0, 0xe9,
            0xfb, 0xff, 0xff, 0xff,
        ];
        let got: HashMap<u64, Slot> = [(0x1021u64, Slot::Wanted)].into_iter().collect();
        let b = branches(0x1000, &code, &got, &(0x1000..0x1100));
        let found: Vec<(u64, bool, Dest)> = b.iter().map(|b| (b.ra, b.call, b.dest)).collect();
        assert!(
            found.contains(&(0x1005, true, Dest::Addr(0x1005))),
            "{found:?}"
        );
        assert!(
            found.contains(&(0x100b, true, Dest::Addr(0x1000))),
            "{found:?}"
        );
        assert!(found.contains(&(0x1011, false, Dest::Wanted)), "{found:?}");
        assert!(
            found.contains(&(0x1016, false, Dest::Addr(0x1011))),
            "{found:?}"
        );
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
