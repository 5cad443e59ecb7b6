//! Node storage of the radix tree: a slot arena with a free list, so node ids
//! stay small integers and freed slots are reused. A per-slot generation lets
//! the LRU heap recognise entries that outlived their node.

use std::collections::BTreeMap;
use std::ops::{Index, IndexMut};

pub(super) type NodeIx = u32;
pub(super) const ROOT: NodeIx = 0;

pub(super) struct Node {
    pub parent: NodeIx,
    /// Tokens on the edge from the parent (empty only for the root).
    pub key: Vec<u32>,
    /// Children keyed by the first token of their edge.
    pub children: BTreeMap<u32, NodeIx>,
    /// Logical time of the last match or insert that walked through this node.
    pub last_access: u64,
    /// Pins on paths through this node (SGLang's lock_ref).
    pub lock_ref: u32,
    pub generation: u32,
    pub live: bool,
}

pub(super) struct Arena {
    nodes: Vec<Node>,
    free: Vec<NodeIx>,
    live: usize,
}

impl Arena {
    /// An arena holding only the root.
    pub fn new() -> Self {
        let root = Node {
            parent: ROOT,
            key: Vec::new(),
            children: BTreeMap::new(),
            last_access: 0,
            lock_ref: 0,
            generation: 0,
            live: true,
        };
        Arena { nodes: vec![root], free: Vec::new(), live: 1 }
    }

    /// Live nodes, root included.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn alloc(&mut self, parent: NodeIx, key: Vec<u32>, last_access: u64) -> NodeIx {
        self.live += 1;
        if let Some(ix) = self.free.pop() {
            let node = &mut self.nodes[ix as usize];
            node.parent = parent;
            node.key = key;
            node.last_access = last_access;
            node.lock_ref = 0;
            node.live = true;
            debug_assert!(node.children.is_empty());
            return ix;
        }
        let ix = NodeIx::try_from(self.nodes.len()).expect("radix tree exceeds 2^32 nodes");
        self.nodes.push(Node {
            parent,
            key,
            children: BTreeMap::new(),
            last_access,
            lock_ref: 0,
            generation: 0,
            live: true,
        });
        ix
    }

    pub fn free(&mut self, ix: NodeIx) {
        let node = &mut self.nodes[ix as usize];
        debug_assert!(node.live && node.children.is_empty() && ix != ROOT);
        node.live = false;
        node.key = Vec::new();
        node.generation = node.generation.wrapping_add(1);
        self.live -= 1;
        self.free.push(ix);
    }

    /// Ids of every live node, root first.
    pub fn live_ids(&self) -> impl Iterator<Item = NodeIx> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.live)
            .map(|(i, _)| i as NodeIx)
    }
}

impl Index<NodeIx> for Arena {
    type Output = Node;
    fn index(&self, ix: NodeIx) -> &Node {
        &self.nodes[ix as usize]
    }
}

impl IndexMut<NodeIx> for Arena {
    fn index_mut(&mut self, ix: NodeIx) -> &mut Node {
        &mut self.nodes[ix as usize]
    }
}
