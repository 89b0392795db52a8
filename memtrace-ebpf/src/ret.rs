//! The return program: an allocator call's result becomes an event.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::uretprobe, programs::RetProbeContext};
use aya_log_ebpf::warn;
use memtrace_common::{Counter, Inflight, func, kind};

use crate::{
    calls::{RET_SP_DELTA, current, hash_remove, hashed, regs_sp, slot},
    maps::{INFLIGHT, SAMPLE_BYTES, bump, global_u64},
    ring::{emit, event, put},
    sampling::{remember_sampled, sampled_realloc},
    stack::finish,
};

/// Linux returns -4095..-1 from failed mmap/mremap system calls.
#[inline(always)]
fn is_err_ptr(v: u64) -> bool {
    v > u64::MAX - 4095
}

/// Whether a return without a recorded entry is the second return probe
/// of one return: an allocator function that tail-jumps to another
/// (glibc's realloc(NULL, n) to malloc, reallocarray to realloc) returns
/// once through both return probes, innermost first, at the same stack
/// pointer. The first took the record (the outer call's was overwritten by
/// the inner one's, at the same stack pointer) and left that stack pointer.
#[inline(always)]
fn tail_called(tid: u32, sp: u64) -> bool {
    slot(tid).is_some_and(|s| s.tid == tid && s.sp == 0 && s.arg1 == sp)
}

/// The one return probe of every allocator function.
#[uretprobe]
pub fn alloc_ret(ctx: RetProbeContext) -> u32 {
    return_probe(&ctx);
    0
}

#[inline(always)]
pub(crate) fn return_probe(ctx: &RetProbeContext) -> u32 {
    let Some((tgid, tid)) = current() else {
        return 0;
    };
    let sp = regs_sp(ctx.regs);
    let rec = match slot(tid) {
        Some(s) if s.sp != 0 && s.tid == tid => {
            if s.sp.wrapping_add(RET_SP_DELTA) != sp {
                // The return of a call nested inside the recorded one.
                return 0;
            }
            let rec = *s;
            s.sp = 0;
            // Where it returned, for a second return probe on the same
            // return (see `tail_called`).
            put(&mut s.arg1, sp);
            rec
        }
        _ => match hashed(tid) {
            Some(h) if h.sp != 0 => {
                if h.sp.wrapping_add(RET_SP_DELTA) != sp {
                    return 0;
                }
                // Kept, taken, as in the slot: the element stays until the
                // thread's next call or its exit.
                let taken = Inflight {
                    sp: 0,
                    arg1: sp,
                    ..h
                };
                if INFLIGHT.insert(tid, taken, 0).is_err() {
                    hash_remove(tid);
                }
                h
            }
            Some(h) => {
                // A taken record: the second return probe of a tail call
                // returns where the first did.
                if h.arg1 != sp {
                    bump(Counter::ReturnWithoutEntry);
                }
                return 0;
            }
            None => {
                if !tail_called(tid, sp) {
                    bump(Counter::ReturnWithoutEntry);
                }
                return 0;
            }
        },
    };
    let ret: u64 = ctx.ret();
    let sampling = global_u64(&SAMPLE_BYTES) != 0;
    let keep_new = rec.skip == 0;
    if sampling && rec.func == func::REALLOC {
        return sampled_realloc(ctx, &rec, ret, keep_new, tgid, tid, sp);
    }
    if !keep_new {
        return 0;
    }

    let mut ev = event(kind::ALLOC, rec.func, tgid, tid);
    ev.size = rec.size;
    match rec.func {
        func::POSIX_MEMALIGN => {
            if ret as u32 != 0 {
                return 0;
            }
            // SAFETY: reads the user's `*memptr`; a fault returns Err.
            match unsafe { bpf_probe_read_user(rec.arg0 as *const u64) } {
                Ok(p) => ev.addr = p,
                Err(_) => {
                    bump(Counter::ReadFail);
                    warn!(
                        &ctx,
                        "memtrace: could not read *memptr after posix_memalign"
                    );
                    return 0;
                }
            }
        }
        func::REALLOC => {
            if ret == 0 {
                // glibc: realloc(p, 0) frees p and returns NULL; any other
                // NULL is a failure that leaves p allocated.
                if rec.size == 0 && rec.arg0 != 0 {
                    ev.kind = kind::FREE;
                    ev.addr = rec.arg0;
                    emit(&ev);
                }
                return 0;
            }
            ev.addr = ret;
            if rec.arg0 != 0 {
                ev.kind = kind::REALLOC;
                ev.old_addr = rec.arg0;
            }
        }
        func::MMAP => {
            if is_err_ptr(ret) {
                return 0;
            }
            ev.kind = kind::MMAP;
            ev.addr = ret;
            ev.aux = rec.arg0;
        }
        func::MREMAP => {
            if is_err_ptr(ret) {
                return 0;
            }
            ev.kind = kind::MREMAP;
            ev.addr = ret;
            ev.old_addr = rec.arg0;
            ev.aux = rec.arg1;
        }
        _ => {
            if ret == 0 {
                return 0;
            }
            ev.addr = ret;
        }
    }
    if sampling && ev.kind == kind::ALLOC {
        remember_sampled(ctx, tgid, ev.addr);
    }
    finish(ctx, ev, tid, sp);
    0
}
