//! Process lifecycle: exec and exit events for userspace's tables, and the
//! dynamic loader's hook that lets `report -- CMD` attach to allocators in
//! objects loaded later.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_send_signal_thread},
    macros::{raw_tracepoint, uprobe},
    programs::{ProbeContext, RawTracePointContext},
};
use memtrace_common::{func, kind};

use crate::{
    calls::forget_thread,
    maps::{SELF_TGID, TARGET_TGID, global_u32, is_target},
    ring::{emit, event, now},
};

/// SIGCHLD, the signal `loader_stop` sends: memtrace's ptrace stops the
/// thread on it and swallows it; should memtrace die in that instant, the
/// signal is delivered, and its default action is to be ignored (a handler
/// sees a spurious SIGCHLD, which `waitpid(WNOHANG)` loops tolerate).
/// Real SIGCHLDs carry a CLD_* code, never SI_KERNEL.
const SIGCHLD: u32 = 17;

/// The dynamic loader's `_dl_debug_state` (its debugger hook): called after
/// it mapped new objects (at start-up and in every `dlopen`), before any of
/// their code runs. For the process `report -- CMD` launched (and
/// ptrace-seized) and the children it follows, stop the calling thread:
/// memtrace sees the SIGCHLD as a ptrace signal stop, attaches to any
/// allocator among the new objects, and resumes the thread without
/// delivering the signal. Nobody else is ever signalled.
#[uprobe]
pub fn loader_stop(_ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if global_u32(&TARGET_TGID) == 0 || !is_target((id >> 32) as u32) {
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

#[inline(always)]
fn process_event(k: u16, leader_only: bool, aux: u64) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if leader_only && tgid != tid {
        return 0;
    }
    if !is_target(tgid) || tgid == global_u32(&SELF_TGID) {
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
