//! Stack frames of allocations: interned by content, and normalized to file
//! addresses while the process is still alive.

use crate::fastmap::FastMap;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    decode::StackRef,
    procmaps::{FileAddr, Snapshot},
};

#[derive(Default)]
pub struct Stacks {
    /// Interned stacks: id → frames, and frames → id.
    ips: FastMap<i32, Arc<[u64]>>,
    ids: FastMap<Arc<[u64]>, i32>,
    next_id: i32,
    snapshots: HashMap<u32, Snapshot>,
    /// (pid, return address) → file address of the call instruction.
    norm: HashMap<(u32, u64), Option<FileAddr>>,
    /// Reused by `intern_frames` (no allocation for a known stack).
    scratch: Vec<u64>,
    /// Frames that could not be placed in any mapping.
    pub unmapped_frames: u64,
}

impl Stacks {
    /// The id of a stack with these frames (innermost first).
    pub fn intern_frames(&mut self, frames: impl Iterator<Item = u64>) -> i32 {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend(frames);
        let id = match self.ids.get(buf.as_slice()) {
            Some(&id) => id,
            None => self.intern(buf.clone()),
        };
        self.scratch = buf;
        id
    }

    /// The id of a stack with these frames (innermost first).
    pub fn intern(&mut self, frames: Vec<u64>) -> i32 {
        if let Some(&id) = self.ids.get(frames.as_slice()) {
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        let frames: Arc<[u64]> = frames.into();
        self.ids.insert(frames.clone(), id);
        self.ips.insert(id, frames);
        id
    }

    /// Keep the interned stacks for which `keep` is true.
    pub fn retain_stacks(&mut self, keep: impl Fn(i32) -> bool) {
        self.ips.retain(|&id, _| keep(id));
        self.ids.retain(|_, id| keep(*id));
    }

    #[cfg(test)]
    pub fn interned(&self) -> usize {
        self.ips.len()
    }

    /// Raw frames of `s`, innermost first (none for an unknown stack).
    pub fn frames(&self, s: StackRef) -> Vec<u64> {
        self.ips.get(&s.id).map(|a| a.to_vec()).unwrap_or_default()
    }

    /// Take a snapshot of `pid`'s maps now, so frames of a process that
    /// exits before its stacks are read still normalize against it.
    pub fn prime(&mut self, pid: u32) {
        if let Ok(s) = Snapshot::read(pid)
            && !s.is_empty()
        {
            self.snapshots.insert(pid, s);
        }
    }

    /// Keep what is known of the processes for which `keep` is true.
    pub fn retain_processes(&mut self, keep: impl Fn(u32) -> bool) {
        self.snapshots.retain(|&pid, _| keep(pid));
        self.norm.retain(|&(pid, _), _| keep(pid));
    }

    /// Forget what was known of `pid`'s address space (it exec'd).
    pub fn forget_process(&mut self, pid: u32) {
        self.snapshots.remove(&pid);
        self.norm.retain(|&(p, _), _| p != pid);
    }

    /// Normalize every frame of `stacks` of live process `pid`, reading its
    /// maps again when a frame is outside the last snapshot.
    pub fn normalize(&mut self, pid: u32, stacks: impl IntoIterator<Item = StackRef>) {
        self.normalize_with(pid, stacks, |pid| Snapshot::read(pid).ok());
    }

    pub fn normalize_with(
        &mut self,
        pid: u32,
        stacks: impl IntoIterator<Item = StackRef>,
        mut read: impl FnMut(u32) -> Option<Snapshot>,
    ) {
        let mut todo: Vec<u64> = Vec::new();
        let mut seen = HashSet::new();
        for s in stacks {
            for ip in self.frames(s) {
                if !self.norm.contains_key(&(pid, ip)) && seen.insert(ip) {
                    todo.push(ip);
                }
            }
        }
        if todo.is_empty() {
            return;
        }
        let mut refreshed = false;
        for ip in todo {
            // A return address: the call is the instruction before it.
            let at = ip.saturating_sub(1);
            let mut hit = self.snapshots.get(&pid).and_then(|s| s.lookup(at));
            if hit.is_none() && !refreshed {
                refreshed = true;
                if let Some(s) = read(pid).filter(|s| !s.is_empty()) {
                    self.snapshots.insert(pid, s);
                }
                hit = self.snapshots.get(&pid).and_then(|s| s.lookup(at));
            }
            if hit.is_some() {
                self.norm.insert((pid, ip), hit);
            } else if refreshed {
                // Maps were read and the frame is in none: final.
                self.unmapped_frames += 1;
                self.norm.insert((pid, ip), None);
            }
        }
    }

    /// The file address of frame `ip` of `pid`, if normalized.
    pub fn file_addr(&self, pid: u32, ip: u64) -> Option<&FileAddr> {
        self.norm.get(&(pid, ip)).and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interned(s: &mut Stacks) -> i32 {
        s.intern(vec![0x1010, 0x2020, 0x3030])
    }

    #[test]
    fn interning_is_by_content() {
        let mut s = Stacks::default();
        let a = interned(&mut s);
        let b = s.intern(vec![0x1010, 0x2020]);
        assert_ne!(a, b);
        assert_eq!(interned(&mut s), a);
        assert_eq!(s.interned(), 2);
        s.retain_stacks(|id| id == b);
        assert_eq!(s.interned(), 1);
        assert!(s.frames(StackRef { id: a }).is_empty());
        // A forgotten stack comes back under a new id.
        assert_ne!(interned(&mut s), a);
    }

    #[test]
    fn interning_from_frames_matches() {
        let mut s = Stacks::default();
        let a = interned(&mut s);
        assert_eq!(s.intern_frames([0x1010, 0x2020, 0x3030].into_iter()), a);
        let b = s.intern_frames([0x1010].into_iter());
        assert_ne!(b, a);
        assert_eq!(s.frames(StackRef { id: b }), [0x1010]);
        assert!(s.frames(StackRef::NONE).is_empty());
    }

    #[test]
    fn normalizes_at_return_address_minus_one() {
        let mut s = Stacks::default();
        let id = interned(&mut s);
        let maps =
            "0000-2000 r-xp 00000000 fe:01 1 /bin/a\n3000-4000 r-xp 00005000 fe:01 2 /lib/b.so\n";
        let mut reads = 0;
        s.normalize_with(1, [StackRef { id }], |_| {
            reads += 1;
            Some(Snapshot::parse(maps))
        });
        assert_eq!(reads, 1);
        assert_eq!(s.file_addr(1, 0x1010).unwrap().file_offset, 0x100f);
        assert_eq!(s.file_addr(1, 0x2020), None);
        assert_eq!(&*s.file_addr(1, 0x3030).unwrap().path, "/lib/b.so");
        assert_eq!(s.file_addr(1, 0x3030).unwrap().file_offset, 0x502f);
        assert_eq!(s.unmapped_frames, 1);
        // Everything known: no more reads.
        s.normalize_with(1, [StackRef { id }], |_| {
            reads += 1;
            None
        });
        assert_eq!(reads, 1);
    }
}
