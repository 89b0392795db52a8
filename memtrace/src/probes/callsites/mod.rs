//! Unwinding through the allocator library's own code. A C library is
//! built without frame pointers, so when its code allocates (strdup,
//! asprintf, getline, realpath call malloc), the frame-pointer walk from
//! malloc's return finds the library function but not who called it: the
//! frame pointer register holds whatever that function kept in it.
//!
//! For each place in the code where a call returns, the file's `.eh_frame`
//! says where the calling function's own return address and its caller's
//! frame pointer are: the eBPF return program looks the return address up
//! and steps out of the function with one read per level (up to
//! `LIB_DEPTH`). For the allocator library that is every call it makes
//! ([`Reach::Every`]): its allocations on the program's behalf reach the
//! allocator through its own function pointers too (stdio allocates a
//! stream's buffer through the stream's table of functions). For a
//! program's executable, only the calls that lead to an allocation
//! ([`Reach::Allocating`]): directly, through its PLT or GOT, or through
//! its own functions that allocate, up to `LIB_DEPTH` levels.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Context as _, Result, anyhow};
use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection as _, X86_64,
};
use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, read::elf::ElfFile64,
};

use memtrace_common::LIB_DEPTH;

mod branches;

use self::branches::{Dest, branches, got_slots, plt_stubs};

/// At most this many call sites per executable, nearest the allocator
/// first (CPython 3.11 has more).
pub const MAX_SITES: usize = 8192;

/// At most this many call sites per allocator library (glibc 2.36 has
/// 10,661).
pub const MAX_LIB_SITES: usize = 16_384;

/// Which calls of a file are sites.
#[derive(Clone, Copy, Debug)]
pub enum Reach<'a> {
    /// Every call, direct or through a register or memory.
    Every,
    /// The calls that lead to these functions (symbol names).
    Allocating(&'a [&'a str]),
}

/// The names of `Reach::Allocating`: exact, or a prefix when they end in
/// `*` (every member of a C++ class: `_ZNSt7__cxx1112basic_string*`).
struct Wanted<'a> {
    exact: HashSet<&'a str>,
    prefixes: Vec<&'a str>,
}

impl<'a> Wanted<'a> {
    fn new(names: &[&'a str]) -> Self {
        let (prefixes, exact): (Vec<&str>, Vec<&str>) =
            names.iter().copied().partition(|n| n.ends_with('*'));
        Wanted {
            exact: exact.into_iter().collect(),
            prefixes: prefixes
                .into_iter()
                .map(|p| p.trim_end_matches('*'))
                .collect(),
        }
    }

    fn matches(&self, name: &str) -> bool {
        self.exact.contains(name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

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

/// The call sites `reach` names in the ELF file `data` whose executable
/// segment starts at file offset `seg_off`.
pub fn call_sites(data: &[u8], seg_off: u64, reach: Reach<'_>) -> Result<Vec<Site>> {
    let allocators = match reach {
        Reach::Every => &[][..],
        Reach::Allocating(names) => names,
    };
    let file = ElfFile64::<object::Endianness>::parse(data).context("parsing ELF")?;
    let seg = file
        .segments()
        .find(|s| s.file_range().0 == seg_off)
        .ok_or_else(|| anyhow!("no segment at file offset {seg_off:#x}"))?;
    // Virtual address of the segment's first byte: return addresses are
    // counted from it.
    let seg_vaddr = seg.address();
    let wanted = Wanted::new(allocators);

    let mut targets: HashSet<u64> = HashSet::new();
    for sym in file.dynamic_symbols() {
        if sym.name().is_ok_and(|n| wanted.matches(n)) && sym.address() != 0 {
            targets.insert(sym.address());
        }
    }
    let got = got_slots(&file, &wanted);
    let plt = plt_stubs(&file, &got);

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
    let every = matches!(reach, Reach::Every);
    let branches = branches(text.0, text.1, &got, &plt, &code_range, every);
    let mut sites: HashMap<u64, Site> = HashMap::new();
    // The function a call returns into, and how to step out of it there.
    let mut site_at = |ra: u64| {
        let fde = table
            .fde_for_address(&eh_frame, &bases, ra, EhFrame::cie_from_offset)
            .ok()?;
        let site = fde
            .unwind_info_for_address(&eh_frame, &bases, &mut ctx, ra)
            .ok()
            .and_then(|row| step_out_rule(row, ra, seg_vaddr));
        Some((fde.initial_address(), site))
    };
    if every {
        for b in branches.iter().filter(|b| b.call) {
            if sites.len() >= MAX_LIB_SITES {
                break;
            }
            if let Some((_, Some(site))) = site_at(b.ra) {
                sites.insert(site.ra_off, site);
            }
        }
        return Ok(sorted(sites));
    }

    // Breadth first: calls to the allocators, then calls to the functions
    // making those, ...
    let mut seen_fns: HashSet<u64> = HashSet::new();
    for level in 0..LIB_DEPTH {
        let reaches = |targets: &HashSet<u64>, dest: Dest| match dest {
            Dest::Addr(a) => targets.contains(&a),
            // The allocators themselves, through the GOT: the first level.
            Dest::Wanted => level == 0,
            Dest::Unknown => false,
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
            let Some((f, site)) = site_at(b.ra) else {
                continue;
            };
            if seen_fns.insert(f) {
                callers.insert(f);
            }
            if let Some(site) = site {
                sites.insert(site.ra_off, site);
            }
        }
        if callers.is_empty() {
            break;
        }
        targets = callers.into_iter().collect();
    }
    Ok(sorted(sites))
}

fn sorted(sites: HashMap<u64, Site>) -> Vec<Site> {
    let mut v: Vec<Site> = sites.into_values().collect();
    v.sort_by_key(|s| s.ra_off);
    v
}

/// How to step out of a function at return address `ra`, from its unwind
/// row there: `None` if the row is not one the eBPF program follows (a CFA
/// off the stack pointer, the frame pointer saved or left alone).
fn step_out_rule(row: &gimli::UnwindTableRow<usize>, ra: u64, seg_vaddr: u64) -> Option<Site> {
    // A function with a frame pointer is walked like any other.
    let CfaRule::RegisterAndOffset { register, offset } = *row.cfa() else {
        return None;
    };
    if register != X86_64::RSP {
        return None;
    }
    let rbp_at = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => 0,
        Some(RegisterRule::Offset(n)) => n,
        Some(_) => return None,
    };
    let (Ok(cfa), Ok(rbp_at)) = (u16::try_from(offset), i16::try_from(rbp_at)) else {
        return None;
    };
    if cfa < 8 || ra < seg_vaddr {
        return None;
    }
    Some(Site {
        ra_off: ra - seg_vaddr,
        cfa,
        rbp_at,
    })
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

#[cfg(test)]
mod tests {
    use super::{
        branches::{Slot, indirect_call_len},
        *,
    };

    #[test]
    fn finds_branches() {
        // call +0 (to 0x1005), nop, call -11 (to 0x1000), jmp *0x10(%rip)
        // (slot 0x1021), jmp -5 at the very end (to 0x1016)
        let code = [
            0xe8, 0, 0, 0, 0, 0x90, 0xe8, 0xf5, 0xff, 0xff, 0xff, 0xff, 0x25, 0x10, 0, 0, 0, 0xe9,
            0xfb, 0xff, 0xff, 0xff,
        ];
        let got: HashMap<u64, Slot> = [(0x1021u64, Slot::Wanted)].into_iter().collect();
        let b = branches(
            0x1000,
            &code,
            &got,
            &HashMap::new(),
            &(0x1000..0x1100),
            false,
        );
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

    #[test]
    fn indirect_call_lengths() {
        for (code, want) in [
            (&[0xff, 0xd0][..], Some(2)),               // call *%rax
            (&[0xff, 0x10], Some(2)),                   // call *(%rax)
            (&[0xff, 0x14, 0x24], Some(3)),             // call *(%rsp)
            (&[0xff, 0x14, 0x25, 0, 0, 0, 0], Some(7)), // call *disp32
            (&[0xff, 0x50, 0x38], Some(3)),             // call *0x38(%rax)
            (&[0xff, 0x54, 0x24, 0x08], Some(4)),       // call *0x8(%rsp)
            (&[0xff, 0x90, 0, 1, 0, 0], Some(6)),       // call *0x100(%rax)
            (&[0xff, 0x94, 0xc8, 0, 1, 0, 0], Some(7)), // call *0x100(%rax,%rcx,8)
            (&[0xff, 0x15, 0, 0, 0, 0], None),          // call *disp32(%rip)
            (&[0xff, 0xe0], None),                      // jmp *%rax
            (&[0xff, 0x50 ^ 0x18, 0x38], None),         // push/other /n
        ] {
            assert_eq!(
                indirect_call_len(code[1], code.get(2).copied()),
                want,
                "{code:x?}"
            );
        }
        // Found in code, with the return address after them.
        let code = [0x41, 0xff, 0xd3, 0x90, 0xff, 0x50, 0x38];
        let b = branches(
            0x1000,
            &code,
            &HashMap::new(),
            &HashMap::new(),
            &(0x1000..0x1100),
            true,
        );
        let found: Vec<(u64, Dest)> = b
            .iter()
            .filter(|b| b.call)
            .map(|b| (b.ra, b.dest))
            .collect();
        assert_eq!(found, [(0x1003, Dest::Unknown), (0x1007, Dest::Unknown)]);
        assert!(
            branches(
                0x1000,
                &code,
                &HashMap::new(),
                &HashMap::new(),
                &(0x1000..0x1100),
                false
            )
            .is_empty()
        );
    }

    /// The host's glibc: its bytes, its executable segment's file offset
    /// and address, and the address and size of its function `name`.
    fn host_libc_function(name: &str) -> (Vec<u8>, (u64, u64), (u64, u64)) {
        let libc = crate::probes::host_libc().expect("the host's libc");
        host_function(&libc, name)
    }

    /// As `host_libc_function`, for the library at `path`.
    fn host_function(path: &std::path::Path, name: &str) -> (Vec<u8>, (u64, u64), (u64, u64)) {
        let data = std::fs::read(path).expect("reading the library");
        let file = ElfFile64::<object::Endianness>::parse(&*data).expect("an ELF file");
        let seg = file
            .segments()
            .find(|s| s.flags() == object::SegmentFlags::Elf { p_flags: 5 })
            .expect("an executable segment");
        let segment = (seg.file_range().0, seg.address());
        let function = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| (s.address(), s.size()))
            .unwrap_or_else(|| panic!("{} defines {name}", path.display()));
        (data, segment, function)
    }

    /// The host's libstdc++: `std::string::_M_mutate` calls `_M_create`
    /// through the library's own PLT, and `_M_create` tail-jumps to
    /// operator new through it: that call is a site of the calls leading
    /// to operator new.
    #[test]
    fn host_libstdcxx_mutate_reaches_operator_new() {
        let lib = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libstdc++.so.6");
        if !lib.exists() {
            eprintln!("skipped: no {}", lib.display());
            return;
        }
        let (data, (seg_off, seg_addr), (start, size)) = host_function(
            lib,
            "_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEE9_M_mutateEmmPKcm",
        );
        let sites = call_sites(&data, seg_off, Reach::Allocating(&["_Znwm"])).expect("call sites");
        let inside = sites.iter().any(|s| {
            let ra = s.ra_off + seg_addr;
            ra > start && ra <= start + size
        });
        assert!(inside, "no site in _M_mutate among {} sites", sites.len());
    }

    /// The host's glibc, every call: the stream functions' calls through
    /// their tables (how a stream's buffer is allocated) are sites too.
    #[test]
    fn host_libc_every_call() {
        let (data, (seg_off, seg_addr), (start, size)) = host_libc_function("_IO_doallocbuf");
        let file = ElfFile64::<object::Endianness>::parse(&*data).expect("libc is ELF");
        let every = call_sites(&data, seg_off, Reach::Every).expect("call sites");
        let allocating =
            call_sites(&data, seg_off, Reach::Allocating(&["malloc"])).expect("call sites");
        // The calls through memory in _IO_doallocbuf's code.
        let (text_addr, text) = section(&file, ".text").expect(".text");
        let from = usize::try_from(start - text_addr).expect("offset");
        let code = &text[from..from + usize::try_from(size).expect("size")];
        let indirect: Vec<u64> =
            branches(start, code, &HashMap::new(), &HashMap::new(), &(0..0), true)
                .iter()
                .filter(|b| b.call && b.dest == Dest::Unknown)
                .map(|b| b.ra - seg_addr)
                .collect();
        assert!(!indirect.is_empty(), "no call through memory found");
        let has = |sites: &[Site], ra_off: u64| sites.iter().any(|s| s.ra_off == ra_off);
        assert!(indirect.iter().any(|&ra| has(&every, ra)), "{indirect:x?}");
        assert!(
            !indirect.iter().any(|&ra| has(&allocating, ra)),
            "{indirect:x?}"
        );
        assert!(
            every.len() > allocating.len() && every.len() <= MAX_LIB_SITES,
            "{} sites, {} allocating",
            every.len(),
            allocating.len()
        );
    }

    /// The host's glibc: strdup's call to malloc is a site, with a CFA
    /// above the stack pointer and the caller's rbp saved (strdup keeps the
    /// length in rbp).
    #[test]
    fn host_libc_strdup_calls_malloc() {
        let (data, (seg_off, seg_addr), (start, size)) = host_libc_function("strdup");
        let sites = call_sites(&data, seg_off, Reach::Allocating(&["malloc"])).expect("call sites");
        let inside: Vec<&Site> = sites
            .iter()
            .filter(|s| {
                let ra = s.ra_off + seg_addr;
                ra > start && ra <= start + size
            })
            .collect();
        assert_eq!(inside.len(), 1, "{inside:?}");
        assert!(inside[0].cfa >= 16 && inside[0].rbp_at < 0, "{inside:?}");
        assert!(sites.len() > 100, "{} sites", sites.len());
    }
}
