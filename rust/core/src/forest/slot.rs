//! The fixed-size records of the forest: one per node slot and one per token
//! segment, plus the packing of node ids.

/// Opaque node id: `(generation << 32) | slot`.
pub type NodeId = u64;

/// "No slot": the parent of a root, the end of a child or free list.
pub(super) const NIL: u32 = u32::MAX;

/// Role value marking a free slot (valid role codes are far below it).
pub(super) const FREE: u8 = u8::MAX;

/// First generation a slot issues. Starting at 1 keeps small integers (0, 1, …)
/// from ever naming a node, so a mixed-up counter reads as unknown, not as a node.
pub(super) const FIRST_GENERATION: u32 = 1;

/// One node. Links are slot numbers (the generation of a live node's relatives
/// is always their slot's current one, since freeing takes whole subtrees).
/// Children form a singly linked list, newest first.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    pub parent: u32,
    pub first_child: u32,
    /// Next older sibling; for a free slot, the next free slot.
    pub next_sibling: u32,
    pub depth: u32,
    pub generation: u32,
    /// Text, then meta, contiguous in the byte arena.
    pub bytes_off: u32,
    pub text_len: u32,
    pub meta_len: u32,
    /// This node's entries in the segment table, contiguous.
    pub seg_off: u32,
    pub seg_count: u16,
    pub participant: u16,
    pub role: u8,
    pub finish: u8,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 44);

impl Slot {
    pub fn is_free(&self) -> bool {
        self.role == FREE
    }

    pub fn bytes_len(&self) -> u32 {
        self.text_len + self.meta_len
    }
}

/// Where one node's tokens for one view lie in the token arena.
#[derive(Clone, Copy, Debug)]
pub(super) struct SegEntry {
    pub offset: u32,
    pub len: u32,
    pub view: u16,
}

const _: () = assert!(std::mem::size_of::<SegEntry>() == 12);

pub(super) fn pack(generation: u32, slot: u32) -> NodeId {
    (u64::from(generation) << 32) | u64::from(slot)
}

/// (generation, slot) of an id.
pub(super) fn unpack(id: NodeId) -> (u32, u32) {
    ((id >> 32) as u32, id as u32)
}
