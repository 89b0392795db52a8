//! Reading the BPF ring buffer a batch at a time.
//!
//! aya's `RingBuf` reads the producer position and publishes the consumer
//! position once per record. Both live on cache lines the kernel's
//! `bpf_ringbuf_reserve` touches on every event, so while userspace drains,
//! every event the traced program emits pays cross-core cache misses. Here
//! the producer position is read once per batch, and the consumer position
//! published every [`PUBLISH_EVERY`] records (so a long backlog frees room
//! as it is read, not only at its end) and at the end of the batch.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position
//! (mapped read-write), page 1 the producer position, then the data pages,
//! mapped twice in a row so a record that wraps around reads contiguously.
//! Each record starts with an 8-byte header: its length (bit 31: still
//! being written; bit 30: discarded) and a page offset.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use anyhow::{Result, bail};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;
/// Records between two publications of the consumer position.
pub const PUBLISH_EVERY: usize = 512;

struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: i32, offset: usize) -> Result<Self> {
        // SAFETY: a fresh shared mapping of the ring buffer map's fd; the
        // kernel checks offset, length and protection.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "mapping the ring buffer: {}",
                std::io::Error::last_os_error()
            );
        }
        match NonNull::new(p.cast::<u8>()) {
            Some(ptr) => Ok(Self { ptr, len }),
            None => bail!("mapping the ring buffer: null mapping"),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct Ring {
    consumer: Mapping,
    /// The producer position page, then the data pages twice.
    producer: Mapping,
    page: usize,
    mask: usize,
    pos: usize,
}

// SAFETY: the mappings are owned by the struct and only read through `&mut
// self`; the kernel's concurrent writes are synchronized by the positions'
// acquire/release protocol.
unsafe impl Send for Ring {}

impl Ring {
    /// Map the ring buffer map `fd` of `size` bytes (a power of two).
    pub fn new(fd: BorrowedFd<'_>, size: usize) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        if !size.is_power_of_two() || size < page {
            bail!("ring buffer of {size} bytes: not a power of two of pages");
        }
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page)?;
        let mut ring = Self {
            consumer,
            producer,
            page,
            mask: size - 1,
            pos: 0,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: page 0 of the map holds the consumer position, an
        // aligned unsigned long, for as long as the mapping lives.
        unsafe { self.consumer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: as above, for the producer position on its own page.
        unsafe { self.producer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    /// Hand every complete record to `f`, in order, until the ring is
    /// empty. Returns how many were read (discarded ones not counted).
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        loop {
            let (got, more) = self.batch(&mut f);
            n += got;
            if !more {
                return n;
            }
        }
    }

    /// The records up to the producer position, read once. Returns how
    /// many were read, and whether the batch reached that position (the
    /// producer may have gone on meanwhile) rather than a record still
    /// being written.
    fn batch(&mut self, f: &mut impl FnMut(&[u8])) -> (usize, bool) {
        let end = self.producer_pos().load(Ordering::Acquire);
        let start = self.pos;
        let mut published = self.pos;
        let mut n = 0;
        let mut since = 0;
        while self.pos < end {
            let off = self.page + (self.pos & self.mask);
            // SAFETY: `off` is within the first copy of the data pages and
            // the header is 8-aligned (positions advance by multiples of 8).
            let hdr = unsafe {
                self.producer
                    .ptr
                    .add(off)
                    .cast::<AtomicU32>()
                    .as_ref()
                    .load(Ordering::Acquire)
            };
            if hdr & BUSY != 0 {
                self.publish(&mut published);
                return (n, false);
            }
            let len = (hdr & !(BUSY | DISCARD)) as usize;
            if len > self.mask + 1 - HEADER {
                // A corrupt header: stop rather than read out of bounds.
                self.publish(&mut published);
                return (n, false);
            }
            if hdr & DISCARD == 0 {
                // SAFETY: the record's bytes follow its header and, the data
                // being mapped twice, are contiguous even when they wrap; the
                // kernel does not reuse them until the consumer position
                // passes them, which happens after `f` returns.
                let data = unsafe {
                    std::slice::from_raw_parts(self.producer.ptr.add(off + HEADER).as_ptr(), len)
                };
                f(data);
                n += 1;
            }
            self.pos += (HEADER + len).next_multiple_of(8);
            since += 1;
            if since == PUBLISH_EVERY {
                self.publish(&mut published);
                since = 0;
            }
        }
        self.publish(&mut published);
        (n, self.pos != start)
    }

    /// Tell the kernel the records before `self.pos` may be reused.
    fn publish(&self, published: &mut usize) {
        if self.pos != *published {
            self.consumer_pos().store(self.pos, Ordering::Release);
            *published = self.pos;
        }
    }
}
