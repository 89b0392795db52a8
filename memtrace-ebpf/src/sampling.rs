//! Byte-based Poisson sampling (`--sample-bytes`), decided here: each
//! allocation of s bytes is sampled with probability 1 - exp(-s/N). The
//! kernel keeps the set of live sampled blocks, so that frees of the others
//! emit nothing.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::RetProbeContext};
use aya_log_ebpf::warn;
use memtrace_common::{Counter, Inflight, SampledKey, func, kind, sampled_lane};

use crate::{
    maps::{SAMPLE_BYTES, SAMPLED, SAMPLED_LANES, SAMPLER, bump, global_u64},
    ring::{emit, event},
    stack::finish,
};

/// log2(1 + i/64) in Q16, for drawing exponential intervals.
static LOG2_FRAC: [u32; 64] = [
    0, 1466, 2909, 4331, 5732, 7112, 8473, 9814, 11136, 12440, 13727, 14996, 16248, 17484, 18704,
    19909, 21098, 22272, 23433, 24579, 25711, 26830, 27936, 29029, 30109, 31178, 32234, 33279,
    34312, 35334, 36346, 37346, 38336, 39316, 40286, 41246, 42196, 43137, 44068, 44990, 45904,
    46809, 47705, 48593, 49472, 50344, 51207, 52063, 52911, 53751, 54584, 55410, 56229, 57040,
    57845, 58643, 59434, 60219, 60997, 61769, 62534, 63294, 64047, 64794,
];

/// A draw from the exponential distribution with mean `mean`:
/// `-mean * ln(U)`, with ln computed from log2 (integer part from the
/// leading zeros, fraction from a 64-entry table) in fixed point.
#[inline(always)]
fn exp_interval(mean: u64) -> u64 {
    // SAFETY: helper without preconditions.
    let r = unsafe { bpf_get_prandom_u32() } | 1;
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
pub(crate) fn sampled(size: u64) -> bool {
    let mean = global_u64(&SAMPLE_BYTES);
    if mean == 0 {
        return true;
    }
    let Some(left) = SAMPLER.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot; nothing else runs on this CPU meanwhile.
    unsafe {
        // The distance to the first sample point is a draw like every
        // other (0: not drawn yet). Starting at 0 would sample each CPU's
        // first allocation for sure while weighting it as a rare one: a
        // 64-byte block would stand for ~512 KiB.
        if *left == 0 {
            *left = exp_interval(mean).max(1);
        }
        if *left > size {
            *left -= size;
            return false;
        }
        *left = exp_interval(mean).max(1);
    }
    true
}

#[inline(always)]
pub(crate) fn remember_sampled(ctx: &RetProbeContext, tgid: u32, addr: u64) {
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
pub(crate) fn unsample(tgid: u32, addr: u64) -> bool {
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
pub(crate) fn maybe_sampled(addr: u64) -> bool {
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
pub(crate) fn sampled_realloc(
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
