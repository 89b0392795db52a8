//! Attaching the loaded programs: allocator probes to a library (for one
//! process or all), the dynamic loader's hook, the lifecycle tracepoints.

use std::{
    io,
    num::NonZeroU32,
    os::fd::OwnedFd,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        ProgramError, RawTracePoint,
        uprobe::{
            UProbeAttachLocation, UProbeAttachPoint, UProbeError, UProbeLink, UProbeLinkId,
            UProbeScope,
        },
    },
};
use memtrace_common::{ExeCode, MAP_EXE_CODE, MAP_LIB_SITES, func, lib_site_key, lib_site_value};

use super::{
    CXX, LIBC, Planned,
    callsites::{self, Reach},
    exe, multi, plan,
    programs::{ENTRY_PROGRAM, LOADER_PROGRAM, Loaded, RET_PROGRAM, UProbes, uprobe},
};

/// The uprobe links memtrace holds, so they can be detached quickly.
#[derive(Default)]
pub struct Links {
    perf: Vec<(&'static str, UProbeLinkId)>,
    multi: Vec<OwnedFd>,
}

impl Links {
    /// Detach every link. Each detach waits for an RCU grace period (~90 ms
    /// in a VM): uprobe_multi links pay it once per link, and are closed
    /// from parallel threads so their waits overlap.
    pub fn detach(self, ebpf: &mut Ebpf) {
        let (multi, perf) = self.take(ebpf);
        std::thread::scope(|s| {
            for link in multi {
                s.spawn(move || drop(link));
            }
            for link in perf {
                s.spawn(move || drop(link));
            }
        });
    }

    /// Detach every link on a thread of its own, so the caller does not
    /// wait for the grace periods (a followed child that exited); join
    /// the handle before exiting, or the process's exit waits for them one
    /// by one.
    pub fn detach_later(self, ebpf: &mut Ebpf) -> std::thread::JoinHandle<()> {
        let (multi, perf) = self.take(ebpf);
        std::thread::spawn(move || {
            std::thread::scope(|s| {
                for link in multi {
                    s.spawn(move || drop(link));
                }
                for link in perf {
                    s.spawn(move || drop(link));
                }
            });
        })
    }

    /// The links, perf-event ones taken out of their programs.
    fn take(self, ebpf: &mut Ebpf) -> (Vec<OwnedFd>, Vec<UProbeLink>) {
        let mut perf = Vec::with_capacity(self.perf.len());
        for (prog, id) in self.perf {
            if let Ok(p) = uprobe(ebpf, prog)
                && let Ok(link) = p.take_link(id)
            {
                perf.push(link);
            }
        }
        (self.multi, perf)
    }
}

/// Which processes the probes fire for.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    All,
    Process(NonZeroU32),
}

/// Attach the planned probes to `lib` for `scope`.
pub fn attach(
    loaded: &mut Loaded,
    lib: &Path,
    planned: &[Planned],
    scope: Scope,
    links: &mut Links,
) -> Result<()> {
    add_lib_sites(loaded, lib, planned);
    let explain = |e: ProgramError, what: &str| explain_attach(e, what, lib);
    match &loaded.uprobes {
        UProbes::Multi {
            entry,
            malloc,
            free,
            ret,
            session,
            ..
        } => {
            let pid = match scope {
                Scope::All => 0,
                Scope::Process(p) => p.get(),
            };
            let mut link = |prog: &OwnedFd, ps: &[&Planned], mode, what| -> Result<()> {
                if ps.is_empty() {
                    return Ok(());
                }
                let offsets: Vec<u64> = ps.iter().map(|p| p.file_offset).collect();
                let cookies: Vec<u64> = ps.iter().map(|p| p.cookie()).collect();
                let link = multi::attach(prog, lib, &offsets, &cookies, mode, pid)
                    .map_err(|e| explain(io_program_error(e), what))?;
                links.multi.push(link);
                Ok(())
            };
            let (frees, others): (Vec<&Planned>, Vec<&Planned>) =
                planned.iter().partition(|p| p.func == func::FREE && !p.ret);
            let (rets, entries): (Vec<&Planned>, Vec<&Planned>) =
                others.iter().partition(|p| p.ret);
            link(free, &frees, multi::Mode::Entry, "allocator frees")?;
            match session {
                Some(session) => {
                    link(entry, &entries, multi::Mode::Entry, "allocator entries")?;
                    link(session, &rets, multi::Mode::Session, "allocator calls")?;
                }
                None => {
                    let (mallocs, others): (Vec<&Planned>, Vec<&Planned>) =
                        others.iter().partition(|p| p.func == func::MALLOC && p.ret);
                    link(malloc, &mallocs, multi::Mode::Entry, "malloc entries")?;
                    link(entry, &others, multi::Mode::Entry, "allocator entries")?;
                    link(ret, &rets, multi::Mode::Return, "allocator returns")?;
                }
            }
        }
        UProbes::Perf => {
            let scope = match scope {
                Scope::All => UProbeScope::AllProcesses,
                Scope::Process(p) => UProbeScope::OneProcess(p),
            };
            for p in planned {
                let at = || UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(p.file_offset),
                    cookie: Some(p.cookie()),
                };
                let id = uprobe(&mut loaded.ebpf, ENTRY_PROGRAM)?
                    .attach(at(), lib, scope)
                    .map_err(|e| explain(e, p.symbol))?;
                links.perf.push((ENTRY_PROGRAM, id));
                if p.ret {
                    let id = uprobe(&mut loaded.ebpf, RET_PROGRAM)?
                        .attach(at(), lib, scope)
                        .map_err(|e| explain(e, p.symbol))?;
                    links.perf.push((RET_PROGRAM, id));
                }
            }
        }
    }
    Ok(())
}

/// Attach the loader hook (`loader_stop`) at `file_offset` of `lib` (the
/// dynamic loader's `_dl_debug_state`) for one process.
pub fn attach_loader(
    loaded: &mut Loaded,
    lib: &Path,
    file_offset: u64,
    pid: NonZeroU32,
    links: &mut Links,
) -> Result<()> {
    let explain = |e: ProgramError| explain_attach(e, "_dl_debug_state", lib);
    match &loaded.uprobes {
        UProbes::Multi { loader, .. } => {
            let link = multi::attach(
                loader,
                lib,
                &[file_offset],
                &[0],
                multi::Mode::Entry,
                pid.get(),
            )
            .map_err(|e| explain(io_program_error(e)))?;
            links.multi.push(link);
        }
        UProbes::Perf => {
            let at = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(file_offset),
                cookie: None,
            };
            let id = uprobe(&mut loaded.ebpf, LOADER_PROGRAM)?
                .attach(at, lib, UProbeScope::OneProcess(pid))
                .map_err(explain)?;
            links.perf.push((LOADER_PROGRAM, id));
        }
    }
    Ok(())
}

fn io_program_error(e: io::Error) -> ProgramError {
    ProgramError::SyscallError(aya::sys::SyscallError {
        call: "bpf_link_create",
        io_error: e,
    })
}

fn explain_attach(e: ProgramError, symbol: &str, lib: &Path) -> anyhow::Error {
    let what = format!("attaching uprobe to {symbol} in {}", lib.display());
    let einval = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::EINVAL),
        ProgramError::UProbeError(UProbeError::FileError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::EINVAL)
        }
        _ => false,
    };
    if einval {
        anyhow!(
            "{what}: the kernel refused it (EINVAL); another tracer (bcc memleak, bpftrace, \
             perf probe) most likely holds a uprobe on the same function with a different \
             ref_ctr_offset (dmesg: 'ref_ctr_offset mismatch'): stop it and retry"
        )
    } else {
        anyhow::Error::new(e).context(what)
    }
}

fn raw_tp(ebpf: &mut Ebpf, prog: &str, tp: &str) -> Result<()> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("eBPF program {prog} missing"))?
        .try_into()?;
    p.attach(tp)
        .with_context(|| format!("attaching raw tracepoint {tp}"))?;
    Ok(())
}

/// Attach the process lifecycle tracepoints (exec, exit). The exit program
/// that reads `group_dead` needs kernel 6.16+; older kernels get the one
/// that takes the leader's exit for the process's.
pub fn attach_lifecycle(ebpf: &mut Ebpf) -> Result<()> {
    raw_tp(ebpf, "sched_exec", "sched_process_exec")?;
    raw_tp(ebpf, "sched_exit", "sched_process_exit")
        .or_else(|_| raw_tp(ebpf, "sched_exit_leader", "sched_process_exit"))
}

/// Plan and attach every allocator probe for a process whose C library is
/// `libc` and whose C++ runtime (if any) is `libstdcxx`.
pub fn attach_allocators(
    loaded: &mut Loaded,
    libc: &Path,
    libstdcxx: Option<&Path>,
    scope: Scope,
    links: &mut Links,
) -> Result<Vec<(PathBuf, Planned)>> {
    let mut all = Vec::new();
    let (planned, missing) = plan(libc, LIBC)?;
    if let Some(m) = missing.iter().find(|&&m| m == "malloc" || m == "free") {
        bail!(
            "{} has no symbol {m}: not a C library memtrace can trace",
            libc.display()
        );
    }
    attach(loaded, libc, &planned, scope, links)?;
    all.extend(planned.into_iter().map(|p| (libc.to_path_buf(), p)));
    if let Some(cxx) = libstdcxx {
        let (planned, _) = plan(cxx, CXX)?;
        attach(loaded, cxx, &planned, scope, links)?;
        all.extend(planned.into_iter().map(|p| (cxx.to_path_buf(), p)));
    }
    Ok(all)
}

/// Put the call sites of `lib` (see `callsites`) in `LIB_SITES`, once per
/// library: every call of a library with allocation functions that have
/// return probes (the C library), and the calls that lead to operator new
/// or to `std::string`'s members in the C++ runtime (those members are
/// compiled there, without frame pointers; see `exe::allocating`). A library whose sites cannot all be recorded only
/// loses those callers (its allocations still count, with the frames the
/// walk finds): a note says which.
fn add_lib_sites(loaded: &mut Loaded, lib: &Path, planned: &[Planned]) {
    let Some(segment) = planned.first().map(|p| p.segment) else {
        return;
    };
    let cxx_names;
    let reach = if planned.iter().any(|p| p.ret) {
        Reach::Every
    } else if planned.iter().any(|p| p.func == func::CXX_NEW) {
        cxx_names = exe::allocating();
        Reach::Allocating(&cxx_names)
    } else {
        return;
    };
    // By file identity: `lib` is often a /proc/self/fd/N path, whose
    // number a later, different file may get.
    let id = std::fs::metadata(lib).map(|m| (m.dev(), m.ino(), segment.0));
    if id.is_ok_and(|id| !loaded.lib_sites.insert(id)) {
        return;
    }
    let recorded = std::fs::read(lib)
        .context("reading it")
        .and_then(|data| record_lib_sites(&mut loaded.ebpf, &data, segment, reach));
    match recorded {
        Err(e) => loaded.notes.push(format!(
            "{}: {e:#}: allocations it makes on the program's behalf show no caller past it",
            lib.display()
        )),
        Ok(n) if n >= callsites::MAX_LIB_SITES => loaded.notes.push(format!(
            "{}: only its first {n} call sites are followed: allocations it makes on the \
             program's behalf from code past them show no caller past it",
            lib.display()
        )),
        Ok(_) => {}
    }
}

/// Put the call sites `reach` names in the executable segment (file offset
/// and size) of the ELF file `data` in `LIB_SITES`; how many there are.
pub(super) fn record_lib_sites(
    ebpf: &mut Ebpf,
    data: &[u8],
    segment: (u64, u64),
    reach: Reach<'_>,
) -> Result<usize> {
    let sites = callsites::call_sites(data, segment.0, reach).context("its unwind tables")?;
    let map = ebpf
        .map_mut(MAP_LIB_SITES)
        .ok_or_else(|| anyhow!("eBPF map {MAP_LIB_SITES} missing"))?;
    let mut map = aya::maps::HashMap::<_, u64, u32>::try_from(map)?;
    let units = segment.1.div_ceil(256);
    let total = sites.len();
    let mut left_out = 0;
    for (i, s) in sites.into_iter().enumerate() {
        let key = lib_site_key(units, s.ra_off);
        if map.insert(key, lib_site_value(s.cfa, s.rbp_at), 0).is_err() {
            left_out = total - i;
            break;
        }
    }
    new_sites_generation(ebpf)?;
    if left_out > 0 {
        bail!("{MAP_LIB_SITES} is full: {left_out} of its {total} call sites left out");
    }
    Ok(total)
}

/// Tell the eBPF side that `LIB_SITES` changed: the lookups each CPU cached
/// (a site's absence included) are of an older generation, and not used.
fn new_sites_generation(ebpf: &mut Ebpf) -> Result<()> {
    let map = ebpf
        .map_mut(MAP_EXE_CODE)
        .ok_or_else(|| anyhow!("eBPF map {MAP_EXE_CODE} missing"))?;
    let mut map = aya::maps::Array::<_, ExeCode>::try_from(map)?;
    let mut code = map
        .get(&0, 0)
        .with_context(|| format!("reading {MAP_EXE_CODE}"))?;
    code.sites_gen = code.sites_gen.wrapping_add(1);
    map.set(0, code, 0)
        .with_context(|| format!("setting {MAP_EXE_CODE}"))
}
