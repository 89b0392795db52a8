//! Finding the calls and jumps in machine code (x86-64): direct
//! `call`/`jmp rel32`, through a PLT stub or a GOT slot, and calls through a
//! register or memory, by scanning bytes; and what the PLT stubs and GOT
//! slots of a file lead to.

use std::collections::HashMap;

use object::{
    Object as _, ObjectSymbol as _, ObjectSymbolTable as _, RelocationTarget, read::elf::ElfFile64,
};

use super::{Wanted, section};

/// Where a branch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dest {
    /// To this address (direct, or through a GOT slot holding it).
    Addr(u64),
    /// To an allocator the file imports, through its GOT slot.
    Wanted,
    /// Through a register or memory.
    Unknown,
}

/// A call or jump found in the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Branch {
    /// The instruction's address.
    pub(super) at: u64,
    /// The address after it (a call's return address).
    pub(super) ra: u64,
    pub(super) call: bool,
    pub(super) dest: Dest,
}

/// What a GOT slot holds once relocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Addr(u64),
    Wanted,
}

/// The calls and jumps in `code` (at `addr`): `call`/`jmp rel32` into
/// `code_range` (the executable segment; through a stub of `plt`, to what
/// its GOT slot holds), and `call`/`jmp *disp32(%rip)` through a GOT slot
/// in `got` (how code built without a PLT, Rust's among it, calls
/// functions); with `indirect`, also every other `call` through a register
/// or memory. Bytes are scanned, not decoded: a false match inside another
/// instruction yields an address no call returns to, never looked up (most
/// land outside the segment and are not kept), and where it happens to be
/// a real return address, its unwind row is still right.
pub(super) fn branches(
    addr: u64,
    code: &[u8],
    got: &HashMap<u64, Slot>,
    plt: &HashMap<u64, Slot>,
    code_range: &std::ops::Range<u64>,
    indirect: bool,
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
                let dest = match plt.get(&dest) {
                    Some(Slot::Addr(x)) => Dest::Addr(*x),
                    Some(Slot::Wanted) => Dest::Wanted,
                    None => Dest::Addr(dest),
                };
                out.push(Branch {
                    at,
                    ra,
                    call: *op == 0xe8,
                    dest,
                });
            }
            [0xff, modrm @ (0x15 | 0x25), a, b, c, d] => {
                let disp = i32::from_le_bytes([*a, *b, *c, *d]);
                let ra = at + 6;
                let dest = match got.get(&ra.wrapping_add_signed(i64::from(disp))) {
                    Some(Slot::Addr(x)) => Dest::Addr(*x),
                    Some(Slot::Wanted) => Dest::Wanted,
                    None if indirect => Dest::Unknown,
                    None => continue,
                };
                out.push(Branch {
                    at,
                    ra,
                    call: *modrm == 0x15,
                    dest,
                });
            }
            [0xff, modrm, rest @ ..] if indirect => {
                if let Some(len) = indirect_call_len(*modrm, rest.first().copied()) {
                    out.push(Branch {
                        at,
                        ra: at + len,
                        call: true,
                        dest: Dest::Unknown,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The length of `call *r/m64` (`ff /2`, any REX prefix left out) from its
/// ModRM byte and the byte after it (the SIB byte, when there is one); not
/// `call *disp32(%rip)`, which `branches` reads for its slot.
pub(super) fn indirect_call_len(modrm: u8, sib: Option<u8>) -> Option<u64> {
    let (mode, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if reg != 2 {
        return None;
    }
    let has_sib = mode != 3 && rm == 4;
    // With mode 0, a SIB byte with base 5 means a disp32 and no base.
    let disp = match mode {
        0 if rm == 5 => return None,
        0 if has_sib && sib? & 7 == 5 => 4,
        0 | 3 => 0,
        1 => 1,
        _ => 4,
    };
    Some(2 + u64::from(has_sib) + disp)
}

/// The GOT slots a dynamic relocation fills with an allocator named in
/// `wanted` (imported) or with an address in the file itself (a
/// relative relocation, or a symbol the file defines).
pub(super) fn got_slots(
    file: &ElfFile64<'_, object::Endianness>,
    wanted: &Wanted<'_>,
) -> HashMap<u64, Slot> {
    let dynsyms = file.dynamic_symbol_table();
    let mut slots = HashMap::new();
    for (got, rel) in file.dynamic_relocations().into_iter().flatten() {
        match rel.target() {
            RelocationTarget::Symbol(i) => {
                let Some(sym) = dynsyms.as_ref().and_then(|t| t.symbol_by_index(i).ok()) else {
                    continue;
                };
                if sym.name().is_ok_and(|n| wanted.matches(n)) {
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

/// The PLT stubs through which the file's own code calls the allocators
/// it imports, or functions it exports itself (a library calls its own
/// interposable functions so: libstdc++'s `_M_mutate` calls `_M_create`
/// through its PLT), by entry address: each jumps through a GOT slot that
/// a dynamic relocation fills with the symbol.
pub(super) fn plt_stubs(
    file: &ElfFile64<'_, object::Endianness>,
    got: &HashMap<u64, Slot>,
) -> HashMap<u64, Slot> {
    let mut stubs = HashMap::new();
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
            if let Some(&slot) = got.get(&(at + 6).wrapping_add_signed(i64::from(disp))) {
                for start in [
                    at,
                    at.wrapping_sub(1),
                    at.wrapping_sub(4),
                    at.wrapping_sub(5),
                ] {
                    stubs.insert(start, slot);
                }
            }
        }
    }
    stubs
}
