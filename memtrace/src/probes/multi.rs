//! uprobe_multi links (kernel 6.6+), which aya 0.14 does not create.
//!
//! Why: a perf-event uprobe scoped to a PID is bound to that PID's *thread*
//! and filtered by that thread's mm, so it stops firing for the other
//! threads once the leader exits (pthread_exit in main, exec from another
//! thread); and detaching each perf-event uprobe waits for an RCU grace
//! period under a global mutex (~90 ms each here). A uprobe_multi link
//! filters by thread group and detaches all its offsets with one sync.
//!
//! How: aya creates the maps (with memtrace's globals); the object is parsed
//! again with aya-obj, its map references relocated to aya's map fds, and
//! the uprobe programs loaded with `expected_attach_type =
//! BPF_TRACE_UPROBE_MULTI` by a plain `bpf(2)` call.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
pub const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// Entry and return as one uprobe session (kernels 6.13+): the entry
/// program's return value decides whether the return probe runs.
pub const BPF_TRACE_UPROBE_SESSION: u32 = 57;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` that we use.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}
const _: () = assert!(size_of::<ProgLoadAttr>() == 72);

/// The `BPF_LINK_CREATE` part of `union bpf_attr`, uprobe_multi variant.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<LinkCreateAttr>() == 64);

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialised, repr(C) prefix of `union
    // bpf_attr` of the given size; the kernel reads (and for logs writes
    // through pointers we own) only within it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::StackTraceMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuHashMap(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// Load `names` (each with its expected attach type) from the object
/// `bytes` for uprobe_multi or session attachment, using the maps aya
/// created in `ebpf`.
pub fn load_programs(ebpf: &Ebpf, bytes: &[u8], names: &[(&str, u32)]) -> Result<Vec<OwnedFd>> {
    let mut obj = aya_obj::Object::parse(bytes).context("parsing the eBPF object")?;
    let mut fds = Vec::new();
    for (name, m) in &obj.maps {
        let map = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("eBPF map {name} was not created"))?;
        let fd = map_fd(map).ok_or_else(|| anyhow!("eBPF map {name}: unexpected type"))?;
        fds.push((name.clone(), fd, m.clone()));
    }
    let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(fds.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)), &text)
        .context("relocating eBPF map references")?;
    obj.relocate_calls(&text).context("relocating eBPF calls")?;
    let license = CString::new("GPL").map_err(|_| anyhow!("license"))?;
    names
        .iter()
        .map(|&(name, attach_type)| {
            let prog = obj
                .programs
                .get(name)
                .ok_or_else(|| anyhow!("eBPF program {name} missing"))?;
            let func = obj
                .functions
                .get(&prog.function_key())
                .ok_or_else(|| anyhow!("eBPF program {name} has no code"))?;
            load_one(name, &func.instructions, &license, attach_type)
        })
        .collect()
}

fn load_one(
    name: &str,
    insns: &[aya_obj::generated::bpf_insn],
    license: &CString,
    attach_type: u32,
) -> Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: attach_type,
        ..ProgLoadAttr::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with the verifier's log, for a useful message.
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log);
            let tail: Vec<&str> = text.trim_end_matches('\0').lines().rev().take(3).collect();
            bail!(
                "loading eBPF program {name} for uprobe_multi: {first}; verifier: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

/// How a link's program runs at its offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Entry,
    Return,
    /// Entry, and return unless the entry program declined it.
    Session,
}

/// Attach `prog` to every offset of `path` in one link; `pid` 0 means every
/// process, else that process's thread group.
pub fn attach(
    prog: &OwnedFd,
    path: &Path,
    offsets: &[u64],
    cookies: &[u64],
    mode: Mode,
    pid: u32,
) -> io::Result<OwnedFd> {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: if mode == Mode::Session {
            BPF_TRACE_UPROBE_SESSION
        } else {
            BPF_TRACE_UPROBE_MULTI
        },
        path: cpath.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: offsets.len() as u32,
        multi_flags: if mode == Mode::Return {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        },
        pid,
        ..LinkCreateAttr::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}
