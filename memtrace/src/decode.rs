//! Ring-buffer records → typed events, with length and tag checks.
//!
//! The eBPF side writes one [`memtrace_common::Event`] per record. Nothing
//! here trusts the bytes: a short record, an unknown kind or an unknown
//! allocator function is a [`DecodeError`], counted by the caller.

use memtrace_common::{EVENT_SIZE, Event as Wire, flags, func, kind};
use thiserror::Error;

/// Which allocator entry point an allocation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocFn {
    Malloc,
    Calloc,
    Realloc,
    PosixMemalign,
    AlignedAlloc,
    Memalign,
    Valloc,
    Pvalloc,
    CxxNew,
    Mmap,
    Mremap,
}

/// Set in a decoded `StackRef::id` when the kernel id is in the second stack
/// map (the collector then turns every id into a content-interned one).
pub const SECOND_MAP: i32 = 1 << 24;

/// Where a stack came from: an id (negative when capture failed; from the
/// decoder a kernel stack-map id, from the collector on a content-interned
/// one), plus an optional caller frame to insert after the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackRef {
    pub id: i32,
    pub caller: Option<u64>,
}

/// A kernel command name (TASK_COMM_LEN bytes, NUL-padded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    fn from_words(lo: u64, hi: u64) -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_ne_bytes());
        b[8..].copy_from_slice(&hi.to_ne_bytes());
        Self(b)
    }

    /// The name as text (lossy), or None when empty.
    pub fn text(&self) -> Option<String> {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(16);
        (end > 0).then(|| String::from_utf8_lossy(&self.0[..end]).into_owned())
    }
}

/// Common header of every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub pid: u32,
    pub tid: u32,
    pub ts_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Alloc {
        meta: Meta,
        func: AllocFn,
        addr: u64,
        size: u64,
        stack: StackRef,
    },
    Free {
        meta: Meta,
        addr: u64,
    },
    Realloc {
        meta: Meta,
        old_addr: u64,
        addr: u64,
        size: u64,
        stack: StackRef,
    },
    Mmap {
        meta: Meta,
        addr: u64,
        len: u64,
        flags: u64,
        stack: StackRef,
    },
    Munmap {
        meta: Meta,
        addr: u64,
        len: u64,
    },
    Mremap {
        meta: Meta,
        old_addr: u64,
        old_len: u64,
        addr: u64,
        len: u64,
        stack: StackRef,
    },
    Exec {
        meta: Meta,
        /// The thread that called exec (not the leader when it differs
        /// from `meta.pid`).
        old_tid: u32,
        comm: Comm,
    },
    Exit {
        meta: Meta,
        comm: Comm,
    },
}

impl Event {
    /// The stack of an allocation-like event.
    pub fn stack_mut(&mut self) -> Option<&mut StackRef> {
        match self {
            Event::Alloc { stack, .. }
            | Event::Realloc { stack, .. }
            | Event::Mmap { stack, .. }
            | Event::Mremap { stack, .. } => Some(stack),
            _ => None,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Event::Alloc { meta, .. }
            | Event::Free { meta, .. }
            | Event::Realloc { meta, .. }
            | Event::Mmap { meta, .. }
            | Event::Munmap { meta, .. }
            | Event::Mremap { meta, .. }
            | Event::Exec { meta, .. }
            | Event::Exit { meta, .. } => meta,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {EVENT_SIZE}")]
    Length(usize),
    #[error("unknown event kind {0}")]
    Kind(u16),
    #[error("unknown allocator function {0} for kind {1}")]
    Func(u16, u16),
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

/// Parse the raw wire struct out of a record, checking its length.
pub fn parse_wire(b: &[u8]) -> Result<Wire, DecodeError> {
    if b.len() != EVENT_SIZE {
        return Err(DecodeError::Length(b.len()));
    }
    // Offsets follow the #[repr(C)] layout of memtrace_common::Event,
    // whose size is checked at compile time.
    Ok(Wire {
        kind: u16_at(b, 0),
        func: u16_at(b, 2),
        flags: u16_at(b, 4),
        _pad: u16_at(b, 6),
        tgid: u32_at(b, 8),
        tid: u32_at(b, 12),
        stack_id: u32_at(b, 16) as i32,
        _pad2: u32_at(b, 20),
        ts_ns: u64_at(b, 24),
        addr: u64_at(b, 32),
        size: u64_at(b, 40),
        old_addr: u64_at(b, 48),
        aux: u64_at(b, 56),
        caller: u64_at(b, 64),
    })
}

fn alloc_fn(w: &Wire) -> Result<AllocFn, DecodeError> {
    Ok(match w.func {
        func::MALLOC => AllocFn::Malloc,
        func::CALLOC => AllocFn::Calloc,
        func::REALLOC => AllocFn::Realloc,
        func::POSIX_MEMALIGN => AllocFn::PosixMemalign,
        func::ALIGNED_ALLOC => AllocFn::AlignedAlloc,
        func::MEMALIGN => AllocFn::Memalign,
        func::VALLOC => AllocFn::Valloc,
        func::PVALLOC => AllocFn::Pvalloc,
        func::CXX_NEW => AllocFn::CxxNew,
        func::MMAP => AllocFn::Mmap,
        func::MREMAP => AllocFn::Mremap,
        f => return Err(DecodeError::Func(f, w.kind)),
    })
}

/// Decode one ring-buffer record.
pub fn decode(b: &[u8]) -> Result<Event, DecodeError> {
    let w = parse_wire(b)?;
    let meta = Meta {
        pid: w.tgid,
        tid: w.tid,
        ts_ns: w.ts_ns,
    };
    let stack = StackRef {
        id: if w.stack_id >= 0 && w.flags & flags::STACK_B != 0 {
            w.stack_id | SECOND_MAP
        } else {
            w.stack_id
        },
        caller: (w.flags & flags::HAS_CALLER != 0 && w.caller != 0).then_some(w.caller),
    };
    Ok(match w.kind {
        kind::ALLOC => Event::Alloc {
            meta,
            func: alloc_fn(&w)?,
            addr: w.addr,
            size: w.size,
            stack,
        },
        kind::FREE => Event::Free { meta, addr: w.addr },
        kind::REALLOC => Event::Realloc {
            meta,
            old_addr: w.old_addr,
            addr: w.addr,
            size: w.size,
            stack,
        },
        kind::MMAP => Event::Mmap {
            meta,
            addr: w.addr,
            len: w.size,
            flags: w.aux,
            stack,
        },
        kind::MUNMAP => Event::Munmap {
            meta,
            addr: w.addr,
            len: w.size,
        },
        kind::MREMAP => Event::Mremap {
            meta,
            old_addr: w.old_addr,
            old_len: w.aux,
            addr: w.addr,
            len: w.size,
            stack,
        },
        kind::EXEC => Event::Exec {
            meta,
            old_tid: w.addr as u32,
            comm: Comm::from_words(w.old_addr, w.aux),
        },
        kind::EXIT => Event::Exit {
            meta,
            comm: Comm::from_words(w.old_addr, w.aux),
        },
        k => return Err(DecodeError::Kind(k)),
    })
}

/// Encode a wire event into bytes (tests and fuzzing).
#[cfg(test)]
pub fn encode(w: &Wire) -> Vec<u8> {
    let mut v = Vec::with_capacity(EVENT_SIZE);
    v.extend_from_slice(&w.kind.to_ne_bytes());
    v.extend_from_slice(&w.func.to_ne_bytes());
    v.extend_from_slice(&w.flags.to_ne_bytes());
    v.extend_from_slice(&w._pad.to_ne_bytes());
    v.extend_from_slice(&w.tgid.to_ne_bytes());
    v.extend_from_slice(&w.tid.to_ne_bytes());
    v.extend_from_slice(&w.stack_id.to_ne_bytes());
    v.extend_from_slice(&w._pad2.to_ne_bytes());
    for x in [w.ts_ns, w.addr, w.size, w.old_addr, w.aux, w.caller] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(k: u16, f: u16) -> Wire {
        Wire {
            kind: k,
            func: f,
            tgid: 10,
            tid: 11,
            stack_id: 3,
            ts_ns: 99,
            addr: 0x1000,
            size: 64,
            ..Wire::default()
        }
    }

    #[test]
    fn encode_matches_repr_c_layout() {
        let w = wire(kind::ALLOC, func::MALLOC);
        let bytes = encode(&w);
        // SAFETY: Event is repr(C) plain data of EVENT_SIZE bytes.
        let raw =
            unsafe { std::slice::from_raw_parts((&w as *const Wire).cast::<u8>(), EVENT_SIZE) };
        assert_eq!(bytes, raw);
    }

    #[test]
    fn round_trip_alloc() {
        let ev = decode(&encode(&wire(kind::ALLOC, func::CALLOC))).unwrap();
        assert_eq!(
            ev,
            Event::Alloc {
                meta: Meta {
                    pid: 10,
                    tid: 11,
                    ts_ns: 99
                },
                func: AllocFn::Calloc,
                addr: 0x1000,
                size: 64,
                stack: StackRef {
                    id: 3,
                    caller: None
                },
            }
        );
    }

    #[test]
    fn caller_only_with_flag() {
        let mut w = wire(kind::ALLOC, func::MALLOC);
        w.caller = 0x4242;
        let Event::Alloc { stack, .. } = decode(&encode(&w)).unwrap() else {
            panic!()
        };
        assert_eq!(stack.caller, None);
        w.flags = flags::HAS_CALLER;
        let Event::Alloc { stack, .. } = decode(&encode(&w)).unwrap() else {
            panic!()
        };
        assert_eq!(stack.caller, Some(0x4242));
    }

    #[test]
    fn short_and_long_records_rejected() {
        let b = encode(&wire(kind::FREE, 0));
        for n in [0, 1, 8, EVENT_SIZE - 1] {
            assert_eq!(decode(&b[..n]), Err(DecodeError::Length(n)));
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::Length(EVENT_SIZE + 1)));
    }

    #[test]
    fn unknown_kind_and_func_rejected() {
        assert_eq!(decode(&encode(&wire(0, 0))), Err(DecodeError::Kind(0)));
        assert_eq!(
            decode(&encode(&wire(kind::MAX + 1, 0))),
            Err(DecodeError::Kind(kind::MAX + 1))
        );
        assert_eq!(
            decode(&encode(&wire(kind::ALLOC, func::MAX + 1))),
            Err(DecodeError::Func(func::MAX + 1, kind::ALLOC))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: xorshift bytes of every length.
        let mut s: u64 = 0x9e3779b97f4a7c15;
        for len in 0..200 {
            for _ in 0..50 {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        s as u8
                    })
                    .collect();
                let _ = decode(&v);
            }
        }
    }
}

#[cfg(test)]
mod comm_tests {
    use super::*;

    #[test]
    fn exit_carries_the_command_name() {
        let name = *b"leaky-worker\0\0\0\0";
        let w = Wire {
            kind: kind::EXIT,
            tgid: 5,
            tid: 5,
            old_addr: u64::from_ne_bytes(name[..8].try_into().unwrap()),
            aux: u64::from_ne_bytes(name[8..].try_into().unwrap()),
            ..Wire::default()
        };
        let Event::Exit { comm, .. } = decode(&encode(&w)).unwrap() else {
            panic!()
        };
        assert_eq!(comm.text().as_deref(), Some("leaky-worker"));
        assert_eq!(Comm::default().text(), None);
    }
}
