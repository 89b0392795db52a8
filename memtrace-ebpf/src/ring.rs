//! Events into the ring buffer. Every event is submitted without a wakeup:
//! userspace drains on a short timer (2 ms for reports, 10 ms for the
//! dashboard; the 32 MiB ring holds ~250 ms of events at 1M events/s, of
//! ~130 bytes each: a host that stalls memtrace longer loses events, and
//! counts them).

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, helpers::bpf_ktime_get_ns};
use memtrace_common::{Counter, Event};

use crate::maps::{EVENTS, bump};

#[inline(always)]
pub(crate) fn emit(ev: &Event) {
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
pub(crate) fn put<T>(p: &mut T, v: T) {
    // SAFETY: `p` is a valid, aligned, exclusive reference.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Copy `ev` into `dst` field by field (see `put`).
#[inline(always)]
pub(crate) fn put_event(dst: &mut Event, ev: &Event) {
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

/// An event for this thread, without stack and timestamp.
#[inline(always)]
pub(crate) fn event(k: u16, f: u16, tgid: u32, tid: u32) -> Event {
    Event {
        kind: k,
        func: f,
        tgid,
        tid,
        ..Event::default()
    }
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
