//! memtrace's eBPF programs.
//!
//! Entry uprobes record each allocator call's arguments per thread in
//! `INFLIGHT`; one shared uretprobe (`alloc_ret`) turns the outermost call's
//! return into an event. Calls nested inside another allocator call on the
//! same thread (glibc's realloc(NULL, n) calling malloc, the mmap inside a
//! large malloc, memalign relaying to malloc, free inside realloc(p, 0)) are
//! recognised by their lower stack pointer and never emitted twice.
//!
//! Per-thread entry state lives in `THREADS`, an array indexed by thread id
//! (userspace sizes it to `pid_max`, up to 2^17 slots): a load and a store,
//! no hashing, no lock. Threads with a larger id use `INFLIGHT`, a hash
//! map, instead.
//!
//! Stacks are walked by frame pointers at the return probe, where the
//! instruction pointer is the return address into the allocator's caller
//! and the walk continues from the caller's frame, so no frame is missing.
//! The frames travel in the event's ring record: no stack map, no
//! collisions, no kernel memory that fills up. C++ `operator new` has no
//! frame pointer: its entry probe records its caller (`[rsp]`) and the
//! caller's frame pointer for the malloc it makes.
//!
//! Every event is submitted without a wakeup; userspace drains on a short
//! timer (2 ms for reports, 10 ms for the dashboard; the 16 MiB ring holds
//! ~220 ms of events at 1M events/s).
#![no_std]
#![no_main]
// For `atomic_xadd`: core's atomics have no read-modify-write on BPF.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_user, bpf_send_signal_thread,
    },
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use aya_log_ebpf::warn;
use memtrace_common::{
    COUNTER_COUNT, Counter, CxxCtx, Event, Inflight, Record, SAMPLED_LANE_WORDS, SHORT_FRAMES,
    STACK_DEPTH, SampledKey, flags, func, kind, sampled_lane,
};

/// Ring buffer of [`Event`]s. Size overridden by userspace at load.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Allocator calls between entry and return, one slot per thread id up to
/// `THREAD_LAST` (the size is overridden by userspace at load).
#[map(name = "THREADS")]
static THREADS: Array<Inflight> = Array::with_max_entries(1, 0);

/// Allocator calls of threads whose id is past the end of `THREADS`, keyed
/// by thread id.
#[map(name = "INFLIGHT")]
static INFLIGHT: HashMap<u32, Inflight> = HashMap::with_max_entries(16384, 0);

/// C++ operator new call contexts, keyed by thread id.
#[map(name = "CXX_CTX")]
static CXX_CTX: HashMap<u32, CxxCtx> = HashMap::with_max_entries(16384, 0);

/// Sampled heap blocks still live, by process and address (only with
/// sampling on): frees of other blocks emit nothing. Size overridden at load.
#[map(name = "SAMPLED")]
static SAMPLED: HashMap<SampledKey, u8> = HashMap::with_max_entries(1, 0);

/// Counts of the live sampled blocks by hashed address, four 16-bit lanes a
/// word (`sampled_lane`): most frees are of unsampled blocks, and a lane
/// counting 0 says so for the price of an array load instead of a hash
/// lookup. Userspace maps it to take out the blocks of exited processes.
#[map(name = "SAMPLED_LANES")]
static SAMPLED_LANES: Array<u64> = Array::with_max_entries(SAMPLED_LANE_WORDS, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE`: the array can be mapped into userspace.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Bytes left until the next sample, per CPU (sampling is a Poisson process
/// over the byte stream: any split of the stream samples alike).
#[map(name = "SAMPLER")]
static SAMPLER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for the stack walk: the page of user stack being read.
#[map(name = "WALK")]
static WALK: PerCpuArray<WalkBuf> = PerCpuArray::with_max_entries(1, 0);

/// Loss and activity counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

// Globals written by the loader before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;
#[unsafe(no_mangle)]
static FLOOR_ONLY: u32 = 0;
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;
/// Set once any operator new probe fired: until then, allocation returns
/// skip the C++ context lookup.
#[unsafe(no_mangle)]
static mut CXX_SEEN: u32 = 0;

/// The highest thread id with a slot in `THREADS` (its size minus one).
#[unsafe(no_mangle)]
static THREAD_LAST: u32 = 0;
/// Set once any record went to `INFLIGHT` (a thread id past the end of
/// `THREADS`): until then, nothing needs to look there.
#[unsafe(no_mangle)]
static mut HASH_USED: u32 = 0;

/// Mean bytes between samples; 0: every allocation is traced.
#[unsafe(no_mangle)]
static SAMPLE_BYTES: u64 = 0;

/// log2(1 + i/64) in Q16, for drawing exponential intervals.
static LOG2_FRAC: [u32; 64] = [
    0, 1466, 2909, 4331, 5732, 7112, 8473, 9814, 11136, 12440, 13727, 14996, 16248, 17484, 18704,
    19909, 21098, 22272, 23433, 24579, 25711, 26830, 27936, 29029, 30109, 31178, 32234, 33279,
    34312, 35334, 36346, 37346, 38336, 39316, 40286, 41246, 42196, 43137, 44068, 44990, 45904,
    46809, 47705, 48593, 49472, 50344, 51207, 52063, 52911, 53751, 54584, 55410, 56229, 57040,
    57845, 58643, 59434, 60219, 60997, 61769, 62534, 63294, 64047, 64794,
];

/// A uretprobe's stack pointer is its entry's plus the popped return address.
const RET_SP_DELTA: u64 = 8;
/// How far below an operator new's entry its malloc may return.
const CXX_CTX_WINDOW: u64 = 4096;

#[inline(always)]
fn global_u32(g: &'static u32) -> u32 {
    // SAFETY: reading a global the loader initialised; volatile so the
    // compiler cannot fold the compile-time zero.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
fn global_u64(g: &'static u64) -> u64 {
    // SAFETY: as in `global_u32`.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
fn bump(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; no other writer runs on this CPU meanwhile.
        unsafe { *p += 1 };
    }
}

/// (tgid, tid) of the current task, or None for memtrace itself and when
/// the floor-only configuration is on.
#[inline(always)]
fn current() -> Option<(u32, u32)> {
    if global_u32(&FLOOR_ONLY) != 0 {
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
fn emit(ev: &Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            // SAFETY: the reserved record, ours until submitted.
            put_event(unsafe { &mut *slot.as_mut_ptr() }, ev);
            // Userspace drains on a timer and never sleeps on the ring:
            // a wakeup would cost ~1 µs of irq_work for nobody.
            slot.submit(BPF_RB_NO_WAKEUP.into());
        }
        None => bump(Counter::RingFull),
    }
}

/// Store `v` at `p` as a store of its own. The compiler merges adjacent
/// stores of zeros into a `memset`, which the in-order memory expansion of
/// bpf-linker leaves as a call to a byte-at-a-time loop (~20 ns for 16
/// bytes); volatile stores are never merged.
#[inline(always)]
fn put<T>(p: &mut T, v: T) {
    // SAFETY: `p` is a valid, aligned, exclusive reference.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Copy `ev` into `dst` field by field (see `put`).
#[inline(always)]
fn put_event(dst: &mut Event, ev: &Event) {
    put(&mut dst.kind, ev.kind);
    put(&mut dst.func, ev.func);
    put(&mut dst.flags, ev.flags);
    put(&mut dst.nframes, ev.nframes);
    put(&mut dst.tgid, ev.tgid);
    put(&mut dst.tid, ev.tid);
    put(&mut dst.ts_ns, ev.ts_ns);
    put(&mut dst.addr, ev.addr);
    put(&mut dst.size, ev.size);
    put(&mut dst.old_addr, ev.old_addr);
    put(&mut dst.aux, ev.aux);
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

#[inline(always)]
fn regs_sp(regs: *const aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: `regs` is the context pointer the kernel passed to the program.
    unsafe { (*regs).rsp }
}

/// This thread's slot in `THREADS` (none for thread ids past its end).
#[inline(always)]
fn slot(tid: u32) -> Option<&'static mut Inflight> {
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
fn hashed(tid: u32) -> Option<Inflight> {
    // SAFETY: a racy read of a flag only ever set to 1.
    if unsafe { core::ptr::read_volatile(&raw const HASH_USED) } == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { INFLIGHT.get(tid) }.copied()
}

#[inline(always)]
fn hash_remove(tid: u32) {
    let _ = INFLIGHT.remove(tid);
}

/// `Inflight::skip` values.
mod skip {
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

/// Whether the call recorded in `rec` (this thread's) contains a call of
/// `inner` whose stack pointer is `sp` (and whose return address is at
/// `sp + delta`).
#[inline(always)]
fn covers(rec: &Inflight, sp: u64, inner: u16, delta: u64) -> bool {
    if rec.sp <= sp {
        return false;
    }
    if rec.skip != skip::GONE {
        return true;
    }
    // An unsampled malloc, calloc or aligned allocation calls no other
    // allocator function, only the allocator's own mappings; and its record
    // outlives it. A mapping call is inside it if made by its code.
    if !matches!(inner, func::MMAP | func::MUNMAP | func::MREMAP) {
        return false;
    }
    let (lo, hi) = code_range(rec.arg0, rec.arg1);
    // SAFETY: reads the return address at the stack pointer; a fault
    // returns Err.
    let caller = unsafe { bpf_probe_read_user((sp + delta) as *const u64) }.unwrap_or(0);
    caller >= lo && caller < hi
}

/// Whether an allocator call of `inner` at `sp` is nested in another one
/// in progress on this thread (and belongs to it).
#[inline(always)]
fn nested(tid: u32, sp: u64, inner: u16, delta: u64) -> bool {
    if let Some(s) = slot(tid)
        && s.sp != 0
        && s.tid == tid
    {
        return covers(s, sp, inner, delta);
    }
    hashed(tid).is_some_and(|h| covers(&h, sp, inner, delta))
}

/// The code of the object a probe at address `ip` is in, from its attach
/// cookie (bits 24..44: the probe's offset into its executable segment,
/// 44..64: the segment's size, both in 16-byte units; 0 when unknown).
#[inline(always)]
fn code_range(ip: u64, cookie: u64) -> (u64, u64) {
    let off = ((cookie >> 24) & 0xf_ffff) * 16;
    let size = (cookie >> 44) * 16;
    if size == 0 {
        return (0, 0);
    }
    let lo = ip.wrapping_sub(off);
    (lo, lo.wrapping_add(size))
}

/// A draw from the exponential distribution with mean `mean`:
/// `-mean * ln(U)`, with ln computed from log2 (integer part from the
/// leading zeros, fraction from a 64-entry table) in fixed point.
#[inline(always)]
fn exp_interval(mean: u64) -> u64 {
    // SAFETY: helper without preconditions.
    let r = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } | 1;
    let lz = r.leading_zeros();
    let msb = 31 - lz;
    let frac = ((r << lz) >> 25) & 63;
    let log2_r = (u64::from(msb) << 16) + u64::from(LOG2_FRAC[frac as usize]);
    let neg_log2 = (32u64 << 16) - log2_r;
    // ln 2 in Q16 is 45426.
    let neg_ln = (neg_log2 * 45426) >> 16;
    ((mean >> 4) * neg_ln) >> 12
}

/// Whether an allocation of `size` bytes is sampled (always true when
/// sampling is off). Probability 1 - exp(-size/mean), as tcmalloc does.
#[inline(always)]
fn sampled(size: u64) -> bool {
    let mean = global_u64(&SAMPLE_BYTES);
    if mean == 0 {
        return true;
    }
    let Some(left) = SAMPLER.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot; nothing else runs on this CPU meanwhile.
    unsafe {
        if *left > size {
            *left -= size;
            return false;
        }
        *left = exp_interval(mean).max(1);
    }
    true
}

/// Record an allocator call's entry, unless it is nested in another one.
/// `session_ip`: the probe's address when this is the entry half of a uprobe
/// session (which may decline the return probe), else 0. Returns whether
/// the return probe is wanted.
#[inline(always)]
fn enter(ctx: &ProbeContext, call: Call, session_ip: u64) -> bool {
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
    if let Some(s) = slot(tid) {
        if s.sp != 0 && s.tid == tid && covers(s, sp, f, 0) {
            return false;
        }
        // Free, or a record of a call that is over (its return was never
        // seen, or it had none).
        put_inflight(s, &rec);
        return want;
    }
    // A thread id past the array: the hash map.
    if let Some(h) = hashed(tid) {
        if covers(&h, sp, f, 0) {
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

/// An allocator call's arguments, as its entry probe sees them.
#[derive(Clone, Copy)]
struct Call {
    f: u16,
    size: u64,
    arg0: u64,
    arg1: u64,
    cookie: u64,
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// The entry program of every allocator function (but malloc and the
/// heap's release functions when `malloc_enter` and `free_enter` are
/// attached to them). The attach cookie
/// says which function fired (`func::*`, low 16 bits) and, for entry-only
/// probes planted after a `sub $n, %rsp`, that `n` (bits 16..24).
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    if global_u32(&FLOOR_ONLY) != 0 {
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
    if global_u32(&FLOOR_ONLY) != 0 {
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
    if global_u32(&FLOOR_ONLY) != 0 {
        return 0;
    }
    let _ = release(&ctx, kind::FREE, func::FREE, 0);
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
fn session(ctx: ProbeContext) -> u32 {
    if global_u32(&FLOOR_ONLY) != 0 {
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
fn entry(ctx: &ProbeContext, session_ip: u64) -> bool {
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
        func::FREE => release(ctx, kind::FREE, f, (cookie >> 16) & 0xff),
        func::MUNMAP => release(ctx, kind::MUNMAP, f, (cookie >> 16) & 0xff),
        func::CXX_NEW => cxx_new(ctx, (cookie >> 16) & 0xff),
        _ => false,
    }
}

/// An event for this thread, without stack and timestamp.
#[inline(always)]
fn event(k: u16, f: u16, tgid: u32, tid: u32) -> Event {
    Event {
        kind: k,
        func: f,
        tgid,
        tid,
        ..Event::default()
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Entry-only probe on a release function: free(p) and munmap(p, len).
#[inline(always)]
fn release(ctx: &ProbeContext, k: u16, f: u16, delta: u64) -> bool {
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
    if nested(tid, regs_sp(ctx.regs), f, delta) {
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
/// unless an outer operator new on this thread already did. `delta`: how far
/// the probed instruction's stack pointer sits below the function's entry one.
#[inline(always)]
fn cxx_new(ctx: &ProbeContext, delta: u64) -> bool {
    let Some((_tgid, tid)) = current() else {
        return false;
    };
    let sp = regs_sp(ctx.regs) + delta;
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
    let rec = CxxCtx { sp, caller, fp };
    if CXX_CTX.insert(tid, rec, 0).is_err() {
        bump(Counter::InflightFull);
    }
    // SAFETY: a racy store of a constant to a flag only ever set to 1.
    unsafe { core::ptr::write_volatile(&raw mut CXX_SEEN, 1) };
    false
}

/// Where the stack of an allocation returning at `sp` starts: its innermost
/// frame, the frame pointer to walk on from, and the lowest address that
/// frame pointer may have.
#[inline(always)]
fn stack_start(ctx: &RetProbeContext, tid: u32, sp: u64) -> (u64, u64, u64) {
    // SAFETY: a racy read of a flag only ever set to 1.
    let cxx_seen = unsafe { core::ptr::read_volatile(&raw const CXX_SEEN) } != 0;
    // SAFETY: copied out at once.
    if cxx_seen && let Some(c) = unsafe { CXX_CTX.get(tid) } {
        let c = *c;
        let _ = CXX_CTX.remove(tid);
        if c.sp > sp && c.sp - sp < CXX_CTX_WINDOW {
            return (c.caller, c.fp, c.sp);
        }
    }
    // SAFETY: `regs` is the context pointer the kernel passed; at a return
    // probe the instruction pointer is the return address and the frame
    // pointer the caller's.
    unsafe { ((*ctx.regs).rip, (*ctx.regs).rbp, sp) }
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
    words: [u64; CHUNK_WORDS],
    /// The walk's result, copied into a ring record of the right size.
    frames: [u64; STACK_DEPTH],
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
    let mut n = 1;
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
        frames[n] = ret;
        n += 1;
        fp = next;
    }
    (n, fp >= lo && fp & 7 == 0)
}

/// Emit allocation `ev` with the user stack, in the smallest record that
/// holds it.
#[inline(always)]
fn finish(ctx: &RetProbeContext, mut ev: Event, tid: u32, sp: u64) {
    let (first, fp, lo) = stack_start(ctx, tid, sp);
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
    let mut need = 0;
    let (n, truncated) = walk_in(&mut w.frames, fp, lo, &mut w.words, w.first_read, &mut need);
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

/// Linux returns -4095..-1 from failed mmap/mremap system calls.
#[inline(always)]
fn is_err_ptr(v: u64) -> bool {
    v > u64::MAX - 4095
}

/// The one return probe of every allocator function.
#[uretprobe]
pub fn alloc_ret(ctx: RetProbeContext) -> u32 {
    return_probe(&ctx);
    0
}

#[inline(always)]
fn return_probe(ctx: &RetProbeContext) -> u32 {
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
            rec
        }
        _ => match hashed(tid) {
            Some(h) => {
                if h.sp.wrapping_add(RET_SP_DELTA) != sp {
                    return 0;
                }
                hash_remove(tid);
                h
            }
            None => {
                bump(Counter::ReturnWithoutEntry);
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

#[inline(always)]
fn remember_sampled(ctx: &RetProbeContext, tgid: u32, addr: u64) {
    let key = SampledKey {
        tgid,
        _pad: 0,
        addr,
    };
    match SAMPLED.insert(key, 1u8, BPF_NOEXIST) {
        Ok(()) => count_lane(addr, 1),
        // Already there (its free was missed): counted once, as it should.
        Err(e) if i64::from(e) == -EEXIST => {}
        Err(_) => {
            bump(Counter::SampledFull);
            warn!(
                ctx,
                "memtrace: sampled-address map full: a free will be missed"
            );
        }
    }
}

/// Forget the sampled block of `tgid` at `addr`; whether there was one.
#[inline(always)]
fn unsample(tgid: u32, addr: u64) -> bool {
    let key = SampledKey {
        tgid,
        _pad: 0,
        addr,
    };
    if SAMPLED.remove(key).is_err() {
        return false;
    }
    count_lane(addr, u64::MAX);
    true
}

/// Whether `addr` may be a live sampled block (its lane counts any).
#[inline(always)]
fn maybe_sampled(addr: u64) -> bool {
    let (word, shift) = sampled_lane(addr);
    SAMPLED_LANES
        .get(word)
        .is_none_or(|w| (*w >> shift) & 0xffff != 0)
}

/// Add `delta` (1, or u64::MAX for -1) to the lane of `addr`. The word is
/// the exact sum of its lanes' counts shifted into place, and a count only
/// drops for a block it counted, so no lane ever under- or overflows.
#[inline(always)]
fn count_lane(addr: u64, delta: u64) {
    let (word, shift) = sampled_lane(addr);
    if let Some(p) = SAMPLED_LANES.get_ptr_mut(word) {
        // SAFETY: `p` points at the array's value, valid and aligned for
        // the program's run; the add is atomic against other CPUs and
        // userspace (BPF has no `AtomicU64::fetch_add`: the intrinsic is
        // what it would call, and compiles to BPF's atomic add).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p,
                delta << shift,
            )
        };
    }
}

/// `BPF_NOEXIST` and the error of an insert that finds its key.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;

/// realloc with sampling: the old block matters if it was sampled, the new
/// one if this call was.
#[inline(always)]
fn sampled_realloc(
    ctx: &RetProbeContext,
    rec: &Inflight,
    ret: u64,
    keep_new: bool,
    tgid: u32,
    tid: u32,
    sp: u64,
) -> u32 {
    let old = rec.arg0;
    let freed = ret != 0 || rec.size == 0;
    let old_sampled = old != 0 && freed && unsample(tgid, old);
    let mut ev = event(kind::ALLOC, func::REALLOC, tgid, tid);
    ev.size = rec.size;
    if ret != 0 && keep_new {
        ev.addr = ret;
        if old_sampled {
            ev.kind = kind::REALLOC;
            ev.old_addr = old;
        }
        remember_sampled(ctx, tgid, ret);
        finish(ctx, ev, tid, sp);
    } else if old_sampled {
        ev.kind = kind::FREE;
        ev.addr = old;
        emit(&ev);
    }
    0
}

/// SIGCHLD, the signal `loader_stop` sends: memtrace's ptrace stops the
/// thread on it and swallows it; should memtrace die in that instant, the
/// signal is delivered, and its default action is to be ignored (a handler
/// sees a spurious SIGCHLD, which `waitpid(WNOHANG)` loops tolerate).
/// Real SIGCHLDs carry a CLD_* code, never SI_KERNEL.
const SIGCHLD: u32 = 17;

/// The dynamic loader's `_dl_debug_state` (its debugger hook): called after
/// it mapped new objects (at start-up and in every `dlopen`), before any of
/// their code runs. For the one process `report -- CMD` launched (and
/// ptrace-seized), stop the calling thread: memtrace sees the SIGCHLD as a
/// ptrace signal stop, attaches to any allocator among the new objects,
/// and resumes the thread without delivering the signal. Nobody else is
/// ever signalled.
#[uprobe]
pub fn loader_stop(_ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let target = global_u32(&TARGET_TGID);
    if target == 0 || (id >> 32) as u32 != target {
        return 0;
    }
    // SAFETY: helper without memory arguments; it signals the current thread.
    unsafe { bpf_send_signal_thread(SIGCHLD) };
    0
}

/// A process replaced its image: its old allocations are gone. `addr` is
/// the thread id that called exec (it differs from the process id when a
/// thread other than the leader did).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_exec(ctx: RawTracePointContext) -> u32 {
    let old_tid: u64 = ctx.arg(1);
    // What the thread recorded belongs to the old image.
    forget_thread(bpf_get_current_pid_tgid() as u32);
    process_event(kind::EXEC, false, old_tid & 0xffff_ffff)
}

/// A thread exited; `group_dead` (second argument, kernels 6.16+) says it
/// was the process's last.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_exit(ctx: RawTracePointContext) -> u32 {
    forget_thread(bpf_get_current_pid_tgid() as u32);
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff == 0 {
        return 0;
    }
    process_event(kind::EXIT, false, 0)
}

/// Fallback for kernels whose sched_process_exit has no `group_dead`: the
/// leader's exit stands for the process's.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_exit_leader(_ctx: RawTracePointContext) -> u32 {
    forget_thread(bpf_get_current_pid_tgid() as u32);
    process_event(kind::EXIT, true, 0)
}

/// Drop the call state of thread `tid`, which exited or exec'd. A thread
/// can die inside an allocator call (another thread called exit, a kill):
/// the record would otherwise outlive it, and a later thread given the same
/// id would have its calls taken for calls nested in it, and dropped.
#[inline(always)]
fn forget_thread(tid: u32) {
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

#[inline(always)]
fn process_event(k: u16, leader_only: bool, aux: u64) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if leader_only && tgid != tid {
        return 0;
    }
    let target = global_u32(&TARGET_TGID);
    if (target != 0 && target != tgid) || tgid == global_u32(&SELF_TGID) {
        return 0;
    }
    let mut ev = event(k, func::NONE, tgid, tid);
    ev.ts_ns = now();
    ev.addr = aux;
    // The command name, so processes that exit before userspace reads
    // /proc still have one: 16 bytes in `old_addr` and `aux`.
    if let Ok(comm) = bpf_get_current_comm() {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&comm[..8]);
        hi.copy_from_slice(&comm[8..16]);
        ev.old_addr = u64::from_ne_bytes(lo);
        ev.aux = u64::from_ne_bytes(hi);
    }
    emit(&ev);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
