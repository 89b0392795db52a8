//! The kernel's set of live sampled blocks, seen from userspace: when a
//! process exits, the blocks it still held leave it (and their counts leave
//! the lane filter in front of it), so the set does not fill with the dead.

use std::{os::fd::AsFd as _, ptr::NonNull, sync::atomic::AtomicU64};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData},
};
use memtrace_common::{
    MAP_SAMPLED, MAP_SAMPLED_LANES, SAMPLED_LANE_WORDS, SampledKey, sampled_lane,
};

pub struct SampledSet {
    set: HashMap<MapData, SampledKey, u8>,
    lanes: Lanes,
}

impl SampledSet {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self> {
        let set = ebpf
            .take_map(MAP_SAMPLED)
            .ok_or_else(|| anyhow!("eBPF map {MAP_SAMPLED} missing"))?;
        let set = HashMap::try_from(set)
            .with_context(|| format!("eBPF map {MAP_SAMPLED} has an unexpected type"))?;
        let Some(Map::Array(lanes)) = ebpf.take_map(MAP_SAMPLED_LANES) else {
            return Err(anyhow!(
                "eBPF map {MAP_SAMPLED_LANES} missing or not an array"
            ));
        };
        Ok(Self {
            set,
            lanes: Lanes::map(lanes)?,
        })
    }

    /// Forget the sampled block of `pid` at `addr`, if the set holds it.
    pub fn forget(&mut self, pid: u32, addr: u64) {
        let key = SampledKey {
            tgid: pid,
            _pad: 0,
            addr,
        };
        // Absent: its free was seen after all, or it was never inserted
        // (the set was full); its lane does not count it either way.
        if self.set.remove(&key).is_ok() {
            self.lanes.decrement(addr);
        }
    }
}

/// `SAMPLED_LANES` mapped into memtrace (the eBPF programs count in it with
/// atomic adds; so does this side).
struct Lanes {
    base: NonNull<AtomicU64>,
    /// Keeps the map alive while it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory, only ever accessed through
// atomics, valid wherever `Lanes` is.
unsafe impl Send for Lanes {}

const LANES_BYTES: usize = SAMPLED_LANE_WORDS as usize * 8;

impl Lanes {
    fn map(map: MapData) -> Result<Self> {
        // SAFETY: maps the array's pages (it was created BPF_F_MMAPABLE
        // with exactly LANES_BYTES of values) shared and writable; the
        // result is checked before use and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LANES_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd()),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context(format!("mapping eBPF map {MAP_SAMPLED_LANES}"));
        }
        let base = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| anyhow!("mapping eBPF map {MAP_SAMPLED_LANES}: null"))?;
        Ok(Self { base, _map: map })
    }

    fn decrement(&self, addr: u64) {
        let (word, shift) = sampled_lane(addr);
        if word >= SAMPLED_LANE_WORDS {
            return;
        }
        // SAFETY: `word` is in bounds of the mapping, which lives as long as
        // `self`; u64 words of a page-aligned mapping are aligned for
        // AtomicU64; the kernel side only ever touches them atomically.
        let w = unsafe { self.base.add(word as usize).as_ref() };
        w.fetch_add(u64::MAX << shift, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, never used after.
        unsafe { libc::munmap(self.base.as_ptr().cast(), LANES_BYTES) };
    }
}
