//! Mutations: adding nodes, editing them, freeing subtrees, and the
//! compaction that hands arena space left behind back.

use super::arena::{compact, grow, worth_compacting, Run};
use super::codes::{finish_code, role_code};
use super::slot::{pack, SegEntry, Slot, FIRST_GENERATION, FREE, NIL};
use super::{Forest, NewNode, NodeId};
use crate::error::{CoreError, CoreResult};

/// Offsets and lengths are u32, so no arena may hold more items than this.
const ARENA_LIMIT: usize = u32::MAX as usize;

/// Which arenas a compaction covers.
#[derive(Clone, Copy)]
struct Arenas {
    tokens: bool,
    bytes: bool,
    segs: bool,
}

/// Codes of a validated [`NewNode`].
#[derive(Clone, Copy)]
struct Codes {
    role: u8,
    finish: u8,
}

fn check(node: &NewNode<'_>) -> CoreResult<Codes> {
    let codes = Codes {
        role: role_code(node.role)?,
        finish: finish_code(node.finish)?,
    };
    let segments = &node.segments;
    if segments.len() > usize::from(u16::MAX) {
        return Err(CoreError::Capacity(format!(
            "{} segments on one node",
            segments.len()
        )));
    }
    for (i, (view, _)) in segments.iter().enumerate() {
        if segments[..i].iter().any(|(other, _)| other == view) {
            return Err(CoreError::InvalidArgument(format!(
                "view {view} given twice for one node"
            )));
        }
    }
    Ok(codes)
}

fn check_batch(parents: usize, nodes: usize) -> CoreResult<()> {
    if parents == nodes {
        return Ok(());
    }
    Err(CoreError::InvalidArgument(format!(
        "{parents} parents for {nodes} nodes"
    )))
}

fn capacity(what: &str) -> CoreError {
    CoreError::Capacity(format!("{what} arena would exceed {ARENA_LIMIT} items"))
}

impl Forest {
    /// Start a new conversation tree.
    pub fn add_root(&mut self, node: &NewNode<'_>) -> CoreResult<NodeId> {
        let codes = check(node)?;
        self.reserve_nodes(std::slice::from_ref(node))?;
        Ok(self.insert(NIL, node, codes))
    }

    /// Add a child under `parent` (several children make a branch).
    pub fn append(&mut self, parent: NodeId, node: &NewNode<'_>) -> CoreResult<NodeId> {
        let parent = self.live_slot(parent)?;
        let codes = check(node)?;
        self.reserve_nodes(std::slice::from_ref(node))?;
        Ok(self.insert(parent, node, codes))
    }

    /// Append `nodes[i]` under `parents[i]` for every i. Everything is checked
    /// before anything changes, so on error the forest is as it was.
    pub fn append_many(
        &mut self,
        parents: &[NodeId],
        nodes: &[NewNode<'_>],
    ) -> CoreResult<Vec<NodeId>> {
        check_batch(parents.len(), nodes.len())?;
        let parents = parents
            .iter()
            .map(|&p| self.live_slot(p))
            .collect::<CoreResult<Vec<_>>>()?;
        self.insert_batch(&parents, nodes)
    }

    /// Like [`Forest::append_many`], but a `None` parent starts a new tree,
    /// so one call can add roots and turns alike.
    pub fn add_many(
        &mut self,
        parents: &[Option<NodeId>],
        nodes: &[NewNode<'_>],
    ) -> CoreResult<Vec<NodeId>> {
        check_batch(parents.len(), nodes.len())?;
        let parents = parents
            .iter()
            .map(|p| p.map_or(Ok(NIL), |p| self.live_slot(p)))
            .collect::<CoreResult<Vec<_>>>()?;
        self.insert_batch(&parents, nodes)
    }

    /// Check every node, reserve room for all, then insert them under their
    /// parent slots (NIL for a root): nothing changes unless all fit.
    fn insert_batch(&mut self, parents: &[u32], nodes: &[NewNode<'_>]) -> CoreResult<Vec<NodeId>> {
        let codes = nodes.iter().map(check).collect::<CoreResult<Vec<_>>>()?;
        self.reserve_nodes(nodes)?;
        Ok(parents
            .iter()
            .zip(nodes)
            .zip(codes)
            .map(|((&p, node), c)| self.insert(p, node, c))
            .collect())
    }

    /// Set (or replace) the tokens `id` contributes to `view`'s lane.
    pub fn set_segment(&mut self, id: NodeId, view: u16, tokens: &[u32]) -> CoreResult<()> {
        let slot = self.live_slot(id)?;
        match self.entry_index(slot, view) {
            Some(i) if tokens.len() <= self.segs[i].len as usize => {
                // Shrinking or same size: overwrite in place, the tail becomes garbage.
                let entry = &mut self.segs[i];
                let off = entry.offset as usize;
                self.tokens[off..off + tokens.len()].copy_from_slice(tokens);
                self.garbage_tokens += entry.len as usize - tokens.len();
                entry.len = tokens.len() as u32;
            }
            Some(_) => {
                self.ensure_room(0, tokens.len(), 0)?;
                // Room-making may compact, which moves entries: look it up again.
                let i = self
                    .entry_index(slot, view)
                    .expect("entry survives compaction");
                self.garbage_tokens += self.segs[i].len as usize;
                self.segs[i] = SegEntry {
                    offset: self.tokens.len() as u32,
                    len: tokens.len() as u32,
                    view,
                };
                self.tokens.extend_from_slice(tokens);
            }
            None => {
                let count = self.slot(slot).seg_count;
                if count == u16::MAX {
                    return Err(CoreError::Capacity(format!("{count} segments on one node")));
                }
                self.ensure_room(usize::from(count) + 1, tokens.len(), 0)?;
                // Move the node's entries to the end so they stay contiguous.
                let start = self.slot(slot).seg_off as usize;
                let new_off = self.segs.len() as u32;
                self.segs
                    .extend_from_within(start..start + usize::from(count));
                self.segs.push(SegEntry {
                    offset: self.tokens.len() as u32,
                    len: tokens.len() as u32,
                    view,
                });
                self.tokens.extend_from_slice(tokens);
                self.garbage_segs += usize::from(count);
                let record = &mut self.slots[slot as usize];
                record.seg_off = new_off;
                record.seg_count = count + 1;
            }
        }
        self.maybe_compact();
        Ok(())
    }

    /// Replace the node's metadata string.
    pub fn set_meta(&mut self, id: NodeId, meta: &str) -> CoreResult<()> {
        let slot = self.live_slot(id)?;
        let record = *self.slot(slot);
        if meta.len() <= record.meta_len as usize {
            let off = (record.bytes_off + record.text_len) as usize;
            self.bytes[off..off + meta.len()].copy_from_slice(meta.as_bytes());
            self.garbage_bytes += record.meta_len as usize - meta.len();
        } else {
            self.ensure_room(0, 0, record.text_len as usize + meta.len())?;
            // Text and meta stay contiguous, so a longer meta moves both.
            let record = *self.slot(slot);
            let text = record.bytes_off as usize..(record.bytes_off + record.text_len) as usize;
            let new_off = self.bytes.len() as u32;
            self.bytes.extend_from_within(text);
            self.bytes.extend_from_slice(meta.as_bytes());
            self.garbage_bytes += record.bytes_len() as usize;
            self.slots[slot as usize].bytes_off = new_off;
        }
        self.slots[slot as usize].meta_len = meta.len() as u32;
        self.maybe_compact();
        Ok(())
    }

    /// Replace the node's finish reason.
    pub fn set_finish(&mut self, id: NodeId, finish: &str) -> CoreResult<()> {
        let slot = self.live_slot(id)?;
        self.slots[slot as usize].finish = finish_code(finish)?;
        Ok(())
    }

    /// Free `id` and all its descendants; returns how many nodes were freed.
    /// Their ids turn stale, their slots are reused under a new generation.
    pub fn free_subtree(&mut self, id: NodeId) -> CoreResult<usize> {
        let top = self.live_slot(id)?;
        self.unlink(top);
        let mut stack = vec![top];
        let mut freed = 0;
        while let Some(slot) = stack.pop() {
            stack.extend(self.child_slots(slot));
            self.release(slot);
            freed += 1;
        }
        self.maybe_compact();
        Ok(freed)
    }

    /// Check and reserve all the room a batch needs, so inserting cannot fail.
    fn reserve_nodes(&mut self, nodes: &[NewNode<'_>]) -> CoreResult<()> {
        let new_slots = nodes.len().saturating_sub(self.free_count);
        // Slot numbers must stay below NIL.
        if self.slots.len() + new_slots > NIL as usize {
            return Err(capacity("node slot"));
        }
        let (mut segs, mut tokens, mut bytes) = (0usize, 0usize, 0usize);
        for node in nodes {
            segs += node.segments.len();
            tokens += node.segments.iter().map(|(_, t)| t.len()).sum::<usize>();
            bytes += node.text.len() + node.meta.len();
        }
        self.ensure_room(segs, tokens, bytes)?;
        grow(&mut self.slots, new_slots);
        Ok(())
    }

    /// Make sure each arena can take that many more items within the u32
    /// offset range (compacting first if that is what it takes), and reserve them.
    fn ensure_room(&mut self, segs: usize, tokens: usize, bytes: usize) -> CoreResult<()> {
        self.compact_arenas(Arenas {
            tokens: self.tokens.len() + tokens > ARENA_LIMIT && self.garbage_tokens > 0,
            bytes: self.bytes.len() + bytes > ARENA_LIMIT && self.garbage_bytes > 0,
            segs: self.segs.len() + segs > ARENA_LIMIT && self.garbage_segs > 0,
        });
        if self.segs.len() + segs > ARENA_LIMIT {
            return Err(capacity("segment table"));
        }
        if self.tokens.len() + tokens > ARENA_LIMIT {
            return Err(capacity("token"));
        }
        if self.bytes.len() + bytes > ARENA_LIMIT {
            return Err(capacity("text"));
        }
        grow(&mut self.segs, segs);
        grow(&mut self.tokens, tokens);
        grow(&mut self.bytes, bytes);
        Ok(())
    }

    /// Write a checked node whose room is reserved; `parent` is NIL for a root.
    fn insert(&mut self, parent: u32, node: &NewNode<'_>, codes: Codes) -> NodeId {
        let slot = self.alloc_slot();
        let bytes_off = self.bytes.len() as u32;
        self.bytes.extend_from_slice(node.text.as_bytes());
        self.bytes.extend_from_slice(node.meta.as_bytes());
        let seg_off = self.segs.len() as u32;
        for &(view, tokens) in node.segments.iter() {
            self.segs.push(SegEntry {
                offset: self.tokens.len() as u32,
                len: tokens.len() as u32,
                view,
            });
            self.tokens.extend_from_slice(tokens);
        }
        let (depth, next_sibling) = if parent == NIL {
            self.roots += 1;
            (0, NIL)
        } else {
            let up = &mut self.slots[parent as usize];
            let older = up.first_child;
            up.first_child = slot;
            (up.depth + 1, older)
        };
        let record = &mut self.slots[slot as usize];
        *record = Slot {
            parent,
            first_child: NIL,
            next_sibling,
            depth,
            generation: record.generation,
            bytes_off,
            text_len: node.text.len() as u32,
            meta_len: node.meta.len() as u32,
            seg_off,
            seg_count: node.segments.len() as u16,
            participant: node.participant,
            role: codes.role,
            finish: codes.finish,
        };
        let id = pack(record.generation, slot);
        self.live += 1;
        self.mark_live(slot, true);
        id
    }

    fn mark_live(&mut self, slot: u32, live: bool) {
        let (word, bit) = (slot as usize / 64, slot % 64);
        if word >= self.live_bits.len() {
            self.live_bits.resize(word + 1, 0);
        }
        if live {
            self.live_bits[word] |= 1 << bit;
        } else {
            self.live_bits[word] &= !(1 << bit);
        }
    }

    /// A free slot (reused first) or a new one; its generation is the one to issue.
    fn alloc_slot(&mut self) -> u32 {
        if self.free_head != NIL {
            let slot = self.free_head;
            self.free_head = self.slot(slot).next_sibling;
            self.free_count -= 1;
            return slot;
        }
        let slot = self.slots.len() as u32;
        grow(&mut self.slots, 1);
        self.slots.push(Slot {
            parent: NIL,
            first_child: NIL,
            next_sibling: NIL,
            depth: 0,
            generation: FIRST_GENERATION,
            bytes_off: 0,
            text_len: 0,
            meta_len: 0,
            seg_off: 0,
            seg_count: 0,
            participant: 0,
            role: FREE,
            finish: 0,
        });
        slot
    }

    /// Take a subtree's top out of its parent's child list (or the root count).
    fn unlink(&mut self, slot: u32) {
        let record = *self.slot(slot);
        if record.parent == NIL {
            self.roots -= 1;
            return;
        }
        let parent = record.parent as usize;
        if self.slots[parent].first_child == slot {
            self.slots[parent].first_child = record.next_sibling;
            return;
        }
        let mut prev = self.slots[parent].first_child;
        while self.slot(prev).next_sibling != slot {
            prev = self.slot(prev).next_sibling;
        }
        self.slots[prev as usize].next_sibling = record.next_sibling;
    }

    /// Turn a live slot free: its data becomes garbage, its generation moves on.
    fn release(&mut self, slot: u32) {
        let record = *self.slot(slot);
        self.garbage_tokens += self
            .entries(slot)
            .iter()
            .map(|e| e.len as usize)
            .sum::<usize>();
        self.garbage_segs += usize::from(record.seg_count);
        self.garbage_bytes += record.bytes_len() as usize;
        let generation = record.generation + 1;
        // A slot that has used up its generations is retired, never reused, so
        // no id can ever come back to life.
        let reusable = generation != u32::MAX;
        self.slots[slot as usize] = Slot {
            parent: NIL,
            first_child: NIL,
            next_sibling: if reusable { self.free_head } else { NIL },
            depth: 0,
            generation,
            bytes_off: 0,
            text_len: 0,
            meta_len: 0,
            seg_off: 0,
            seg_count: 0,
            participant: 0,
            role: FREE,
            finish: 0,
        };
        if reusable {
            self.free_head = slot;
            self.free_count += 1;
        }
        self.live -= 1;
        self.mark_live(slot, false);
        self.freed_total += 1;
    }

    fn maybe_compact(&mut self) {
        let floor = self.compaction_floor;
        self.compact_arenas(Arenas {
            tokens: worth_compacting(self.garbage_tokens, self.tokens.len(), floor),
            bytes: worth_compacting(self.garbage_bytes, self.bytes.len(), floor),
            segs: worth_compacting(self.garbage_segs, self.segs.len(), floor),
        });
    }

    /// Compact the chosen arenas. Their live runs are gathered in one pass
    /// over the slots: once most slots are free that pass, not the moves, is
    /// the cost, so arenas due together share it, and an empty forest skips it.
    fn compact_arenas(&mut self, due: Arenas) {
        if !(due.tokens || due.bytes || due.segs) {
            return;
        }
        let (mut token_runs, mut byte_runs, mut seg_runs) = (Vec::new(), Vec::new(), Vec::new());
        if due.tokens {
            token_runs.reserve(self.segs.len() - self.garbage_segs);
        }
        if due.bytes {
            byte_runs.reserve(self.live);
        }
        if due.segs {
            seg_runs.reserve(self.live);
        }
        if self.live > 0 {
            for (slot, record) in self.live_slots() {
                let start = record.seg_off as usize;
                if due.tokens {
                    for index in start..start + usize::from(record.seg_count) {
                        let entry = self.segs[index];
                        token_runs.push(Run {
                            off: entry.offset,
                            len: entry.len,
                            owner: index as u32,
                        });
                    }
                }
                if due.bytes {
                    byte_runs.push(Run {
                        off: record.bytes_off,
                        len: record.bytes_len(),
                        owner: slot,
                    });
                }
                if due.segs {
                    seg_runs.push(Run {
                        off: record.seg_off,
                        len: u32::from(record.seg_count),
                        owner: slot,
                    });
                }
            }
        }
        // Tokens first: their owners are segment-table indices from before
        // the segment table itself moves.
        if due.tokens {
            compact(&mut self.tokens, &mut token_runs);
            for run in &token_runs {
                self.segs[run.owner as usize].offset = run.off;
            }
            self.garbage_tokens = 0;
            self.compactions += 1;
        }
        if due.bytes {
            compact(&mut self.bytes, &mut byte_runs);
            for run in &byte_runs {
                self.slots[run.owner as usize].bytes_off = run.off;
            }
            self.garbage_bytes = 0;
            self.compactions += 1;
        }
        if due.segs {
            compact(&mut self.segs, &mut seg_runs);
            for run in &seg_runs {
                self.slots[run.owner as usize].seg_off = run.off;
            }
            self.garbage_segs = 0;
            self.compactions += 1;
        }
    }

    /// Live slots in slot order.
    fn live_slots(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.live_bits
            .iter()
            .enumerate()
            .flat_map(|(word, &bits)| {
                let mut bits = bits;
                std::iter::from_fn(move || {
                    (bits != 0).then(|| {
                        let bit = bits.trailing_zeros();
                        bits &= bits - 1;
                        (word * 64) as u32 + bit
                    })
                })
            })
            .map(|slot| {
                let record = self.slot(slot);
                debug_assert!(!record.is_free(), "live bit on free slot {slot}");
                (slot, record)
            })
    }
}
