//! Hash maps on the per-event path, with a fast hasher.
//!
//! Every allocation and free looks up its address, its stack's frames and
//! its process: std's SipHash (built to resist hash flooding from untrusted
//! keys) costs more than the lookups themselves. The keys here come from
//! the kernel and the allocators, and foldhash is still randomly seeded.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
