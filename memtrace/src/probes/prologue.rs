//! Choosing where to plant a uprobe in a function's first instructions.
//!
//! The x86-64 kernel emulates a few instructions at a uprobe (push of a
//! register, jmp/jcc/call with a relative target); any other probed
//! instruction is single-stepped out of line, which costs ~10 µs a hit in a
//! VM instead of ~0.6 µs. So: if the first instruction is not emulated, skip
//! over a short run of instructions that are known to leave the argument
//! registers, the stack pointer and control flow untouched, and probe the
//! first emulated one. The arguments are then intact, every call still
//! passes there, and a return probe still finds the return address at
//! `[rsp]`. When no such boundary exists, probe at 0 (slow, but correct).

/// How far into a function we are willing to move a probe.
const MAX_SKIP: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Offset from the symbol's start.
    pub offset: u64,
    /// Whether the probed instruction is one the kernel emulates.
    pub emulated: bool,
    /// How far the stack pointer at the probe is below the entry one (only
    /// nonzero for entry-only probes, which may skip `sub $n, %rsp`).
    pub sp_delta: u64,
}

/// Decode the instruction at the start of `code`: `Some(len)` if it is a
/// harmless one we can skip, `None` otherwise.
fn harmless_len(code: &[u8]) -> Option<usize> {
    let b = |i: usize| code.get(i).copied();
    match (b(0)?, b(1), b(2), b(3)) {
        // endbr64
        (0xf3, Some(0x0f), Some(0x1e), Some(0xfa)) => Some(4),
        // nop
        (0x90, ..) => Some(1),
        // test r64, r64 (REX.W 85 /r, register form)
        (0x48 | 0x49 | 0x4c | 0x4d, Some(0x85), Some(m), _) if m >> 6 == 3 => Some(3),
        // test r32, r32
        (0x85, Some(m), ..) if m >> 6 == 3 => Some(2),
        // cmpb $imm8, disp32(%rip)
        (0x80, Some(0x3d), ..) => Some(7),
        // cmpl $imm8, disp32(%rip)
        (0x83, Some(0x3d), ..) => Some(7),
        // test $imm32, r/m32 with r8-r15 (41 f7 c0+r imm32)
        (0x41, Some(0xf7), Some(m), _) if m & 0xf8 == 0xc0 => Some(7),
        // test $imm32, r32 (f7 c0+r imm32)
        (0xf7, Some(m), ..) if m & 0xf8 == 0xc0 => Some(6),
        // mov $imm32, %eax / %r10d / %r11d... only scratch destinations:
        // eax (b8) is the return register, never an argument.
        (0xb8, ..) => Some(5),
        // mov %ecx,%r10d (41 89 ca) / mov %rcx,%r10 (49 89 ca): the
        // syscall convention copy; r10 is not an argument register.
        (0x41 | 0x49, Some(0x89), Some(0xca), _) => Some(3),
        _ => None,
    }
}

/// Whether the kernel emulates the instruction at the start of `code`
/// (no single-step).
fn emulated(code: &[u8]) -> bool {
    let b = |i: usize| code.get(i).copied();
    match (b(0), b(1)) {
        // push r64
        (Some(0x50..=0x57), _) => true,
        (Some(0x41), Some(0x50..=0x57)) => true,
        // jmp rel8/rel32, call rel32, jcc rel8
        (Some(0xeb | 0xe9 | 0xe8), _) => true,
        (Some(0x70..=0x7f), _) => true,
        // jcc rel32
        (Some(0x0f), Some(0x80..=0x8f)) => true,
        _ => false,
    }
}

/// `sub $imm8, %rsp`: the stack adjustment it makes.
fn stack_sub(code: &[u8]) -> Option<u64> {
    match code {
        [0x48, 0x83, 0xec, imm, ..] if *imm < 0x80 => Some(u64::from(*imm)),
        _ => None,
    }
}

/// Pick the probe offset for a function whose first bytes are `code`.
/// `entry_only`: no return probe goes there, so the walk may also skip a
/// stack adjustment (the program is told the delta).
pub fn choose(code: &[u8], entry_only: bool) -> Choice {
    let mut off = 0;
    let mut sp_delta = 0;
    while off <= MAX_SKIP && off < code.len() {
        let rest = &code[off..];
        if emulated(rest) {
            return Choice {
                offset: off as u64,
                emulated: true,
                sp_delta,
            };
        }
        if let Some(n) = harmless_len(rest) {
            off += n;
        } else if let Some(d) = stack_sub(rest).filter(|_| entry_only) {
            sp_delta += d;
            off += 4;
        } else {
            break;
        }
    }
    Choice {
        offset: 0,
        emulated: emulated(code),
        sp_delta: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Choice {
        Choice {
            offset,
            emulated: true,
            sp_delta: 0,
        }
    }
    const SLOW: Choice = Choice {
        offset: 0,
        emulated: false,
        sp_delta: 0,
    };

    // First bytes of glibc 2.36 (Debian 12) and libstdc++ 12 functions.
    #[test]
    fn glibc_malloc_push_at_zero() {
        // push %r12; push %rbp
        assert_eq!(choose(&[0x41, 0x54, 0x55], false), at(0));
    }

    #[test]
    fn glibc_free_skips_test() {
        // test %rdi,%rdi; je ...
        let c = choose(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0], true);
        assert_eq!(c, at(3));
    }

    #[test]
    fn glibc_memalign_skips_cmpb_rip() {
        // cmpb $0x0,0x140e71(%rip); je +7
        let code = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        assert_eq!(choose(&code, false), at(7));
    }

    #[test]
    fn glibc_mmap_skips_syscall_setup() {
        // mov %ecx,%r10d; test $0xfff,%r9d; jne ...
        let code = [
            0x41, 0x89, 0xca, 0x41, 0xf7, 0xc1, 0xff, 0x0f, 0, 0, 0x75, 0x14,
        ];
        assert_eq!(choose(&code, false), at(10));
    }

    #[test]
    fn glibc_munmap_syscall_stub_is_single_stepped() {
        // mov $0xb,%eax; syscall
        assert_eq!(choose(&[0xb8, 0x0b, 0, 0, 0, 0x0f, 0x05], true), SLOW);
    }

    #[test]
    fn cxx_new_skips_endbr_test_mov() {
        // endbr64; test %rdi,%rdi; mov $1,%eax; push %rbx
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0xb8, 1, 0, 0, 0, 0x53,
        ];
        assert_eq!(choose(&code, true), at(12));
    }

    #[test]
    fn stack_adjustment_stops_the_walk_with_a_return_probe() {
        // sub $0x58,%rsp: a return probe after it would not find the return
        // address at [rsp].
        assert_eq!(choose(&[0x48, 0x83, 0xec, 0x58, 0x55], false), SLOW);
    }

    #[test]
    fn cxx_nothrow_new_skips_stack_adjustment_for_entry_probe() {
        // endbr64; sub $0x8,%rsp; call _Znwm
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0,
        ];
        let want = Choice {
            offset: 8,
            emulated: true,
            sp_delta: 8,
        };
        assert_eq!(choose(&code, true), want);
    }

    #[test]
    fn argument_write_stops_the_walk() {
        // mov %rsi,%rax; mul %rdx (writes rdx, an argument); jo
        let code = [0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x70, 0x05];
        assert_eq!(choose(&code, true), SLOW);
    }

    #[test]
    fn empty_code() {
        assert_eq!(choose(&[], true), SLOW);
    }
}
