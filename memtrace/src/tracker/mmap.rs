//! Anonymous mmap regions of a process, by page range.
//!
//! A region remembers the bytes that were requested (`req_end`) as well as
//! the pages it covers (`end`), so reported sizes stay "as requested" while
//! munmap/mremap work on pages. Cutting a region in the middle leaves two
//! pieces of one allocation: it is still one outstanding allocation until
//! its last piece goes.

use std::collections::{BTreeMap, HashMap};

use super::process::{Kind, Process};
use crate::decode::StackRef;

const PAGE: u64 = 4096;
/// `MAP_ANONYMOUS` on Linux x86-64.
const MAP_ANONYMOUS: u64 = 0x20;

fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE - 1) & !(PAGE - 1)
}

/// A successful mremap call.
#[derive(Clone, Copy, Debug)]
pub struct Mremap {
    pub old: u64,
    pub old_len: u64,
    pub new: u64,
    pub new_len: u64,
    pub stack: StackRef,
    pub ts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    /// End of the pages covered.
    pub end: u64,
    /// End of the bytes requested.
    pub req_end: u64,
    pub ts_ns: u64,
    pub stack: u32,
    /// Allocation this piece belongs to.
    id: u64,
}

impl Region {
    /// Requested bytes this piece still covers.
    pub fn bytes(&self) -> u64 {
        self.end.min(self.req_end).saturating_sub(self.start)
    }
}

#[derive(Default)]
pub(crate) struct Regions {
    by_start: BTreeMap<u64, Region>,
    pieces: HashMap<u64, u32>,
    next_id: u64,
}

impl Regions {
    pub fn iter(&self) -> impl Iterator<Item = &Region> {
        self.by_start.values()
    }

    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    fn containing(&self, addr: u64) -> Option<&Region> {
        self.by_start
            .range(..=addr)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| addr < r.end)
    }

    fn overlapping(&self, start: u64, end: u64) -> Vec<u64> {
        self.by_start
            .range(..end)
            .rev()
            .take_while(|(_, r)| r.end > start)
            .map(|(&s, _)| s)
            .collect()
    }

    fn insert(&mut self, r: Region) {
        *self.pieces.entry(r.id).or_insert(0) += 1;
        self.by_start.insert(r.start, r);
    }

    /// Remove a piece; true when it was its allocation's last.
    fn remove(&mut self, start: u64) -> Option<(Region, bool)> {
        let r = self.by_start.remove(&start)?;
        let last = match self.pieces.get_mut(&r.id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.pieces.remove(&r.id);
                true
            }
        };
        Some((r, last))
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl Process {
    /// Remove `[start, end)` from every tracked region it overlaps.
    fn cut(&mut self, start: u64, end: u64) {
        for s in self.regions.overlapping(start, end) {
            let Some((r, _)) = self.regions.remove(s) else {
                continue;
            };
            let mut kept = 0;
            if r.start < start {
                let left = Region { end: start, ..r };
                kept += left.bytes();
                self.regions.insert(left);
            }
            if r.end > end {
                let right = Region { start: end, ..r };
                kept += right.bytes();
                self.regions.insert(right);
            }
            let last = !self.regions.pieces.contains_key(&r.id);
            self.sub(r.stack, r.bytes().saturating_sub(kept), last, 1.0);
        }
    }

    pub fn mmap(&mut self, addr: u64, len: u64, flags: u64, stack: StackRef, ts: u64) {
        self.last_ns = self.last_ns.max(ts);
        let end = addr.saturating_add(page_up(len));
        // A new mapping replaces whatever it overlays (MAP_FIXED).
        self.cut(addr, end);
        if flags & MAP_ANONYMOUS == 0 || len == 0 {
            return;
        }
        if !self.room {
            self.counters.dropped += 1;
            return;
        }
        let idx = self.stack_idx(stack, Kind::Mmap);
        self.insert_region(addr, end, addr.saturating_add(len), ts, idx);
    }

    fn insert_region(&mut self, start: u64, end: u64, req_end: u64, ts: u64, stack: u32) {
        let id = self.regions.new_id();
        let r = Region {
            start,
            end,
            req_end,
            ts_ns: ts,
            stack,
            id,
        };
        self.add(stack, r.bytes(), true, 1.0);
        self.regions.insert(r);
    }

    pub fn munmap(&mut self, addr: u64, len: u64) {
        self.cut(addr, addr.saturating_add(page_up(len)));
    }

    /// Move/resize the tracked region at `old` (untracked memory is not
    /// ours, and stays ignored). As with realloc, the resized region belongs
    /// to the mremap call site from now on.
    pub fn mremap(&mut self, m: Mremap) {
        self.last_ns = self.last_ns.max(m.ts);
        if self.regions.containing(m.old).is_none() {
            return;
        }
        self.cut(m.old, m.old.saturating_add(page_up(m.old_len)));
        if m.new_len == 0 {
            return;
        }
        let end = m.new.saturating_add(page_up(m.new_len));
        self.cut(m.new, end);
        let idx = self.stack_idx(m.stack, Kind::Mmap);
        self.insert_region(m.new, end, m.new.saturating_add(m.new_len), m.ts, idx);
    }
}
