//! User stacks, walked by frame pointers at the return probe, where the
//! instruction pointer is the return address into the allocator's caller
//! and the walk continues from the caller's frame, so no frame is missing.
//! The frames travel in the event's ring record: no stack map, no
//! collisions, no kernel memory that fills up. C++ `operator new` has no
//! frame pointer: its entry probe records its caller (`[rsp]`) and the
//! caller's frame pointer for the malloc it makes.

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, programs::RetProbeContext};
use memtrace_common::{
    Counter, Event, LIB_DEPTH, Record, SHORT_FRAMES, STACK_DEPTH, flags, lib_site_key,
};

use crate::{
    calls::code_range,
    maps::{CXX_CTX, CXX_SEEN, EVENTS, EXE_CODE, LIB_SITES, WALK, bump, runs_target_image},
    ring::{emit, now, put, put_event},
};

/// How far below an operator new's entry its malloc may return.
pub(crate) const CXX_CTX_WINDOW: u64 = 4096;

/// Where the stack of an allocation returning at `sp` starts: its innermost
/// frame, the frame pointer to walk on from, the stack pointer after the
/// innermost call returns (the lowest address that frame pointer may have),
/// and, for a malloc made by C++'s operator new, the code of the library
/// holding operator new (else `Code::NONE`).
#[inline(always)]
fn stack_start(ctx: &RetProbeContext, tid: u32, sp: u64) -> (u64, u64, u64, Code) {
    // SAFETY: a racy read of a flag only ever set to 1.
    let cxx_seen = unsafe { core::ptr::read_volatile(&raw const CXX_SEEN) } != 0;
    // SAFETY: copied out at once.
    if cxx_seen && let Some(c) = unsafe { CXX_CTX.get(tid) } {
        let c = *c;
        let _ = CXX_CTX.remove(tid);
        if c.sp > sp && c.sp - sp < CXX_CTX_WINDOW {
            let cxx = Code {
                lo: c.lo,
                hi: c.hi,
                units: c.hi.wrapping_sub(c.lo) / 256,
            };
            // operator new returns to `caller` with the stack pointer one
            // word above where `caller` sits.
            return (c.caller, c.fp, c.sp + 8, cxx);
        }
    }
    // SAFETY: `regs` is the context pointer the kernel passed; at a return
    // probe the instruction pointer is the return address and the frame
    // pointer the caller's.
    unsafe { ((*ctx.regs).rip, (*ctx.regs).rbp, sp, Code::NONE) }
}

/// Below this, user code (executables are mapped at 0x4000_0000 or, PIE,
/// around 0x5555_5555_0000); above it, the shared libraries (mmap's base
/// sits under the stack near 0x7fff_ffff_ffff).
const LIBRARY_REGION: u64 = 0x6000_0000_0000;

/// Step out of the functions without frame pointers that made this
/// allocation, where the frame-pointer walk would miss their callers: the
/// allocator library's own (strdup, asprintf, getline: a C library keeps no
/// frame pointer; for a malloc made by operator new, `cxx`, the C++
/// runtime's: `std::string`'s `_M_create`), then the traced program's own when userspace found call
/// sites in its executable (`EXE_CODE`: Rust's `RawVec::finish_grow` and the
/// growth functions around it, a C program's malloc wrappers built with
/// `-O2`). Each call site is in `LIB_SITES` with its frame's layout (from
/// `.eh_frame`): two words above the stack pointer give the function's
/// return address and its caller's saved frame pointer, read from a chunk
/// of the stack that mostly serves every level. Fills `frames[1..]` from
/// `ip`, the allocation's return address, and returns how many frames are
/// set, and the frame pointer and stack bound to walk on from.
#[inline(always)]
fn step_out(
    ctx: &RetProbeContext,
    tgid: u32,
    w: &mut WalkBuf,
    ip: u64,
    fp: u64,
    sp: u64,
    cxx: Code,
) -> (usize, u64, u64) {
    let WalkBuf {
        words,
        frames,
        sites,
        at,
        ..
    } = w;
    // Most allocations return into a program's own code, below the
    // libraries: the allocator library is looked at only above.
    let lib = if cxx.hi != 0 {
        cxx
    } else if ip >= LIBRARY_REGION {
        // SAFETY: helpers reading the probe's address and attach cookie.
        let (func_ip, cookie) = unsafe {
            (
                aya_ebpf::helpers::generated::bpf_get_func_ip(ctx.regs.cast()),
                aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.regs.cast()),
            )
        };
        let (lo, hi) = code_range(func_ip, cookie);
        Code {
            lo,
            hi,
            units: cookie >> 48,
        }
    } else {
        Code::NONE
    };
    // An array of one entry: always there.
    let Some(e) = EXE_CODE.get(0) else {
        return (1, fp, sp);
    };
    let generation = e.sites_gen;
    // The command's, or a child's forked from it (`report --children`);
    // no lookup unless a program without frame pointers is traced.
    let exe = if e.tgid == tgid || (e.tgid != 0 && runs_target_image(tgid)) {
        Code {
            lo: e.lo,
            hi: e.hi,
            units: e.units,
        }
    } else {
        Code::NONE
    };
    let (mut ip, mut fp, mut sp, mut n) = (ip, fp, sp, 1);
    at.base = 0;
    at.len = 0;
    for _ in 0..LIB_DEPTH {
        let (units, lo) = if lib.lo <= ip && ip < lib.hi {
            (lib.units, lib.lo)
        } else if exe.lo <= ip && ip < exe.hi {
            (exe.units, exe.lo)
        } else {
            break;
        };
        let v = site(sites, lib_site_key(units, ip - lo), generation);
        if v == 0 {
            break;
        }
        let cfa = sp.wrapping_add(u64::from(v as u16));
        let rbp_at = i64::from((v >> 16) as u16 as i16);
        // The frame spans [sp, cfa): a read from `sp` takes the return
        // address and the saved frame pointer below it at once.
        if chunk_word(words, at, cfa.wrapping_sub(8), sp) == 0 {
            break;
        }
        let ret = at.word;
        if rbp_at != 0 {
            if chunk_word(words, at, cfa.wrapping_add_signed(rbp_at), sp) == 0 {
                break;
            }
            fp = at.word;
        }
        match frames.get_mut(n) {
            Some(f) => *f = ret,
            None => break,
        }
        n += 1;
        ip = ret;
        sp = cfa;
    }
    (n, fp, sp)
}

/// The value of call site `key` in `LIB_SITES` (0: not a site), through
/// this CPU's cache of the sites looked up: a program without frame
/// pointers steps out of several functions on every allocation, mostly the
/// same few, and the cache takes ~0.1 µs off each of CPython's allocations.
/// Entries of an older `generation` of `LIB_SITES` (userspace bumps it
/// after adding sites) are stale; an entry torn by a preempting walk fails
/// its check and is looked up again. A function of its own in the eBPF
/// object: inlined, its two ways made the verifier's work on the return
/// program 84k instructions instead of 62k.
#[inline(never)]
fn site(cache: &mut [SiteSlot; SITE_CACHE], key: u64, generation: u32) -> u32 {
    let i = (key ^ key >> 29).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SITE_CACHE_BITS);
    let Some(slot) = cache.get_mut(i as usize) else {
        return 0;
    };
    let (k, tagged, check) = (slot.key, slot.tagged, slot.check);
    if (k ^ key) | (check ^ k ^ tagged) | ((tagged >> 32) ^ u64::from(generation)) != 0 {
        // SAFETY: copied out at once.
        let v = unsafe { LIB_SITES.get(key) }.copied().unwrap_or(0);
        let tagged = u64::from(generation) << 32 | u64::from(v);
        put(&mut slot.key, key);
        put(&mut slot.tagged, tagged);
        put(&mut slot.check, key ^ tagged);
    }
    // Read back from the slot either way, so that the verifier goes on
    // from one state, not one per way. A walk preempted here may read
    // another's value: `finish` tells, and keeps one frame.
    // SAFETY: a read of this CPU's scratch value.
    unsafe { core::ptr::read_volatile(&raw const slot.tagged) as u32 }
}

const SITE_CACHE_BITS: u32 = 9;

/// Call sites cached per CPU (24 bytes each).
const SITE_CACHE: usize = 1 << SITE_CACHE_BITS;

/// A cached `LIB_SITES` lookup: its key; the generation of `LIB_SITES` it
/// was made in (high half) and the value found (low half; 0: none); and
/// the two xor-ed, to tell a slot whose writes interleaved with another
/// walk's.
#[repr(C)]
pub struct SiteSlot {
    key: u64,
    tagged: u64,
    check: u64,
}

/// An executable segment with call sites in `LIB_SITES`.
#[derive(Clone, Copy)]
struct Code {
    lo: u64,
    hi: u64,
    /// Its size in 256-byte units: the high half of its sites' keys.
    units: u64,
}

impl Code {
    const NONE: Code = Code {
        lo: 0,
        hi: 0,
        units: 0,
    };
}

/// Bytes of user stack a step out of a function reads at once (each
/// `bpf_probe_read_user` costs ~150 ns here, plus ~1.5 ns per 100 bytes
/// copied): frames of functions without frame pointers are small, so one
/// read mostly serves every level.
const STEP_READ: u64 = 1024;

/// The words of user stack read last (`words[..len]` from `base`) by a
/// step out of functions without frame pointers, and the word asked for.
#[repr(C)]
pub struct ChunkAt {
    base: u64,
    len: u64,
    word: u64,
}

/// The user word at `addr` (8-byte aligned) into `at.word`, from the chunk
/// in `words` or a new read (never past its page); whether there is one.
/// The read starts at `low`, the bottom of the frame `addr` is in, when
/// that reaches `addr` within the page: the frame's other words (its saved
/// frame pointer, below the return address) come with it instead of
/// costing a read of their own (CPython: one read per allocation instead
/// of two). A function of its own in the eBPF object: inlined at its two
/// calls, its ways doubled the verifier's work on the return program.
#[inline(never)]
fn chunk_word(words: &mut [u64; CHUNK_WORDS], at: &mut ChunkAt, addr: u64, low: u64) -> u32 {
    if addr & 7 != 0 {
        return 0;
    }
    let mut i = addr.wrapping_sub(at.base) / 8;
    if addr < at.base || i >= at.len {
        let page = !(CHUNK as u64 - 1);
        let start =
            if low <= addr && low & 7 == 0 && addr - low < STEP_READ && low & page == addr & page {
                low
            } else {
                addr
            };
        // At least up to `addr`: `start` is `addr`, or in its page and
        // less than STEP_READ below it.
        let bytes = (CHUNK as u64 - (start & !page)).clamp(8, STEP_READ);
        // SAFETY: writes at most `bytes` <= STEP_READ <= CHUNK bytes into
        // `words`; reads user memory, a fault returns an error.
        let r = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                words.as_mut_ptr().cast(),
                bytes as u32,
                start as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            return 0;
        }
        at.base = start;
        at.len = bytes / 8;
        i = (addr - start) / 8;
    }
    match words.get(i as usize) {
        Some(&v) => {
            at.word = v;
            1
        }
        None => 0,
    }
}

/// Bytes of user stack read at once: at most a page, and never past the
/// end of the page the frame lies in (the page above may not be mapped).
const CHUNK: usize = 4096;

const CHUNK_WORDS: usize = CHUNK / 8;

#[repr(C)]
pub struct WalkBuf {
    /// Bumped by every walk on this CPU: a walk that finds it changed at
    /// its end was preempted and its buffer reused, and is not trusted.
    generation: u64,
    /// How many bytes from its first frame pointer the first read of a walk
    /// takes: what recent walks on this CPU needed, plus a margin (copying
    /// costs ~1.5 ns per 100 bytes, a second read ~150 ns).
    first_read: u64,
    /// Allocations on this CPU to emit without a timestamp before the next
    /// one with.
    unstamped: u64,
    /// How many frames the walk's step out of functions without frame
    /// pointers set (see `finish`).
    stepped: u64,
    words: [u64; CHUNK_WORDS],
    /// The walk's result, copied into a ring record of the right size.
    frames: [u64; STACK_DEPTH],
    sites: [SiteSlot; SITE_CACHE],
    /// The step out's chunk of `words`.
    at: ChunkAt,
}

/// Walk the frame-pointer chain from `fp` into `frames[1..]`: each frame
/// holds the caller's frame pointer and a return address, and lies above
/// the one before it (anything else ends the walk: code without frame
/// pointers leaves garbage there). User memory is read in chunks of up to a
/// page (each `bpf_probe_read_user` costs ~150 ns here, plus ~1.5 ns per
/// 100 bytes copied), so frames close together cost one read. Returns how many frames
/// are valid, and whether the walk stopped for want of room. The first read
/// takes `first_read` bytes (never past the page), later ones the rest of
/// their page; `need` is set to how far from the first frame pointer the
/// walk used the words it read (the frame that ended it included).
#[inline(always)]
fn walk_in(
    frames: &mut [u64; STACK_DEPTH],
    mut n: usize,
    mut fp: u64,
    mut lo: u64,
    words: &mut [u64; CHUNK_WORDS],
    first_read: u64,
    need: &mut u64,
) -> (usize, bool) {
    let start = fp;
    // The chunk read last: words [0, len) hold user memory from `base`.
    let mut base = 0u64;
    let mut len = 0u64;
    while n < STACK_DEPTH {
        if fp < lo || fp & 7 != 0 {
            return (n, false);
        }
        let mut i = (fp.wrapping_sub(base)) / 8;
        if fp < base || i + 2 > len {
            let mut bytes = CHUNK as u64 - (fp & (CHUNK as u64 - 1));
            if len == 0 {
                bytes = bytes.min(first_read);
            }
            let bytes = bytes.clamp(16, CHUNK as u64);
            // SAFETY: writes at most `bytes` <= CHUNK bytes into `words`;
            // reads user memory, a fault returns an error.
            let r = unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_user(
                    words.as_mut_ptr().cast(),
                    bytes as u32,
                    fp as *const core::ffi::c_void,
                )
            };
            if r != 0 {
                return (n, false);
            }
            base = fp;
            len = bytes / 8;
            i = 0;
        }
        let (Some(&next), Some(&ret)) = (words.get(i as usize), words.get(i as usize + 1)) else {
            return (n, false);
        };
        // This frame's words were needed even if they end the walk.
        lo = fp + 16;
        *need = lo - start;
        if ret == 0 {
            return (n, false);
        }
        // Masked (n < STACK_DEPTH here): the verifier sees the bound on the
        // index itself, whatever number of frames the walk started from.
        frames[core::hint::black_box(n) & (STACK_DEPTH - 1)] = ret;
        n += 1;
        fp = next;
    }
    (n, fp >= lo && fp & 7 == 0)
}

/// Emit allocation `ev` with the user stack, in the smallest record that
/// holds it.
#[inline(always)]
pub(crate) fn finish(ctx: &RetProbeContext, mut ev: Event, tid: u32, sp: u64) {
    let (first, fp, lo, cxx) = stack_start(ctx, tid, sp);
    let Some(w) = WALK.get_ptr_mut(0) else {
        // No scratch page (cannot happen with a per-CPU array of one
        // entry): the allocation still counts, without its stack.
        bump(Counter::StackTruncated);
        ev.ts_ns = now();
        emit(&ev);
        return;
    };
    // SAFETY: this CPU's scratch value; another walk only reuses it if this
    // program is preempted, which the generation check detects.
    let w = unsafe { &mut *w };
    // One allocation in STAMP_EVERY on a CPU carries the clock (~60 ns a
    // read here); userspace places the others as it places frees.
    if w.unstamped == 0 {
        ev.ts_ns = now();
        w.unstamped = STAMP_EVERY - 1;
    } else {
        w.unstamped -= 1;
    }
    w.generation = w.generation.wrapping_add(1);
    let generation = w.generation;
    w.frames[0] = first;
    let (n0, fp, lo) = step_out(ctx, ev.tgid, w, first, fp, lo, cxx);
    // Through memory, so the verifier checks the walk once for any number
    // of frames stepped out of, not once per number (which doubled the
    // load time).
    w.stepped = n0 as u64;
    // SAFETY: a read of this CPU's scratch value, just written.
    let n0 = unsafe { core::ptr::read_volatile(&raw const w.stepped) } as usize;
    let mut need = 0;
    let (n, truncated) = walk_in(
        &mut w.frames,
        n0,
        fp,
        lo,
        &mut w.words,
        w.first_read,
        &mut need,
    );
    w.first_read = next_first_read(w.first_read, need);
    ev.nframes = n as u16;
    if truncated {
        ev.flags |= flags::TRUNCATED;
        bump(Counter::StackTruncated);
    }
    if n <= SHORT_FRAMES {
        emit_record::<SHORT_FRAMES>(ev, w, generation, first);
    } else {
        emit_record::<STACK_DEPTH>(ev, w, generation, first);
    }
}

/// The first read of the next walk on this CPU, after one that needed
/// `need` bytes: at once as much as that and a margin, and shrinking back
/// slowly, so that walks of different depths alternating on a CPU mostly
/// cost one read.
#[inline(always)]
fn next_first_read(current: u64, need: u64) -> u64 {
    let want = need + FIRST_READ_MARGIN;
    if want >= current {
        want
    } else {
        current - (current - want) / 16
    }
}

/// One allocation in this many (per CPU) carries a timestamp.
const STAMP_EVERY: u64 = 8;

/// Bytes read beyond what the last walk needed.
const FIRST_READ_MARGIN: u64 = 256;

#[inline(always)]
fn emit_record<const N: usize>(mut ev: Event, w: &WalkBuf, generation: u64, first: u64) {
    let Some(mut slot) = EVENTS.reserve::<Record<N>>(0) else {
        bump(Counter::RingFull);
        return;
    };
    let rec = slot.as_mut_ptr();
    // SAFETY: `rec` points at the reserved record, ours until submitted.
    let r = unsafe { &mut *rec };
    let n = usize::from(ev.nframes);
    let mut i = 0;
    while i < N && i < n {
        r.frames[i] = w.frames[i];
        i += 1;
    }
    if w.generation != generation {
        // Preempted, and the scratch reused meanwhile: keep only the frame
        // that did not come from it.
        r.frames[0] = first;
        ev.nframes = 1;
        ev.flags |= flags::TRUNCATED;
        bump(Counter::StackTruncated);
    }
    put_event(&mut r.event, &ev);
    slot.submit(BPF_RB_NO_WAKEUP.into());
}
