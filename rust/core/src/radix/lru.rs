//! Min-heap of evictable leaves keyed by last-access time.
//!
//! Entries are never updated in place: a leaf whose time changes, or that gets
//! a child or a pin, just leaves a stale entry behind, and the owner checks
//! each popped entry against the live node (lazy invalidation). The owner
//! rebuilds the heap when stale entries dominate, so memory stays O(nodes).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::arena::NodeIx;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) struct Entry {
    pub time: u64,
    pub node: NodeIx,
    pub generation: u32,
}

#[derive(Default)]
pub(super) struct LruHeap {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl LruHeap {
    pub fn push(&mut self, entry: Entry) {
        self.heap.push(Reverse(entry));
    }

    /// The oldest entry (ties: lowest node id), possibly stale.
    pub fn pop(&mut self) -> Option<Entry> {
        self.heap.pop().map(|Reverse(e)| e)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn rebuild(&mut self, entries: impl Iterator<Item = Entry>) {
        self.heap = entries.map(Reverse).collect();
    }
}
