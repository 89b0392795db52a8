//! The entry programs: every allocator call starts here.

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user},
    macros::uprobe,
    programs::{ProbeContext, RetProbeContext},
};
use memtrace_common::{Counter, CxxCtx, Event, func, kind};

use crate::{
    calls::{Call, arg, code_range, current, enter, nested, regs_sp},
    maps::{CXX_CTX, CXX_SEEN, SAMPLE_BYTES, bump, floor_now, global_u64},
    ret::return_probe,
    ring::emit,
    sampling::{maybe_sampled, unsample},
    stack::CXX_CTX_WINDOW,
};

/// The entry program of every allocator function (but malloc and the
/// heap's release functions when `malloc_enter` and `free_enter` are
/// attached to them). The attach cookie says which function fired
/// (`func::*`, low 16 bits) and, for entry-only probes planted after a
/// `sub $n, %rsp`, that `n` (bits 16..24).
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    if floor_now() {
        return 0;
    }
    let _ = entry(&ctx, 0);
    0
}

/// The entry program of malloc: what `alloc_enter` does for it, without
/// reading the attach cookie or dispatching on it (a probe with a return
/// probe sits at the function's entry, so there is no stack offset to
/// read). Mallocs are most of the allocations.
#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    if floor_now() {
        return 0;
    }
    let call = Call {
        f: func::MALLOC,
        size: arg(&ctx, 0),
        arg0: 0,
        arg1: 0,
        cookie: 0,
    };
    let _ = enter(&ctx, call, 0);
    0
}

/// The entry program of free and the other release functions of the heap
/// (operator delete of the allocators that have their own): what
/// `alloc_enter` does for them, without reading the attach cookie (a free
/// is never nested by the rule that needs the probe's stack offset) or
/// dispatching on it. Frees are half of all allocator calls.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    if floor_now() {
        return 0;
    }
    let _ = release(&ctx, kind::FREE, func::FREE);
    0
}

/// Entry and return of the allocator functions that have a return probe,
/// as one uprobe session (kernels 6.13+; used when sampling): the entry
/// half declines the return probe for unsampled calls, which then cost no
/// return trap. Returns 1 to decline. (Written without `#[uprobe]`, whose
/// wrapper discards the return value.)
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub extern "C" fn alloc_session(ctx: *mut core::ffi::c_void) -> u32 {
    session(ProbeContext::new(ctx))
}

#[inline(always)]
pub(crate) fn session(ctx: ProbeContext) -> u32 {
    if floor_now() {
        // The floor of sampling: only the traps no call can avoid.
        return 1;
    }
    // SAFETY: helper reading the address of the probe that fired.
    let ip = unsafe { aya_ebpf::helpers::generated::bpf_get_func_ip(ctx.regs.cast()) };
    // SAFETY: `regs` is the context pointer the kernel passed.
    let rip = unsafe { (*ctx.regs).rip };
    if rip != ip {
        // The return half: the instruction pointer is the return address.
        return_probe(&RetProbeContext::new(ctx.regs.cast()));
        return 0;
    }
    u32::from(!entry(&ctx, ip))
}

/// Dispatch an entry probe; whether its return probe is wanted.
#[inline(always)]
pub(crate) fn entry(ctx: &ProbeContext, session_ip: u64) -> bool {
    // SAFETY: helper reading the cookie of the link that fired.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    let f = cookie as u16;
    let (a0, a1, a2) = (arg(ctx, 0), arg(ctx, 1), arg(ctx, 2));
    let call = |size, arg0, arg1| Call {
        f,
        size,
        arg0,
        arg1,
        cookie,
    };
    match f {
        func::MALLOC | func::VALLOC | func::PVALLOC => enter(ctx, call(a0, 0, 0), session_ip),
        // BPF has no 128-bit multiply for an overflow check, and needs none:
        // an overflowing calloc fails, and failed calls emit nothing.
        func::CALLOC => enter(ctx, call(a0.wrapping_mul(a1), 0, 0), session_ip),
        func::REALLOC => enter(ctx, call(a1, a0, 0), session_ip),
        func::POSIX_MEMALIGN => enter(ctx, call(a2, a0, 0), session_ip),
        // memalign(align, size) and aligned_alloc(align, size).
        func::MEMALIGN | func::ALIGNED_ALLOC => enter(ctx, call(a1, 0, 0), session_ip),
        // mmap(addr, len, prot, flags, ...): keep the flags.
        func::MMAP => enter(ctx, call(a1, arg(ctx, 3), 0), session_ip),
        // mremap(old, old_len, new_len, ...).
        func::MREMAP => enter(ctx, call(a2, a0, a1), session_ip),
        func::FREE => release(ctx, kind::FREE, f),
        func::MUNMAP => release(ctx, kind::MUNMAP, f),
        func::CXX_NEW => cxx_new(ctx, cookie),
        _ => false,
    }
}

/// Entry-only probe on a release function: free(p) and munmap(p, len).
#[inline(always)]
pub(crate) fn release(ctx: &ProbeContext, k: u16, f: u16) -> bool {
    let addr = arg(ctx, 0);
    if addr == 0 {
        return false;
    }
    // With sampling, only frees of sampled blocks matter: most frees end
    // here, at the cost of one array load.
    let sampling = k == kind::FREE && global_u64(&SAMPLE_BYTES) != 0;
    if sampling && !maybe_sampled(addr) {
        return false;
    }
    let Some((tgid, tid)) = current() else {
        return false;
    };
    if nested(tid, regs_sp(ctx.regs)) {
        return false;
    }
    if sampling && !unsample(tgid, addr) {
        return false;
    }
    // No timestamp: it costs ~60 ns here, and userspace places a release
    // between the record before it in the ring and the drain before it.
    let mut ev = Event {
        kind: k,
        func: f,
        tgid,
        tid,
        ..Event::default()
    };
    ev.addr = addr;
    ev.size = arg(ctx, 1);
    emit(&ev);
    false
}

/// C++ operator new: remember its caller and stack for the malloc it makes,
/// unless an outer operator new on this thread already did. The attach
/// cookie says how far the probed instruction's stack pointer sits below
/// the function's entry one, and where the library's code lies.
#[inline(always)]
fn cxx_new(ctx: &ProbeContext, cookie: u64) -> bool {
    let Some((_tgid, tid)) = current() else {
        return false;
    };
    let sp = regs_sp(ctx.regs) + ((cookie >> 16) & 0xff);
    // SAFETY: copied out at once, as in `nested`.
    if let Some(outer) = unsafe { CXX_CTX.get(tid) }
        && outer.sp > sp
        && outer.sp - sp < CXX_CTX_WINDOW
    {
        return false;
    }
    // SAFETY: reads user memory at the stack pointer; a fault returns Err.
    let caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    // SAFETY: `regs` is the context pointer the kernel passed.
    let fp = unsafe { (*ctx.regs).rbp };
    // SAFETY: helper reading the address of the probe that fired.
    let ip = unsafe { aya_ebpf::helpers::generated::bpf_get_func_ip(ctx.regs.cast()) };
    let (lo, hi) = code_range(ip, cookie);
    let rec = CxxCtx {
        sp,
        caller,
        fp,
        lo,
        hi,
    };
    if CXX_CTX.insert(tid, rec, 0).is_err() {
        bump(Counter::InflightFull);
    }
    // SAFETY: a racy store of a constant to a flag only ever set to 1.
    unsafe { core::ptr::write_volatile(&raw mut CXX_SEEN, 1) };
    false
}
