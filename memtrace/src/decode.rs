//! Ring-buffer records → typed events, with length and tag checks.
//!
//! The eBPF side writes one [`memtrace_common::Event`] per record, or for
//! allocations a [`memtrace_common::Record`]: the event and its stack.
//! Nothing here trusts the bytes: a record of another length, an unknown
//! kind or allocator function, or a frame count that does not fit is a
//! [`DecodeError`], counted by the caller.

use memtrace_common::{
    EVENT_SIZE, Event as Wire, RECORD_SIZE, SHORT_FRAMES, SHORT_RECORD_SIZE, STACK_DEPTH, flags,
    func, kind,
};
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

/// An allocation's stack: the id of its interned frames (see
/// `stacks::Stacks`), or [`StackRef::NONE`] when it has none (the decoder
/// leaves every stack so; the collector interns the frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackRef {
    pub id: i32,
}

impl StackRef {
    pub const NONE: StackRef = StackRef { id: -1 };
}

/// The frames a record carried (innermost first), as raw bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frames<'a>(&'a [u8]);

impl Frames<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.chunks_exact(8).map(|c| u64_at(c, 0))
    }
}

/// A decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub event: Event,
    pub frames: Frames<'a>,
    /// The stack was cut at `STACK_DEPTH` frames.
    pub truncated: bool,
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

    pub fn meta_mut(&mut self) -> &mut Meta {
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
    #[error("record of {0} bytes, expected {EVENT_SIZE}, {SHORT_RECORD_SIZE} or {RECORD_SIZE}")]
    Length(usize),
    #[error("{0} frames in a record that holds {STACK_DEPTH}, or frames on kind {1}")]
    Frames(u16, u16),
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

/// Parse the raw wire struct out of a record's header, checking the
/// record's length.
pub fn parse_wire(b: &[u8]) -> Result<Wire, DecodeError> {
    if ![EVENT_SIZE, SHORT_RECORD_SIZE, RECORD_SIZE].contains(&b.len()) {
        return Err(DecodeError::Length(b.len()));
    }
    // Offsets follow the #[repr(C)] layout of memtrace_common::Event,
    // whose size is checked at compile time.
    Ok(Wire {
        kind: u16_at(b, 0),
        func: u16_at(b, 2),
        flags: u16_at(b, 4),
        nframes: u16_at(b, 6),
        tgid: u32_at(b, 8),
        tid: u32_at(b, 12),
        ts_ns: u64_at(b, 16),
        addr: u64_at(b, 24),
        size: u64_at(b, 32),
        old_addr: u64_at(b, 40),
        aux: u64_at(b, 48),
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
pub fn decode(b: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let w = parse_wire(b)?;
    let n = usize::from(w.nframes);
    let has_stack = matches!(
        w.kind,
        kind::ALLOC | kind::REALLOC | kind::MMAP | kind::MREMAP
    );
    let room = match b.len() {
        SHORT_RECORD_SIZE => SHORT_FRAMES,
        RECORD_SIZE => STACK_DEPTH,
        _ => 0,
    };
    if n > room || (n > 0 && !has_stack) {
        return Err(DecodeError::Frames(w.nframes, w.kind));
    }
    Ok(Decoded {
        event: event(&w)?,
        frames: Frames(&b[EVENT_SIZE..EVENT_SIZE + 8 * n]),
        truncated: w.flags & flags::TRUNCATED != 0,
    })
}

fn event(w: &Wire) -> Result<Event, DecodeError> {
    let meta = Meta {
        pid: w.tgid,
        tid: w.tid,
        ts_ns: w.ts_ns,
    };
    let stack = StackRef::NONE;
    Ok(match w.kind {
        kind::ALLOC => Event::Alloc {
            meta,
            func: alloc_fn(w)?,
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

/// Encode a wire event into bytes (tests and fuzzing), as the smallest
/// record that holds `frames` when there are any.
#[cfg(test)]
pub fn encode(w: &Wire, frames: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_SIZE);
    v.extend_from_slice(&w.kind.to_ne_bytes());
    v.extend_from_slice(&w.func.to_ne_bytes());
    v.extend_from_slice(&w.flags.to_ne_bytes());
    v.extend_from_slice(&w.nframes.to_ne_bytes());
    v.extend_from_slice(&w.tgid.to_ne_bytes());
    v.extend_from_slice(&w.tid.to_ne_bytes());
    for x in [w.ts_ns, w.addr, w.size, w.old_addr, w.aux] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    if !frames.is_empty() {
        for f in frames {
            v.extend_from_slice(&f.to_ne_bytes());
        }
        let size = if frames.len() <= SHORT_FRAMES {
            SHORT_RECORD_SIZE
        } else {
            RECORD_SIZE
        };
        v.resize(size, 0);
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
            ts_ns: 99,
            addr: 0x1000,
            size: 64,
            ..Wire::default()
        }
    }

    #[test]
    fn encode_matches_repr_c_layout() {
        let w = wire(kind::ALLOC, func::MALLOC);
        let bytes = encode(&w, &[]);
        // SAFETY: Event is repr(C) plain data of EVENT_SIZE bytes.
        let raw =
            unsafe { std::slice::from_raw_parts((&w as *const Wire).cast::<u8>(), EVENT_SIZE) };
        assert_eq!(bytes, raw);
    }

    #[test]
    fn round_trip_alloc_with_frames() {
        let mut w = wire(kind::ALLOC, func::CALLOC);
        w.nframes = 3;
        let b = encode(&w, &[0x10, 0x20, 0x30]);
        let d = decode(&b).unwrap();
        assert_eq!(
            d.event,
            Event::Alloc {
                meta: Meta {
                    pid: 10,
                    tid: 11,
                    ts_ns: 99
                },
                func: AllocFn::Calloc,
                addr: 0x1000,
                size: 64,
                stack: StackRef::NONE,
            }
        );
        assert_eq!(d.frames.iter().collect::<Vec<_>>(), [0x10, 0x20, 0x30]);
        assert!(!d.truncated);
        w.flags = flags::TRUNCATED;
        assert!(decode(&encode(&w, &[1, 2, 3])).unwrap().truncated);
    }

    #[test]
    fn frame_counts_checked() {
        let mut w = wire(kind::ALLOC, func::MALLOC);
        w.nframes = STACK_DEPTH as u16 + 1;
        assert_eq!(
            decode(&encode(&w, &[1])),
            Err(DecodeError::Frames(w.nframes, kind::ALLOC))
        );
        // Frames claimed by a header-only record.
        w.nframes = 1;
        assert_eq!(
            decode(&encode(&w, &[])),
            Err(DecodeError::Frames(1, kind::ALLOC))
        );
        // Frames on a kind that has no stack.
        let mut f = wire(kind::FREE, 0);
        f.nframes = 1;
        assert_eq!(
            decode(&encode(&f, &[1])),
            Err(DecodeError::Frames(1, kind::FREE))
        );
        // A whole record with no frames is fine.
        let mut z = encode(&wire(kind::ALLOC, func::MALLOC), &[]);
        z.resize(RECORD_SIZE, 0);
        assert!(decode(&z).unwrap().frames.is_empty());
        // A short record holds 16 frames at most; the long one 64.
        let mut w = wire(kind::ALLOC, func::MALLOC);
        w.nframes = SHORT_FRAMES as u16 + 1;
        let mut b = encode(&w, &[]);
        b.resize(SHORT_RECORD_SIZE, 0);
        assert_eq!(decode(&b), Err(DecodeError::Frames(w.nframes, kind::ALLOC)));
        let deep: Vec<u64> = (1..=40).collect();
        w.nframes = 40;
        let b = encode(&w, &deep);
        assert_eq!(b.len(), RECORD_SIZE);
        assert_eq!(decode(&b).unwrap().frames.iter().collect::<Vec<_>>(), deep);
    }

    #[test]
    fn short_and_long_records_rejected() {
        let b = encode(&wire(kind::FREE, 0), &[]);
        for n in [0, 1, 8, EVENT_SIZE - 1] {
            assert_eq!(decode(&b[..n]), Err(DecodeError::Length(n)));
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::Length(EVENT_SIZE + 1)));
        long.resize(RECORD_SIZE + 8, 0);
        assert_eq!(decode(&long), Err(DecodeError::Length(RECORD_SIZE + 8)));
    }

    #[test]
    fn unknown_kind_and_func_rejected() {
        let enc = |k, f| encode(&wire(k, f), &[]);
        assert_eq!(decode(&enc(0, 0)), Err(DecodeError::Kind(0)));
        assert_eq!(
            decode(&enc(kind::MAX + 1, 0)),
            Err(DecodeError::Kind(kind::MAX + 1))
        );
        assert_eq!(
            decode(&enc(kind::ALLOC, func::MAX + 1)),
            Err(DecodeError::Func(func::MAX + 1, kind::ALLOC))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: xorshift bytes of every length, and
        // of the two valid lengths with small frame counts.
        let mut s: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for len in (0..200)
            .chain([RECORD_SIZE; 100])
            .chain([SHORT_RECORD_SIZE; 100])
        {
            for _ in 0..50 {
                let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if len >= SHORT_RECORD_SIZE {
                    v[6] = (next() % 80) as u8;
                    v[7] = 0;
                    v[0] = (next() % 9) as u8;
                    v[1] = 0;
                }
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
        let Event::Exit { comm, .. } = decode(&encode(&w, &[])).unwrap().event else {
            panic!()
        };
        assert_eq!(comm.text().as_deref(), Some("leaky-worker"));
        assert_eq!(Comm::default().text(), None);
    }
}
