//! Conversation forest: every conversation is a root-to-leaf path of message
//! nodes, and branches share their common history.
//!
//! Nodes live in a slot arena of fixed 44-byte records; their text and meta go
//! to one byte arena and their per-view token segments to one `u32` token
//! arena, located through a 12-byte segment table entry per (node, view).
//! Freed slots are reused under a new generation, so old ids stay detectably
//! stale, and arena space left behind by frees is reclaimed by compaction.

mod arena;
mod codes;
mod packed;
mod read;
mod slot;
mod write;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use codes::{finish_code, narrow_u16, role_code, FINISH_REASONS, ROLES};
pub use packed::split_segments;
pub use read::NodeView;
pub use slot::NodeId;

use std::borrow::Cow;

use crate::error::{CoreError, CoreResult};
use slot::{pack, unpack, SegEntry, Slot, FIRST_GENERATION, NIL};

/// Garbage (in items) an arena must hold before it is compacted.
const DEFAULT_COMPACTION_FLOOR: usize = 1 << 14;

/// One message to add: what the caller supplies for a new node.
#[derive(Clone, Debug, Default)]
pub struct NewNode<'a> {
    pub participant: u16,
    pub role: &'a str,
    pub text: &'a str,
    /// (view, tokens) pairs; each view at most once. Borrowed when a batch's
    /// segments come split from one buffer, so no node needs an allocation.
    pub segments: Cow<'a, [(u16, &'a [u32])]>,
    pub finish: &'a str,
    pub meta: &'a str,
}

/// Counters of [`Forest::stats`]. `core_bytes` is the heap held for node
/// records and the segment table (capacity included), without token or text data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub live_nodes: u64,
    pub freed_nodes: u64,
    pub roots: u64,
    pub tokens: u64,
    pub token_capacity: u64,
    pub text_bytes: u64,
    pub text_capacity: u64,
    pub slots: u64,
    pub core_bytes: u64,
    pub bytes_estimate: u64,
    pub compactions: u64,
}

impl Stats {
    /// (name, value) pairs in a stable order, for callers that build maps.
    pub fn entries(&self) -> [(&'static str, u64); 11] {
        [
            ("live_nodes", self.live_nodes),
            ("freed_nodes", self.freed_nodes),
            ("roots", self.roots),
            ("tokens", self.tokens),
            ("token_capacity", self.token_capacity),
            ("text_bytes", self.text_bytes),
            ("text_capacity", self.text_capacity),
            ("slots", self.slots),
            ("core_bytes", self.core_bytes),
            ("bytes_estimate", self.bytes_estimate),
            ("compactions", self.compactions),
        ]
    }
}

/// Arena of conversation trees. See the module docs for the layout.
#[derive(Clone, Debug)]
pub struct Forest {
    slots: Vec<Slot>,
    /// One bit per slot, set while it holds a live node, so compaction finds
    /// the live slots without reading every record.
    live_bits: Vec<u64>,
    segs: Vec<SegEntry>,
    tokens: Vec<u32>,
    bytes: Vec<u8>,
    /// Head of the intrusive free-slot list (through `next_sibling`).
    free_head: u32,
    free_count: usize,
    live: usize,
    roots: usize,
    freed_total: u64,
    garbage_segs: usize,
    garbage_tokens: usize,
    garbage_bytes: usize,
    compaction_floor: usize,
    compactions: u64,
}

impl Default for Forest {
    fn default() -> Self {
        Self::new()
    }
}

impl Forest {
    pub fn new() -> Self {
        Self::with_compaction_floor(DEFAULT_COMPACTION_FLOOR)
    }

    /// A forest that compacts an arena once it holds `floor` garbage items (and
    /// at least half of it is garbage). Small floors exercise compaction in tests.
    pub fn with_compaction_floor(floor: usize) -> Self {
        Forest {
            slots: Vec::new(),
            live_bits: Vec::new(),
            segs: Vec::new(),
            tokens: Vec::new(),
            bytes: Vec::new(),
            free_head: NIL,
            free_count: 0,
            live: 0,
            roots: 0,
            freed_total: 0,
            garbage_segs: 0,
            garbage_tokens: 0,
            garbage_bytes: 0,
            compaction_floor: floor,
            compactions: 0,
        }
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether `id` names a live node of this forest.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.live_slot(id).is_ok()
    }

    /// Slot of a live node, or why `id` names none: stale if this slot once
    /// issued that generation, unknown otherwise.
    fn live_slot(&self, id: NodeId) -> CoreResult<u32> {
        let (generation, slot) = unpack(id);
        let Some(record) = self.slots.get(slot as usize) else {
            return Err(CoreError::UnknownNode(id));
        };
        if generation == record.generation && !record.is_free() {
            Ok(slot)
        } else if (FIRST_GENERATION..record.generation).contains(&generation) {
            Err(CoreError::StaleNode(id))
        } else {
            Err(CoreError::UnknownNode(id))
        }
    }

    /// Id of the live node in `slot`.
    fn id_of(&self, slot: u32) -> NodeId {
        pack(self.slots[slot as usize].generation, slot)
    }

    fn slot(&self, slot: u32) -> &Slot {
        &self.slots[slot as usize]
    }

    /// Slots of the slot's children, newest first (the order the list keeps).
    fn child_slots(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        let first = self.slot(slot).first_child;
        std::iter::successors((first != NIL).then_some(first), move |&child| {
            let next = self.slot(child).next_sibling;
            (next != NIL).then_some(next)
        })
    }

    /// Segment-table entries of a slot.
    fn entries(&self, slot: u32) -> &[SegEntry] {
        let record = self.slot(slot);
        let start = record.seg_off as usize;
        &self.segs[start..start + record.seg_count as usize]
    }

    /// Segment-table index of the slot's entry for `view`.
    fn entry_index(&self, slot: u32, view: u16) -> Option<usize> {
        let record = self.slot(slot);
        self.entries(slot)
            .iter()
            .position(|entry| entry.view == view)
            .map(|i| record.seg_off as usize + i)
    }

    pub fn stats(&self) -> Stats {
        use std::mem::size_of;
        let core = self.slots.capacity() * size_of::<Slot>()
            + self.live_bits.capacity() * size_of::<u64>()
            + self.segs.capacity() * size_of::<SegEntry>();
        let data = self.tokens.capacity() * size_of::<u32>() + self.bytes.capacity();
        Stats {
            live_nodes: self.live as u64,
            freed_nodes: self.freed_total,
            roots: self.roots as u64,
            tokens: (self.tokens.len() - self.garbage_tokens) as u64,
            token_capacity: self.tokens.capacity() as u64,
            text_bytes: (self.bytes.len() - self.garbage_bytes) as u64,
            text_capacity: self.bytes.capacity() as u64,
            slots: self.slots.len() as u64,
            core_bytes: core as u64,
            bytes_estimate: (size_of::<Self>() + core + data) as u64,
            compactions: self.compactions,
        }
    }
}
