//! The wire contract between memtrace's eBPF programs and its userspace.
//!
//! Everything here is `#[repr(C)]`, fixed width, explicitly padded, and
//! checked for size at compile time. No `bool`, `Option` or Rust enums cross
//! the ring buffer: kinds are plain integers, decoded in userspace with
//! explicit checks.
#![no_std]

use core::mem::size_of;

/// Name of the ring buffer carrying [`Event`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-thread map holding allocator entry state until return.
pub const MAP_INFLIGHT: &str = "INFLIGHT";
/// Name of the per-thread map holding the C++ `operator new` call context.
pub const MAP_CXX_CTX: &str = "CXX_CTX";
/// Name of the set of live sampled blocks, keyed by [`SampledKey`]
/// (sampling only).
pub const MAP_SAMPLED: &str = "SAMPLED";
/// Name of the counting filter in front of [`MAP_SAMPLED`]: an array of
/// [`SAMPLED_LANE_WORDS`] words, each holding four 16-bit counts of the live
/// sampled blocks whose address hashes to that lane ([`sampled_lane`]). A
/// free whose lane counts 0 is not of a sampled block, without a hash
/// lookup. Mapped writable by userspace, which takes out the blocks of
/// processes that exited.
pub const MAP_SAMPLED_LANES: &str = "SAMPLED_LANES";
/// Words of [`MAP_SAMPLED_LANES`] (128 KiB: stays in cache).
pub const SAMPLED_LANE_WORDS: u32 = 1 << 14;

/// The word of [`MAP_SAMPLED_LANES`] and the shift of the 16-bit count in
/// it that heap address `addr` belongs to.
#[inline(always)]
pub fn sampled_lane(addr: u64) -> (u32, u64) {
    // Blocks are 16-byte aligned: hash the address above those bits.
    let h = (addr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 16);
    ((h >> 2) as u32, (h & 3) * 16)
}

/// Key of [`MAP_SAMPLED`]: a process and a heap address (the same address
/// is live in a parent and its forked child, and may be reused by another
/// process).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampledKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}
const _: () = assert!(size_of::<SampledKey>() == 16);
/// Name of the hash map of call sites inside allocator libraries (strdup's
/// call to malloc): key [`lib_site_key`], value [`lib_site_value`].
pub const MAP_LIB_SITES: &str = "LIB_SITES";
/// Entries of [`MAP_LIB_SITES`], over all libraries.
pub const LIB_SITES_MAX: u32 = 32768;
/// How many library functions deep an allocation is followed out of the
/// library (realpath → strdup → malloc is 2).
pub const LIB_DEPTH: usize = 8;

/// The attach cookie of an allocator probe: the function (`func::*`, bits
/// 0..16), how far the probed instruction's stack pointer sits below the
/// entry one (bits 16..24), the probe's byte offset into its executable
/// segment (24..48) and the segment's size in 256-byte units (48..64; 0
/// when the offset or size does not fit).
pub const fn probe_cookie(func: u16, sp_delta: u64, seg_offset: u64, seg_size: u64) -> u64 {
    let units = seg_size.div_ceil(256);
    let code = if seg_offset < 1 << 24 && units < 1 << 16 {
        seg_offset << 24 | units << 48
    } else {
        0
    };
    func as u64 | (sp_delta & 0xff) << 16 | code
}

/// Key of [`MAP_LIB_SITES`]: the library's segment size in 256-byte units
/// (from the cookie) and a return address's offset into the segment.
pub const fn lib_site_key(seg_units: u64, ra_offset: u64) -> u64 {
    seg_units << 32 | (ra_offset & 0xffff_ffff)
}

/// Value of [`MAP_LIB_SITES`]: how far above the stack pointer after the
/// return the calling function's frame ends (its return address is the
/// word below; low 16 bits), and where it saved its caller's frame pointer
/// relative to that (high 16 bits, signed; 0: not saved).
pub const fn lib_site_value(cfa: u16, rbp_at: i16) -> u32 {
    cfa as u32 | (rbp_at as u16 as u32) << 16
}

/// Name of the one-entry array saying where the traced process's own
/// executable code lies, when that executable has call sites in
/// [`MAP_LIB_SITES`] (built without frame pointers): [`ExeCode`].
pub const MAP_EXE_CODE: &str = "EXE_CODE";

/// Where a process's executable segment is mapped and the key of its call
/// sites in [`MAP_LIB_SITES`] (`tgid` 0: none), and the generation of
/// [`MAP_LIB_SITES`]'s contents.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExeCode {
    /// The process.
    pub tgid: u32,
    /// Bumped by userspace after each change to [`MAP_LIB_SITES`], for any
    /// process: the eBPF side's per-CPU cache of sites looked up holds
    /// entries of the current generation only.
    pub sites_gen: u32,
    /// The segment's first byte in memory (its `p_vaddr` relocated).
    pub lo: u64,
    /// Its end.
    pub hi: u64,
    /// Its size in 256-byte units: the high half of its sites' keys.
    pub units: u64,
}
const _: () = assert!(size_of::<ExeCode>() == 32);

/// Global: mean bytes between samples (0: trace every allocation).
pub const GLOBAL_SAMPLE_BYTES: &str = "SAMPLE_BYTES";
/// Name of the per-thread array of allocator calls in progress (indexed by
/// thread id; `MAP_INFLIGHT` takes the thread ids past its end).
pub const MAP_THREADS: &str = "THREADS";
/// Name of the per-CPU array of loss counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Global: tgid of memtrace itself; its own allocations are never traced.
pub const GLOBAL_SELF_TGID: &str = "SELF_TGID";
/// Global: [`floor`] mode: whether the eBPF programs return at once (the
/// overhead "floor" configuration of `cargo xtask bench`).
pub const GLOBAL_FLOOR_ONLY: &str = "FLOOR_ONLY";
/// Name of the one-word array that switches the programs between the floor
/// and tracing in [`floor::PHASED`] mode (nonzero: the floor).
pub const MAP_PHASE: &str = "PHASE";

/// Values of [`GLOBAL_FLOOR_ONLY`].
pub mod floor {
    /// Trace.
    pub const OFF: u32 = 0;
    /// Return at once: only the uprobe traps cost.
    pub const ON: u32 = 1;
    /// As [`super::MAP_PHASE`] says, switched at run time: the benchmark
    /// measures both within one run.
    pub const PHASED: u32 = 2;
}
/// Global: the highest thread id with a slot in [`MAP_THREADS`].
pub const GLOBAL_THREAD_LAST: &str = "THREAD_LAST";
/// Global: when nonzero, process events (exec/exit) are only emitted for the
/// tgid stored in [`GLOBAL_TARGET_TGID`].
pub const GLOBAL_TARGET_TGID: &str = "TARGET_TGID";
/// Map: further processes of `report -- CMD --children` (tgid →
/// [`TARGET_OWN_IMAGE`] or [`TARGET_SAME_IMAGE`]), whose
/// process events are emitted and whose loader hook stops them, as for
/// [`GLOBAL_TARGET_TGID`]'s.
pub const MAP_TARGETS: &str = "TARGETS";
/// Entries of [`MAP_TARGETS`]: how many child processes `--children` follows.
pub const TARGETS_MAX: u32 = 1024;
/// A [`MAP_TARGETS`] value: the child runs an image of its own (it exec'd).
pub const TARGET_OWN_IMAGE: u8 = 1;
/// A [`MAP_TARGETS`] value: the child still runs the command's image (forked
/// from it, no exec since), at the same addresses: `EXE_CODE`'s call sites
/// apply to it too.
pub const TARGET_SAME_IMAGE: u8 = 2;

/// Maximum depth of a captured user stack.
pub const STACK_DEPTH: usize = 64;

/// Kind of an [`Event`] (`Event::kind`).
pub mod kind {
    /// A heap block was returned by an allocator function (`func` says which).
    pub const ALLOC: u16 = 1;
    /// A heap block was released (`free`, or `realloc(p, 0)`).
    pub const FREE: u16 = 2;
    /// `realloc(old_addr, size)` returned `addr` (nonzero: success).
    pub const REALLOC: u16 = 3;
    /// `mmap` returned `addr` for `size` bytes; `aux` holds the flags.
    pub const MMAP: u16 = 4;
    /// `munmap(addr, size)` succeeded or was attempted.
    pub const MUNMAP: u16 = 5;
    /// `mremap(old_addr, old_size, size)` returned `addr`.
    pub const MREMAP: u16 = 6;
    /// The process `tgid` called exec: its old image is gone. `addr`: the
    /// thread that called exec; `old_addr`+`aux`: the new command name.
    pub const EXEC: u16 = 7;
    /// The last thread of process `tgid` exited. `old_addr`+`aux`: its
    /// command name (16 bytes, NUL-padded).
    pub const EXIT: u16 = 8;
    /// Highest kind value understood by this version.
    pub const MAX: u16 = EXIT;
}

/// Which allocator entry point produced an [`Event`] (`Event::func`).
pub mod func {
    pub const NONE: u16 = 0;
    pub const MALLOC: u16 = 1;
    pub const CALLOC: u16 = 2;
    pub const REALLOC: u16 = 3;
    pub const FREE: u16 = 4;
    pub const POSIX_MEMALIGN: u16 = 5;
    pub const ALIGNED_ALLOC: u16 = 6;
    pub const MEMALIGN: u16 = 7;
    pub const VALLOC: u16 = 8;
    pub const PVALLOC: u16 = 9;
    pub const MMAP: u16 = 10;
    pub const MUNMAP: u16 = 11;
    pub const MREMAP: u16 = 12;
    pub const CXX_NEW: u16 = 13;
    pub const MAX: u16 = CXX_NEW;
}

/// `Event::flags` bits.
pub mod flags {
    /// The stack was deeper than [`super::STACK_DEPTH`] frames: only the
    /// innermost ones were kept.
    pub const TRUNCATED: u16 = 1;
}

/// One record on the ring buffer. Every kind uses the same layout; fields a
/// kind does not use are zero. Allocation records are a [`Record`]: this
/// header followed by the user stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u16,
    pub func: u16,
    pub flags: u16,
    /// How many of a [`Record`]'s frames are valid (0 for other records).
    pub nframes: u16,
    /// Process (thread group) id, as the root PID namespace sees it.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// `bpf_ktime_get_ns()` at the event, or 0: releases, and all but one
    /// allocation in 8 on a CPU, are not timestamped by the kernel
    /// (userspace places them after the timestamped record before them).
    pub ts_ns: u64,
    /// Address returned or released.
    pub addr: u64,
    /// Size requested (bytes).
    pub size: u64,
    /// realloc/mremap: the old address.
    pub old_addr: u64,
    /// mremap: old length; mmap: flags.
    pub aux: u64,
}

pub const EVENT_SIZE: usize = 56;
const _: () = assert!(size_of::<Event>() == EVENT_SIZE);

/// An allocation record: the event and the allocating user stack,
/// innermost frame first (the return address into the allocator's caller),
/// walked by frame pointers. Records come in two sizes, [`SHORT_FRAMES`]
/// and [`STACK_DEPTH`] frames, the smallest that holds the stack (ring
/// reservations have a fixed size); `event.nframes` says how much of
/// `frames` is valid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Record<const N: usize> {
    pub event: Event,
    pub frames: [u64; N],
}

/// Frames of the short record, enough for most stacks.
pub const SHORT_FRAMES: usize = 16;
pub const SHORT_RECORD_SIZE: usize = EVENT_SIZE + 8 * SHORT_FRAMES;
pub const RECORD_SIZE: usize = EVENT_SIZE + 8 * STACK_DEPTH;
const _: () = assert!(size_of::<Record<SHORT_FRAMES>>() == SHORT_RECORD_SIZE);
const _: () = assert!(size_of::<Record<STACK_DEPTH>>() == RECORD_SIZE);

/// Entry state of an allocator call, kept per thread until its return probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    /// `func::*` of the outermost allocator call on this thread.
    pub func: u16,
    /// Nonzero when the call was not sampled (only its nesting matters).
    pub skip: u16,
    /// The thread this record belongs to.
    pub tid: u32,
    /// Stack pointer at entry; nested calls have a lower one. 0: no call.
    pub sp: u64,
    /// Requested size.
    pub size: u64,
    /// realloc: old pointer; posix_memalign: `memptr`; mremap: old address;
    /// mmap: flags.
    pub arg0: u64,
    /// mremap: old length. Once the return probe took the record (`sp`
    /// 0): the stack pointer it returned at.
    pub arg1: u64,
}
const _: () = assert!(size_of::<Inflight>() == 40);

/// Call context of a C++ `operator new` (which has no frame pointer):
/// its caller, and its caller's frame pointer, for the stack of the malloc
/// it calls; and where the C++ runtime's code lies, whose own functions
/// that call operator new (`std::string`'s `_M_create`, ...) the stack
/// steps out of.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CxxCtx {
    /// Stack pointer at operator new's entry (where `caller` sits).
    pub sp: u64,
    /// Return address into operator new's caller.
    pub caller: u64,
    /// The caller's frame pointer.
    pub fp: u64,
    /// The executable segment of the library holding the probed operator
    /// new, [lo, hi) (both 0 when unknown).
    pub lo: u64,
    pub hi: u64,
}
const _: () = assert!(size_of::<CxxCtx>() == 40);

/// Indexes into the [`MAP_COUNTERS`] per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `bpf_ringbuf_reserve` failed: the ring was full, an event was lost.
    RingFull = 0,
    /// An insert into [`MAP_INFLIGHT`] failed: a call was not traced.
    InflightFull = 1,
    /// A stack was deeper than [`STACK_DEPTH`]: its outer frames were cut.
    StackTruncated = 2,
    /// A return probe found no matching entry (the call started before
    /// attach, or its entry was lost).
    ReturnWithoutEntry = 3,
    /// Reading `*memptr` after posix_memalign failed.
    ReadFail = 4,
    /// A sampled block could not be remembered (the SAMPLED map was full):
    /// its free will not be seen.
    SampledFull = 5,
}
pub const COUNTER_COUNT: u32 = 6;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::RingFull,
        Counter::InflightFull,
        Counter::StackTruncated,
        Counter::ReturnWithoutEntry,
        Counter::ReadFail,
        Counter::SampledFull,
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data: repr(C), only integer fields, no padding holes
    // that are not explicit fields, valid for every bit pattern.
    unsafe impl aya::Pod for super::Inflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CxxCtx {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampledKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExeCode {}
    // SAFETY: as above.
    unsafe impl<const N: usize> aya::Pod for super::Record<N> {}
}
