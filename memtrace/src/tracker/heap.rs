//! Outstanding heap blocks of a process, by address.
//!
//! This table is most of memtrace's memory (one entry per live allocation
//! of every traced process), so a stored [`Block`] is 16 bytes: the size
//! and the stack index share one word, next to the timestamp. A block's
//! sampling weight is not stored: it is a function of its size (see
//! `Process::weight`).
//!
//! Sizes of 1 TiB - 1 and more (a malloc that large can succeed with
//! overcommit) and stack indexes of 2^24 and more do not fit the packed
//! word: such a block is "spilled", its exact size and stack kept in a side
//! map, so nothing is ever truncated. The side map stays empty (and
//! unallocated) in practice.
//!
//! The blocks are spread over [`SHARDS`] tables by a hash of the address.
//! A growing table briefly holds its old and new bucket arrays (3 buckets
//! for every 2 after): one big table peaks at ~1.5 times its size while it
//! doubles, each shard at only 1/[`SHARDS`] of that excess.

use crate::fastmap::FastMap;

/// Bits of the packed word holding the size (low bits).
const SIZE_BITS: u32 = 40;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;
/// Bits holding the stack index (high bits): 16M stacks per process.
const STACK_BITS: u32 = u64::BITS - SIZE_BITS;
const STACK_MASK: u64 = (1 << STACK_BITS) - 1;
/// Size field of a spilled block (so inline sizes are below it).
const SPILLED: u64 = SIZE_MASK;

/// An outstanding heap block, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Size in the low [`SIZE_BITS`], index into `Process::stacks` in the
    /// high [`STACK_BITS`]; a size field of [`SPILLED`] means both are in
    /// [`Heap::spilled`].
    packed: u64,
    pub ts_ns: u64,
}

const _: () = assert!(std::mem::size_of::<Block>() == 16);

impl Block {
    /// Largest size kept inline.
    pub const MAX_SIZE: u64 = SPILLED - 1;
    /// Largest stack index kept inline.
    pub const MAX_STACK: u32 = STACK_MASK as u32;

    /// The block, when `size` and `stack` fit inline.
    pub fn pack(size: u64, stack: u32, ts_ns: u64) -> Option<Self> {
        (size <= Self::MAX_SIZE && stack <= Self::MAX_STACK).then_some(Self {
            packed: size | (u64::from(stack) << SIZE_BITS),
            ts_ns,
        })
    }

    fn spilled(ts_ns: u64) -> Self {
        Self {
            packed: SPILLED,
            ts_ns,
        }
    }

    fn is_spilled(self) -> bool {
        self.packed & SIZE_MASK == SPILLED
    }

    /// Size in bytes; `None` when spilled (the heap knows it).
    pub fn size(self) -> Option<u64> {
        (!self.is_spilled()).then_some(self.packed & SIZE_MASK)
    }

    /// Index into `Process::stacks`; `None` when spilled.
    pub fn stack(self) -> Option<u32> {
        // The shift leaves STACK_BITS (24) bits: the cast is lossless.
        (!self.is_spilled()).then_some((self.packed >> SIZE_BITS) as u32)
    }
}

/// A heap block, unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    /// Index into `Process::stacks`.
    pub stack: u32,
    pub ts_ns: u64,
}

/// Tables the blocks are spread over.
const SHARDS: usize = 16;

/// The shard of `addr`: the top bits of a Fibonacci hash, which mixes the
/// low bits (pointers share alignment zeros) into them.
fn shard(addr: u64) -> usize {
    (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (u64::BITS - SHARDS.ilog2())) as usize
}

/// Outstanding heap blocks by address.
#[derive(Default)]
pub(crate) struct Heap {
    blocks: [FastMap<u64, Block>; SHARDS],
    /// Exact (size, stack) of the spilled blocks.
    spilled: FastMap<u64, (u64, u32)>,
}

impl Heap {
    pub fn len(&self) -> usize {
        self.blocks.iter().map(FastMap::len).sum()
    }

    /// Blocks whose size or stack did not fit inline.
    #[cfg(test)]
    pub fn spilled_len(&self) -> usize {
        self.spilled.len()
    }

    /// Blocks per shard.
    #[cfg(test)]
    pub fn shard_lens(&self) -> [usize; SHARDS] {
        std::array::from_fn(|i| self.blocks[i].len())
    }

    /// Hold `e` at `addr`, replacing whatever was there.
    pub fn insert(&mut self, addr: u64, e: Entry) {
        let block = match Block::pack(e.size, e.stack, e.ts_ns) {
            Some(b) => {
                if !self.spilled.is_empty() {
                    self.spilled.remove(&addr);
                }
                b
            }
            None => {
                self.spilled.insert(addr, (e.size, e.stack));
                Block::spilled(e.ts_ns)
            }
        };
        self.blocks[shard(addr)].insert(addr, block);
    }

    pub fn remove(&mut self, addr: u64) -> Option<Entry> {
        let b = self.blocks[shard(addr)].remove(&addr)?;
        match (b.size(), b.stack()) {
            (Some(size), Some(stack)) => Some(Entry {
                size,
                stack,
                ts_ns: b.ts_ns,
            }),
            _ => self.spilled.remove(&addr).map(|(size, stack)| Entry {
                size,
                stack,
                ts_ns: b.ts_ns,
            }),
        }
    }

    /// The addresses of the blocks.
    pub fn addrs(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.iter().flat_map(|m| m.keys().copied())
    }

    pub fn iter(&self) -> impl Iterator<Item = Entry> + '_ {
        self.blocks
            .iter()
            .flat_map(|m| m.iter())
            .filter_map(|(addr, &b)| self.unpack(*addr, b))
    }

    fn unpack(&self, addr: u64, b: Block) -> Option<Entry> {
        let (size, stack) = match (b.size(), b.stack()) {
            (Some(size), Some(stack)) => (size, stack),
            _ => *self.spilled.get(&addr)?,
        };
        Some(Entry {
            size,
            stack,
            ts_ns: b.ts_ns,
        })
    }
}
