//! Up-front checks of what memtrace needs from the system, each failing
//! with one line that names what is missing.

use std::path::Path;

use anyhow::{Result, bail};

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether this process may load and attach the eBPF programs.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    effective_caps().is_some_and(|c| c & (1 << CAP_BPF) != 0 && c & (1 << CAP_PERFMON) != 0)
}

/// Check privileges and kernel features before touching the kernel.
pub fn preflight() -> Result<()> {
    if !privileged() {
        bail!("tracing needs root (or CAP_BPF and CAP_PERFMON): run with sudo");
    }
    let mut missing = Vec::new();
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        missing.push("uprobes (CONFIG_UPROBE_EVENTS)");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("BTF (CONFIG_DEBUG_INFO_BTF)");
    }
    if let Some((maj, min)) = kernel_version()
        && (maj, min) < (5, 8)
    {
        missing.push("BPF ring buffers (kernel 5.8 or newer)");
    }
    if !missing.is_empty() {
        bail!("this kernel lacks {}", missing.join(", "));
    }
    Ok(())
}

fn kernel_version() -> Option<(u32, u32)> {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = r.trim().split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Monotonic clock in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
