//! Model of a backend's radix prefix cache (SGLang's RadixAttention).
//!
//! A token radix tree with compressed edges and a token capacity. A finished
//! request's prompt + output is inserted; a new prompt reuses its longest
//! cached prefix. When room is needed, whole unpinned leaves are evicted in
//! least-recently-used order. Requests in flight pin their cached prefix
//! (SGLang's `lock_ref`): a pinned node and its ancestors are never evicted.
//!
//! Like SGLang, a match or insert that ends inside an edge splits it there, so
//! pins and access times always apply to whole nodes. Time is a logical clock
//! that ticks once per call, so the model is deterministic.

mod arena;
mod lru;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use crate::error::{CoreError, CoreResult};
use arena::{Arena, NodeIx, ROOT};
use lru::{Entry, LruHeap};

/// Counters reported by [`RadixCache::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RadixStats {
    pub size: usize,
    pub capacity: usize,
    pub pinned: usize,
    /// Nodes in the tree, the root excluded.
    pub nodes: usize,
    /// `match_len` calls (each prompt of `match_many` counts once).
    pub queries: u64,
    /// Tokens asked for by those queries.
    pub query_tokens: u64,
    /// Tokens of those queries found in the cache.
    pub hit_tokens: u64,
    /// Tokens added by `insert`.
    pub inserted: u64,
    /// Tokens removed by eviction (explicit, on insert, or by `clear`).
    pub evicted: u64,
}

/// Token radix tree with a capacity, LRU leaf eviction and pinning.
pub struct RadixCache {
    arena: Arena,
    lru: LruHeap,
    capacity: usize,
    size: usize,
    pinned: usize,
    clock: u64,
    /// Live pins per pinned sequence: (end node, pinned length), most recent
    /// last. The end node keeps its id across later splits (a split creates
    /// the upper part as a new node), so it always ends the pinned path.
    pins: HashMap<Vec<u32>, Vec<(NodeIx, usize)>>,
    stats: RadixStats,
}

impl RadixCache {
    /// An empty cache holding at most `capacity` tokens (at least 1).
    pub fn new(capacity: usize) -> CoreResult<Self> {
        if capacity == 0 {
            return Err(CoreError::InvalidArgument("radix cache capacity must be at least 1".into()));
        }
        Ok(RadixCache {
            arena: Arena::new(),
            lru: LruHeap::default(),
            capacity,
            size: 0,
            pinned: 0,
            clock: 0,
            pins: HashMap::new(),
            stats: RadixStats::default(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens cached now (never above the capacity).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Tokens on pinned paths.
    pub fn pinned(&self) -> usize {
        self.pinned
    }

    pub fn stats(&self) -> RadixStats {
        RadixStats {
            size: self.size,
            capacity: self.capacity,
            pinned: self.pinned,
            nodes: self.arena.live() - 1,
            ..self.stats
        }
    }

    /// Length of the longest cached prefix of `tokens`; marks it as used now.
    pub fn match_len(&mut self, tokens: &[u32]) -> usize {
        let (end, matched) = self.walk(tokens);
        self.push_if_evictable(end);
        self.stats.queries += 1;
        self.stats.query_tokens += tokens.len() as u64;
        self.stats.hit_tokens += matched as u64;
        matched
    }

    /// Cache `tokens`, evicting LRU leaves as needed. Returns how many new
    /// tokens were cached: when pinned tokens leave too little room, only the
    /// part that fits right after the cached prefix is kept.
    pub fn insert(&mut self, tokens: &[u32]) -> usize {
        let (end, matched) = self.walk(tokens);
        let needed = tokens.len() - matched;
        if needed == 0 {
            self.push_if_evictable(end);
            return 0;
        }
        // The path being extended must survive the eviction it triggers.
        self.lock(end);
        if self.size + needed > self.capacity {
            self.evict_leaves(self.size + needed - self.capacity);
        }
        let take = needed.min(self.capacity - self.size);
        let mut leaf = None;
        if take > 0 {
            let key = tokens[matched..matched + take].to_vec();
            let first = key[0];
            let ix = self.arena.alloc(end, key, self.clock);
            self.arena[end].children.insert(first, ix);
            self.size += take;
            self.stats.inserted += take as u64;
            leaf = Some(ix);
        }
        self.unlock(end);
        if let Some(ix) = leaf {
            self.push_if_evictable(ix);
        }
        take
    }

    /// Pin the cached prefix of `tokens` (a request in flight) so it cannot be
    /// evicted; returns the pinned length (0 when nothing is cached).
    pub fn pin(&mut self, tokens: &[u32]) -> usize {
        let (end, matched) = self.walk(tokens);
        self.lock(end);
        self.pins.entry(tokens.to_vec()).or_default().push((end, matched));
        matched
    }

    /// Undo the most recent live pin of exactly this sequence; returns the
    /// length that pin covered.
    pub fn unpin(&mut self, tokens: &[u32]) -> CoreResult<usize> {
        let Some(stack) = self.pins.get_mut(tokens) else {
            return Err(CoreError::InvalidArgument(format!(
                "unpin of a sequence of {} tokens that is not pinned",
                tokens.len()
            )));
        };
        let (end, len) = stack.pop().expect("pin stacks are never left empty");
        if stack.is_empty() {
            self.pins.remove(tokens);
        }
        self.unlock(end);
        Ok(len)
    }

    /// Evict at least `tokens` unpinned tokens (whole leaves, least recently
    /// used first) or everything evictable; returns how many were evicted.
    pub fn evict(&mut self, tokens: usize) -> usize {
        self.evict_leaves(tokens)
    }

    /// Drop every unpinned token (SGLang's /flush_cache).
    pub fn clear(&mut self) {
        self.evict_leaves(usize::MAX);
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Follow `tokens` down the tree, marking the matched path as used now.
    /// A match ending inside an edge splits it, so the match ends on a node.
    /// Returns that node and the matched length.
    fn walk(&mut self, tokens: &[u32]) -> (NodeIx, usize) {
        let now = self.tick();
        let mut node = ROOT;
        let mut matched = 0;
        self.arena[ROOT].last_access = now;
        while matched < tokens.len() {
            let Some(&child) = self.arena[node].children.get(&tokens[matched]) else {
                break;
            };
            let key = &self.arena[child].key;
            let common = key.iter().zip(&tokens[matched..]).take_while(|(a, b)| a == b).count();
            let edge = key.len();
            let next = if common < edge { self.split(child, common) } else { child };
            self.arena[next].last_access = now;
            node = next;
            matched += common;
            if common < edge {
                break;
            }
        }
        (node, matched)
    }

    /// Split `child`'s edge after `at` tokens. The upper part becomes a new
    /// node with the same pins and access time; `child` keeps the lower part
    /// and its id (so pin records and heap entries that name it stay right).
    fn split(&mut self, child: NodeIx, at: usize) -> NodeIx {
        debug_assert!(at > 0 && at < self.arena[child].key.len());
        let parent = self.arena[child].parent;
        let upper_key: Vec<u32> = self.arena[child].key.drain(..at).collect();
        let first = upper_key[0];
        let (time, lock_ref) = (self.arena[child].last_access, self.arena[child].lock_ref);
        let upper = self.arena.alloc(parent, upper_key, time);
        self.arena[upper].lock_ref = lock_ref;
        let lower_first = self.arena[child].key[0];
        self.arena[upper].children.insert(lower_first, child);
        self.arena[child].parent = upper;
        self.arena[parent].children.insert(first, upper);
        upper
    }

    /// Add one pin to every node from `node` up to the root.
    fn lock(&mut self, mut node: NodeIx) {
        while node != ROOT {
            let n = &mut self.arena[node];
            if n.lock_ref == 0 {
                self.pinned += n.key.len();
            }
            n.lock_ref += 1;
            node = n.parent;
        }
    }

    /// Remove one pin from every node from `node` up to the root.
    fn unlock(&mut self, end: NodeIx) {
        let mut node = end;
        while node != ROOT {
            let n = &mut self.arena[node];
            debug_assert!(n.lock_ref > 0);
            n.lock_ref -= 1;
            if n.lock_ref == 0 {
                self.pinned -= n.key.len();
            }
            node = n.parent;
        }
        // Only the end of a path can be a leaf.
        self.push_if_evictable(end);
    }

    fn is_evictable_leaf(&self, node: NodeIx) -> bool {
        let n = &self.arena[node];
        node != ROOT && n.live && n.children.is_empty() && n.lock_ref == 0
    }

    fn entry(&self, node: NodeIx) -> Entry {
        let n = &self.arena[node];
        Entry { time: n.last_access, node, generation: n.generation }
    }

    /// Record `node` in the LRU heap if it is an evictable leaf now.
    fn push_if_evictable(&mut self, node: NodeIx) {
        if !self.is_evictable_leaf(node) {
            return;
        }
        self.lru.push(self.entry(node));
        if self.lru.len() > 2 * self.arena.live() + 64 {
            let fresh: Vec<Entry> = self
                .arena
                .live_ids()
                .filter(|&ix| self.is_evictable_leaf(ix))
                .map(|ix| self.entry(ix))
                .collect();
            self.lru.rebuild(fresh.into_iter());
        }
    }

    fn is_current(&self, e: &Entry) -> bool {
        let n = &self.arena[e.node];
        n.generation == e.generation && n.last_access == e.time && self.is_evictable_leaf(e.node)
    }

    /// Evict least recently used leaves until `target` tokens are freed or
    /// nothing evictable is left; returns the tokens freed.
    fn evict_leaves(&mut self, target: usize) -> usize {
        let mut freed = 0;
        while freed < target {
            let Some(e) = self.lru.pop() else { break };
            if !self.is_current(&e) {
                continue;
            }
            #[cfg(test)]
            self.check_victim(&e);
            freed += self.remove_leaf(e.node);
        }
        freed
    }

    fn remove_leaf(&mut self, leaf: NodeIx) -> usize {
        let parent = self.arena[leaf].parent;
        let len = self.arena[leaf].key.len();
        let first = self.arena[leaf].key[0];
        self.arena[parent].children.remove(&first);
        self.arena.free(leaf);
        self.size -= len;
        self.stats.evicted += len as u64;
        self.push_if_evictable(parent);
        len
    }
}

/// Consistency checks and inspection used by the tests.
#[cfg(test)]
impl RadixCache {
    /// The heap's victim must be the evictable leaf a full scan would pick.
    fn check_victim(&self, e: &Entry) {
        if self.arena.live() > 256 {
            return;
        }
        let best = self
            .arena
            .live_ids()
            .filter(|&ix| self.is_evictable_leaf(ix))
            .map(|ix| (self.arena[ix].last_access, ix))
            .min()
            .expect("a current entry implies an evictable leaf");
        assert_eq!(best, (e.time, e.node), "LRU heap picked a leaf that is not the oldest");
    }

    /// Every structural invariant; panics on the first violation.
    pub(crate) fn check_invariants(&self) {
        let mut size = 0;
        let mut pinned = 0;
        for ix in self.arena.live_ids() {
            let n = &self.arena[ix];
            let mut child_locks = 0;
            for (&first, &c) in &n.children {
                let child = &self.arena[c];
                assert!(child.live, "child {c} of {ix} is freed");
                assert_eq!(child.parent, ix, "parent link of {c}");
                assert_eq!(child.key.first(), Some(&first), "child key of {c}");
                child_locks += child.lock_ref;
            }
            if ix == ROOT {
                continue;
            }
            assert!(!n.key.is_empty(), "node {ix} has an empty edge");
            assert!(n.lock_ref >= child_locks, "node {ix} has fewer pins than its children");
            size += n.key.len();
            if n.lock_ref > 0 {
                pinned += n.key.len();
            }
        }
        assert_eq!(size, self.size, "size is not the sum of edge lengths");
        assert_eq!(pinned, self.pinned, "pinned is not the sum of pinned edges");
        assert!(self.size <= self.capacity, "size above capacity");
        assert!(self.lru.len() <= 2 * self.arena.live() + 64, "LRU heap not compacted");
        // Each pin of a non-empty prefix holds exactly one lock on a top-level node.
        let live_pins: usize = self.pins.values().flatten().filter(|(_, len)| *len > 0).count();
        let root_locks: u32 = self.arena[ROOT].children.values().map(|&c| self.arena[c].lock_ref).sum();
        assert_eq!(root_locks as usize, live_pins, "top-level pins disagree with pin records");
        for &(end, len) in self.pins.values().flatten() {
            assert!(self.arena[end].live, "pinned node {end} was freed");
            assert!(end == ROOT || self.arena[end].lock_ref > 0, "pinned node {end} has no lock");
            let mut depth = 0;
            let mut ix = end;
            while ix != ROOT {
                depth += self.arena[ix].key.len();
                ix = self.arena[ix].parent;
            }
            assert_eq!(depth, len, "pin record no longer ends its path");
        }
    }

    /// Every root-to-leaf token sequence in the tree.
    pub(crate) fn cached_sequences(&self) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, Vec::new())];
        while let Some((ix, prefix)) = stack.pop() {
            let n = &self.arena[ix];
            if n.children.is_empty() && ix != ROOT {
                out.push(prefix);
                continue;
            }
            for &c in n.children.values() {
                let mut p = prefix.clone();
                p.extend_from_slice(&self.arena[c].key);
                stack.push((c, p));
            }
        }
        out
    }

    /// Longest cached prefix without touching access times or splitting.
    pub(crate) fn peek_len(&self, tokens: &[u32]) -> usize {
        let mut node = ROOT;
        let mut matched = 0;
        while matched < tokens.len() {
            let Some(&child) = self.arena[node].children.get(&tokens[matched]) else { break };
            let key = &self.arena[child].key;
            let common = key.iter().zip(&tokens[matched..]).take_while(|(a, b)| a == b).count();
            matched += common;
            if common < key.len() {
                break;
            }
            node = child;
        }
        matched
    }
}
