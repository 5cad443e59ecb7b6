//! Queries: navigation, node data, segments and lanes.

use super::codes::{FINISH_REASONS, ROLES};
use super::slot::NIL;
use super::{Forest, NodeId};
use crate::error::{CoreError, CoreResult};

/// Everything stored on one node, borrowed from the forest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView<'a> {
    pub participant: u16,
    pub role: &'static str,
    pub text: &'a str,
    pub finish: &'static str,
    pub meta: &'a str,
    pub depth: u32,
    pub parent: Option<NodeId>,
    /// Oldest child first.
    pub children: Vec<NodeId>,
}

impl Forest {
    /// The parent's id, or None for a root.
    pub fn parent(&self, id: NodeId) -> CoreResult<Option<NodeId>> {
        let slot = self.live_slot(id)?;
        Ok(self.parent_id(slot))
    }

    fn parent_id(&self, slot: u32) -> Option<NodeId> {
        let parent = self.slot(slot).parent;
        (parent != NIL).then(|| self.id_of(parent))
    }

    /// Children's ids, oldest first.
    pub fn children(&self, id: NodeId) -> CoreResult<Vec<NodeId>> {
        let slot = self.live_slot(id)?;
        Ok(self.child_ids(slot))
    }

    fn child_ids(&self, slot: u32) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.child_slots(slot).map(|c| self.id_of(c)).collect();
        // The list is kept newest first so appends are O(1).
        ids.reverse();
        ids
    }

    /// 0 for a root.
    pub fn depth(&self, id: NodeId) -> CoreResult<u32> {
        Ok(self.slot(self.live_slot(id)?).depth)
    }

    /// Id of the root of `id`'s tree.
    pub fn root(&self, id: NodeId) -> CoreResult<NodeId> {
        let mut slot = self.live_slot(id)?;
        while self.slot(slot).parent != NIL {
            slot = self.slot(slot).parent;
        }
        Ok(self.id_of(slot))
    }

    /// Slots from `slot` up to its root (leaf first).
    fn ancestry(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(Some(slot), move |&s| {
            let parent = self.slot(s).parent;
            (parent != NIL).then_some(parent)
        })
    }

    /// Ids from the root down to `id`, inclusive.
    pub fn path(&self, id: NodeId) -> CoreResult<Vec<NodeId>> {
        let slot = self.live_slot(id)?;
        let mut ids: Vec<NodeId> = self.ancestry(slot).map(|s| self.id_of(s)).collect();
        ids.reverse();
        Ok(ids)
    }

    fn text_and_meta(&self, slot: u32) -> (&str, &str) {
        let record = self.slot(slot);
        let start = record.bytes_off as usize;
        let split = start + record.text_len as usize;
        let end = split + record.meta_len as usize;
        // Only whole &str values are ever written or moved, so both are UTF-8.
        let text = std::str::from_utf8(&self.bytes[start..split]).expect("stored text is UTF-8");
        let meta = std::str::from_utf8(&self.bytes[split..end]).expect("stored meta is UTF-8");
        (text, meta)
    }

    /// Everything stored on the node.
    pub fn node(&self, id: NodeId) -> CoreResult<NodeView<'_>> {
        let slot = self.live_slot(id)?;
        let record = self.slot(slot);
        let (text, meta) = self.text_and_meta(slot);
        Ok(NodeView {
            participant: record.participant,
            role: ROLES[usize::from(record.role)],
            text,
            finish: FINISH_REASONS[usize::from(record.finish)],
            meta,
            depth: record.depth,
            parent: self.parent_id(slot),
            children: self.child_ids(slot),
        })
    }

    /// (participant, role, text) of every node on the path, root first.
    pub fn messages(&self, id: NodeId) -> CoreResult<Vec<(u16, &'static str, &str)>> {
        let slot = self.live_slot(id)?;
        let mut out: Vec<_> = self
            .ancestry(slot)
            .map(|s| {
                let record = self.slot(s);
                (
                    record.participant,
                    ROLES[usize::from(record.role)],
                    self.text_and_meta(s).0,
                )
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    pub(super) fn segment_of(&self, slot: u32, view: u16) -> Option<&[u32]> {
        self.entry_index(slot, view).map(|i| {
            let entry = self.segs[i];
            &self.tokens[entry.offset as usize..(entry.offset + entry.len) as usize]
        })
    }

    /// The tokens `id` itself contributes to `view`, if it has a segment for it.
    pub fn segment(&self, id: NodeId, view: u16) -> CoreResult<Option<&[u32]>> {
        let slot = self.live_slot(id)?;
        Ok(self.segment_of(slot, view))
    }

    /// Number of tokens in `id`'s lane for `view`.
    pub fn lane_len(&self, id: NodeId, view: u16) -> CoreResult<usize> {
        let slot = self.live_slot(id)?;
        Ok(self.lane_len_of(slot, view))
    }

    pub(super) fn lane_len_of(&self, slot: u32, view: u16) -> usize {
        self.ancestry(slot)
            .map(|s| self.segment_of(s, view).map_or(0, <[u32]>::len))
            .sum()
    }

    /// Concatenation of the path's segments for `view`, root first; nodes
    /// without a segment for it add nothing.
    pub fn lane(&self, id: NodeId, view: u16) -> CoreResult<Vec<u32>> {
        let mut out = Vec::new();
        self.lane_into(id, view, &mut out)?;
        Ok(out)
    }

    /// Append `id`'s lane for `view` to `out`.
    pub fn lane_into(&self, id: NodeId, view: u16, out: &mut Vec<u32>) -> CoreResult<()> {
        let slot = self.live_slot(id)?;
        // Walk up twice (lengths, then copies filled back to front) rather than
        // materialising the path.
        let start = out.len();
        out.resize(start + self.lane_len_of(slot, view), 0);
        let exact = self.fill_lane(slot, view, &mut out[start..]);
        debug_assert!(exact);
        Ok(())
    }

    /// Write the slot's lane for `view` into `out`, back to front; false
    /// (with `out` partly written) unless the lane is exactly `out.len()` long.
    pub(super) fn fill_lane(&self, slot: u32, view: u16, out: &mut [u32]) -> bool {
        let mut end = out.len();
        for s in self.ancestry(slot) {
            if let Some(tokens) = self.segment_of(s, view) {
                let Some(start) = end.checked_sub(tokens.len()) else {
                    return false;
                };
                out[start..end].copy_from_slice(tokens);
                end = start;
            }
        }
        end == 0
    }

    /// Lanes of `(ids[i], views[i])` for every i.
    pub fn lanes_for(&self, ids: &[NodeId], views: &[u16]) -> CoreResult<Vec<Vec<u32>>> {
        if ids.len() != views.len() {
            return Err(CoreError::InvalidArgument(format!(
                "{} nodes for {} views",
                ids.len(),
                views.len()
            )));
        }
        ids.iter()
            .zip(views)
            .map(|(&id, &view)| self.lane(id, view))
            .collect()
    }

    /// Tokens in the segments of every node of `id`'s subtree, for every view
    /// or only for `views`: what a prefix cache holds for a whole conversation
    /// tree (each view's lane is one cached sequence, branches share history).
    pub fn subtree_tokens(&self, id: NodeId, views: Option<&[u16]>) -> CoreResult<u64> {
        let mut stack = vec![self.live_slot(id)?];
        let mut total = 0u64;
        while let Some(slot) = stack.pop() {
            total += self
                .entries(slot)
                .iter()
                .filter(|entry| views.is_none_or(|v| v.contains(&entry.view)))
                .map(|entry| u64::from(entry.len))
                .sum::<u64>();
            stack.extend(self.child_slots(slot));
        }
        Ok(total)
    }

    /// Number of nodes the two root paths share: depth of their deepest common
    /// ancestor plus one, or 0 when they are in different trees.
    pub fn shared_prefix_len(&self, a: NodeId, b: NodeId) -> CoreResult<usize> {
        let (mut a, mut b) = (self.live_slot(a)?, self.live_slot(b)?);
        while self.slot(a).depth > self.slot(b).depth {
            a = self.slot(a).parent;
        }
        while self.slot(b).depth > self.slot(a).depth {
            b = self.slot(b).parent;
        }
        while a != b {
            a = self.slot(a).parent;
            b = self.slot(b).parent;
            if a == NIL {
                return Ok(0);
            }
        }
        Ok(self.slot(a).depth as usize + 1)
    }
}
