//! Allocator calls in progress, per thread. An entry probe records the
//! call's arguments; the return probe of the outermost call takes them.
//! Calls nested inside another allocator call on the same thread (glibc's
//! realloc(NULL, n) calling malloc, the mmap inside a large malloc,
//! memalign relaying to malloc, free inside realloc(p, 0)) are recognised
//! by their lower stack pointer and never emitted twice.
//!
//! The state lives in `THREADS`, an array indexed by thread id (userspace
//! sizes it to `pid_max`, up to 2^17 slots): a load and a store, no
//! hashing, no lock. Threads with a larger id use `INFLIGHT`, a hash map,
//! instead.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    programs::ProbeContext,
};
use aya_log_ebpf::warn;
use memtrace_common::{Counter, Inflight, func};

use crate::{
    maps::{
        CXX_CTX, CXX_SEEN, HASH_USED, INFLIGHT, SELF_TGID, THREAD_LAST, THREADS, bump, floor_now,
        global_u32,
    },
    ring::put,
    sampling::sampled,
};

/// mmap flags (x86-64).
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_STACK: u64 = 0x2_0000;

/// A uretprobe's stack pointer is its entry's plus the popped return address.
pub(crate) const RET_SP_DELTA: u64 = 8;

/// (tgid, tid) of the current task, or None for memtrace itself and when
/// the floor-only configuration is on.
#[inline(always)]
pub(crate) fn current() -> Option<(u32, u32)> {
    if floor_now() {
        return None;
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == global_u32(&SELF_TGID) {
        return None;
    }
    Some((tgid, id as u32))
}

#[inline(always)]
pub(crate) fn regs_sp(regs: *const aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: `regs` is the context pointer the kernel passed to the program.
    unsafe { (*regs).rsp }
}

#[inline(always)]
pub(crate) fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// An allocator call's arguments, as its entry probe sees them.
#[derive(Clone, Copy)]
pub(crate) struct Call {
    pub(crate) f: u16,
    pub(crate) size: u64,
    pub(crate) arg0: u64,
    pub(crate) arg1: u64,
    pub(crate) cookie: u64,
}

/// Copy `rec` into `dst` field by field (see `put`).
#[inline(always)]
fn put_inflight(dst: &mut Inflight, rec: &Inflight) {
    put(&mut dst.func, rec.func);
    put(&mut dst.skip, rec.skip);
    put(&mut dst.tid, rec.tid);
    put(&mut dst.sp, rec.sp);
    put(&mut dst.size, rec.size);
    put(&mut dst.arg0, rec.arg0);
    put(&mut dst.arg1, rec.arg1);
}

/// This thread's slot in `THREADS` (none for thread ids past its end).
#[inline(always)]
pub(crate) fn slot(tid: u32) -> Option<&'static mut Inflight> {
    if tid > global_u32(&THREAD_LAST) {
        return None;
    }
    let p = THREADS.get_ptr_mut(tid)?;
    // SAFETY: a pointer into the array's value memory, valid for the
    // program's run; the slot is this thread's alone (indexed by its id),
    // and a thread runs one program at a time.
    Some(unsafe { &mut *p })
}

/// This thread's call in the fallback hash map, if any may be there.
#[inline(always)]
pub(crate) fn hashed(tid: u32) -> Option<Inflight> {
    // SAFETY: a racy read of a flag only ever set to 1.
    if unsafe { core::ptr::read_volatile(&raw const HASH_USED) } == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { INFLIGHT.get(tid) }.copied()
}

#[inline(always)]
pub(crate) fn hash_remove(tid: u32) {
    let _ = INFLIGHT.remove(tid);
}

/// `Inflight::skip` values.
pub(crate) mod skip {
    /// A traced call: its return probe will come.
    pub const NO: u16 = 0;
    /// An unsampled call whose return probe still comes (only its nesting
    /// matters).
    pub const RETURNS: u16 = 1;
    /// An unsampled call without return probe (a uprobe session that
    /// declined it): the record outlives the call; `arg0` is the probe's
    /// address and `arg1` its cookie (see `code_range`).
    pub const GONE: u16 = 2;
}

/// Whether the call recorded in `rec` (this thread's) contains a call whose
/// stack pointer is `sp`. `mapping`: the inner call is an anonymous mmap
/// that is not a stack, the only kind an allocator makes inside malloc.
#[inline(always)]
fn covers(rec: &Inflight, sp: u64, mapping: bool) -> bool {
    if rec.sp <= sp {
        return false;
    }
    if rec.skip != skip::GONE {
        return true;
    }
    // An unsampled malloc, calloc or aligned allocation calls no other
    // allocator function, only the allocator's own mappings; and its record
    // outlives it, so a deeper call made after it returned must not be
    // taken for one inside it. What it maps is anonymous and never a stack
    // (glibc maps thread and posix_spawn stacks with MAP_STACK, right after
    // whatever malloc came before), and mapped by the allocator's code.
    // Its unmappings are not taken for inside it: they unmap memory
    // memtrace never tracked, which userspace ignores.
    if !mapping {
        return false;
    }
    let (lo, hi) = code_range(rec.arg0, rec.arg1);
    // SAFETY: reads the return address at the stack pointer; a fault
    // returns Err.
    let caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    caller >= lo && caller < hi
}

/// Whether a release (free, munmap) at `sp` is nested in an allocator call
/// in progress on this thread (and belongs to it).
#[inline(always)]
pub(crate) fn nested(tid: u32, sp: u64) -> bool {
    if let Some(s) = slot(tid)
        && s.sp != 0
        && s.tid == tid
    {
        return covers(s, sp, false);
    }
    hashed(tid).is_some_and(|h| covers(&h, sp, false))
}

/// The executable segment of the object a probe at address `ip` is in,
/// from its attach cookie (`memtrace_common::probe_cookie`); (0, 0) when
/// unknown.
#[inline(always)]
pub(crate) fn code_range(ip: u64, cookie: u64) -> (u64, u64) {
    let off = (cookie >> 24) & 0xff_ffff;
    let size = (cookie >> 48) * 256;
    if size == 0 {
        return (0, 0);
    }
    let lo = ip.wrapping_sub(off);
    (lo, lo.wrapping_add(size))
}

/// Record an allocator call's entry, unless it is nested in another one.
/// `session_ip`: the probe's address when this is the entry half of a uprobe
/// session (which may decline the return probe), else 0. Returns whether
/// the return probe is wanted.
#[inline(always)]
pub(crate) fn enter(ctx: &ProbeContext, call: Call, session_ip: u64) -> bool {
    let Some((_tgid, tid)) = current() else {
        return false;
    };
    let Call {
        f,
        size,
        arg0,
        arg1,
        cookie,
    } = call;
    let sp = regs_sp(ctx.regs);
    // Unsampled calls are still recorded, marked, so the calls nested in
    // them (glibc's mmap inside a large malloc) are still recognised.
    let is_heap = f != func::MMAP && f != func::MREMAP;
    let mut rec = Inflight {
        func: f,
        skip: skip::NO,
        tid,
        sp,
        size,
        arg0,
        arg1,
    };
    if is_heap && !sampled(size) {
        rec.skip = skip::RETURNS;
        // realloc's return is always needed: its old block may be sampled.
        if session_ip != 0 && f != func::REALLOC {
            rec.skip = skip::GONE;
            // What `code_range` needs.
            rec.arg0 = session_ip;
            rec.arg1 = cookie;
        }
    }
    let want = rec.skip != skip::GONE;
    let mapping = f == func::MMAP && arg0 & MAP_ANONYMOUS != 0 && arg0 & MAP_STACK == 0;
    if let Some(s) = slot(tid) {
        if s.sp != 0 && s.tid == tid && covers(s, sp, mapping) {
            return false;
        }
        // Free, or a record of a call that is over (its return was never
        // seen, or it had none).
        put_inflight(s, &rec);
        return want;
    }
    // A thread id past the array: the hash map.
    if let Some(h) = hashed(tid) {
        if covers(&h, sp, mapping) {
            return false;
        }
        hash_remove(tid);
    }
    // SAFETY: a racy store of a constant to a flag only ever set to 1.
    unsafe { core::ptr::write_volatile(&raw mut HASH_USED, 1) };
    if INFLIGHT.insert(tid, rec, 0).is_err() {
        bump(Counter::InflightFull);
        warn!(
            ctx,
            "memtrace: in-flight map full (thread {}): a call was not traced", tid
        );
        return false;
    }
    want
}

/// Drop the call state of thread `tid`, which exited or exec'd. A thread
/// can die inside an allocator call (another thread called exit, a kill):
/// the record would otherwise outlive it, and a later thread given the same
/// id would have its calls taken for calls nested in it, and dropped.
#[inline(always)]
pub(crate) fn forget_thread(tid: u32) {
    if let Some(s) = slot(tid) {
        put(&mut s.sp, 0);
    }
    // SAFETY: racy reads of flags only ever set to 1.
    if unsafe { core::ptr::read_volatile(&raw const HASH_USED) } != 0 {
        hash_remove(tid);
    }
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(&raw const CXX_SEEN) } != 0 {
        let _ = CXX_CTX.remove(tid);
    }
}
