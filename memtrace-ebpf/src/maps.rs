//! The maps the programs share with userspace, and the globals the loader
//! sets before load (`EbpfLoader::override_global`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use memtrace_common::{
    COUNTER_COUNT, Counter, CxxCtx, ExeCode, Inflight, LIB_SITES_MAX, SAMPLED_LANE_WORDS,
    SampledKey, TARGET_SAME_IMAGE, TARGETS_MAX, floor,
};

use crate::stack::WalkBuf;

/// Ring buffer of [`Event`]s. Size overridden by userspace at load.
#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Allocator calls between entry and return, one slot per thread id up to
/// `THREAD_LAST` (the size is overridden by userspace at load).
#[map(name = "THREADS")]
pub(crate) static THREADS: Array<Inflight> = Array::with_max_entries(1, 0);

/// Allocator calls of threads whose id is past the end of `THREADS`, keyed
/// by thread id.
#[map(name = "INFLIGHT")]
pub(crate) static INFLIGHT: HashMap<u32, Inflight> = HashMap::with_max_entries(16384, 0);

/// C++ operator new call contexts, keyed by thread id.
#[map(name = "CXX_CTX")]
pub(crate) static CXX_CTX: HashMap<u32, CxxCtx> = HashMap::with_max_entries(16384, 0);

/// Sampled heap blocks still live, by process and address (only with
/// sampling on): frees of other blocks emit nothing. Size overridden at load.
#[map(name = "SAMPLED")]
pub(crate) static SAMPLED: HashMap<SampledKey, u8> = HashMap::with_max_entries(1, 0);

/// Counts of the live sampled blocks by hashed address, four 16-bit lanes a
/// word (`sampled_lane`): most frees are of unsampled blocks, and a lane
/// counting 0 says so for the price of an array load instead of a hash
/// lookup. Userspace maps it to take out the blocks of exited processes.
#[map(name = "SAMPLED_LANES")]
pub(crate) static SAMPLED_LANES: Array<u64> =
    Array::with_max_entries(SAMPLED_LANE_WORDS, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE`: the array can be mapped into userspace.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Bytes left until the next sample, per CPU (sampling is a Poisson process
/// over the byte stream: any split of the stream samples alike).
#[map(name = "SAMPLER")]
pub(crate) static SAMPLER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Call sites inside allocator libraries (strdup's call to malloc) and how
/// to step out of the calling function there; filled by userspace from the
/// library's `.eh_frame` (see `stack::out_of_library`).
#[map(name = "LIB_SITES")]
pub(crate) static LIB_SITES: HashMap<u64, u32> = HashMap::with_max_entries(LIB_SITES_MAX, 0);

/// Where the traced process's executable code lies when it has call sites
/// in `LIB_SITES` (see `stack::out_of_exe`); set by userspace.
#[map(name = "EXE_CODE")]
pub(crate) static EXE_CODE: Array<ExeCode> = Array::with_max_entries(1, 0);

/// Per-CPU scratch for the stack walk: the page of user stack being read.
#[map(name = "WALK")]
pub(crate) static WALK: PerCpuArray<WalkBuf> = PerCpuArray::with_max_entries(1, 0);

/// The floor's switch in phased mode (`memtrace_common::floor::PHASED`).
#[map(name = "PHASE")]
static PHASE: Array<u32> = Array::with_max_entries(1, 0);

/// Loss and activity counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

// Globals written by the loader before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
pub(crate) static SELF_TGID: u32 = 0;

#[unsafe(no_mangle)]
static FLOOR_ONLY: u32 = 0;

#[unsafe(no_mangle)]
pub(crate) static TARGET_TGID: u32 = 0;

/// The child processes `report -- CMD --children` follows besides
/// `TARGET_TGID` (tgid → `TARGET_OWN_IMAGE` or `TARGET_SAME_IMAGE`),
/// filled by userspace.
#[map(name = "TARGETS")]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(TARGETS_MAX, 0);

/// Whether `tgid`'s process events are wanted: every process's, or with a
/// target set (`report`), the target's and its followed children's.
#[inline(always)]
pub(crate) fn is_target(tgid: u32) -> bool {
    let target = global_u32(&TARGET_TGID);
    // SAFETY: a hash lookup whose value is only tested for presence.
    target == 0 || target == tgid || unsafe { TARGETS.get(tgid) }.is_some()
}

/// Whether `tgid` is a followed child still running the command's image
/// (see `TARGET_SAME_IMAGE`).
#[inline(always)]
pub(crate) fn runs_target_image(tgid: u32) -> bool {
    // SAFETY: a hash lookup whose value is copied at once.
    unsafe { TARGETS.get(tgid) }.is_some_and(|v| *v == TARGET_SAME_IMAGE)
}

/// Set once any operator new probe fired: until then, allocation returns
/// skip the C++ context lookup.
#[unsafe(no_mangle)]
pub(crate) static mut CXX_SEEN: u32 = 0;

/// The highest thread id with a slot in `THREADS` (its size minus one).
#[unsafe(no_mangle)]
pub(crate) static THREAD_LAST: u32 = 0;

/// Set once any record went to `INFLIGHT` (a thread id past the end of
/// `THREADS`): until then, nothing needs to look there.
#[unsafe(no_mangle)]
pub(crate) static mut HASH_USED: u32 = 0;

/// Mean bytes between samples; 0: every allocation is traced.
#[unsafe(no_mangle)]
pub(crate) static SAMPLE_BYTES: u64 = 0;

/// Whether the programs return at once (the overhead floor). The mode is a
/// constant of the loaded program, so the verifier prunes the branches of
/// the others: only the benchmark's phased mode reads `PHASE`.
#[inline(always)]
pub(crate) fn floor_now() -> bool {
    match global_u32(&FLOOR_ONLY) {
        floor::OFF => false,
        floor::ON => true,
        _ => PHASE.get(0).is_some_and(|v| *v != 0),
    }
}

#[inline(always)]
pub(crate) fn global_u32(g: &'static u32) -> u32 {
    // SAFETY: reading a global the loader initialised; volatile so the
    // compiler cannot fold the compile-time zero.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
pub(crate) fn global_u64(g: &'static u64) -> u64 {
    // SAFETY: as in `global_u32`.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
pub(crate) fn bump(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; no other writer runs on this CPU meanwhile.
        unsafe { *p += 1 };
    }
}
