//! Model-based property tests: random operation sequences run against the
//! forest and against a plain map-of-nodes reference; after every step each
//! id ever issued must read the same from both (or be stale in both).

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

const VIEWS: u16 = 3;

#[derive(Clone, Debug)]
struct Spec {
    participant: u16,
    role: usize,
    text: String,
    finish: usize,
    meta: String,
    segments: BTreeMap<u16, Vec<u32>>,
}

impl Spec {
    fn new_node(&self) -> NewNode<'_> {
        NewNode {
            participant: self.participant,
            role: ROLES[self.role],
            text: &self.text,
            segments: self
                .segments
                .iter()
                .map(|(&v, t)| (v, t.as_slice()))
                .collect(),
            finish: FINISH_REASONS[self.finish],
            meta: &self.meta,
        }
    }
}

/// How an append_many batch is spoiled, so that it must change nothing.
#[derive(Clone, Debug)]
enum Spoil {
    None,
    BadRole(Index),
    DeadParent(Index),
    Lengths,
}

#[derive(Clone, Debug)]
enum Op {
    AddRoot(Spec),
    Append(Index, Spec),
    AppendMany(Vec<(Index, Spec)>, Spoil),
    SetSegment(Index, u16, Vec<u32>),
    SetMeta(Index, String),
    SetFinish(Index, usize),
    Free(Index),
}

fn tokens() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(any::<u32>(), 0..6)
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u16..4,
        0..ROLES.len(),
        "\\PC{0,6}",
        0..FINISH_REASONS.len(),
        "[a-z{}:\"]{0,5}",
        prop::collection::btree_map(0..VIEWS, tokens(), 0..3),
    )
        .prop_map(|(participant, role, text, finish, meta, segments)| Spec {
            participant,
            role,
            text,
            finish,
            meta,
            segments,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let spoil = prop_oneof![
        4 => Just(Spoil::None),
        1 => any::<Index>().prop_map(Spoil::BadRole),
        1 => any::<Index>().prop_map(Spoil::DeadParent),
        1 => Just(Spoil::Lengths),
    ];
    prop_oneof![
        2 => spec().prop_map(Op::AddRoot),
        6 => (any::<Index>(), spec()).prop_map(|(i, s)| Op::Append(i, s)),
        2 => (prop::collection::vec((any::<Index>(), spec()), 1..5), spoil).prop_map(|(b, s)| Op::AppendMany(b, s)),
        2 => (any::<Index>(), 0..VIEWS, tokens()).prop_map(|(i, v, t)| Op::SetSegment(i, v, t)),
        1 => (any::<Index>(), "[a-z]{0,8}").prop_map(|(i, m)| Op::SetMeta(i, m)),
        1 => (any::<Index>(), 0..FINISH_REASONS.len()).prop_map(|(i, f)| Op::SetFinish(i, f)),
        2 => any::<Index>().prop_map(Op::Free),
    ]
}

#[derive(Clone, Debug)]
struct ModelNode {
    parent: Option<NodeId>,
    spec: Spec,
    children: Vec<NodeId>,
}

/// The reference: live nodes in a map, every id ever issued in a list.
#[derive(Default)]
struct Model {
    live: BTreeMap<NodeId, ModelNode>,
    issued: Vec<NodeId>,
}

impl Model {
    fn pick(&self, index: &Index) -> Option<NodeId> {
        (!self.issued.is_empty()).then(|| self.issued[index.index(self.issued.len())])
    }

    fn add(&mut self, id: NodeId, parent: Option<NodeId>, spec: &Spec) {
        if let Some(p) = parent {
            self.live.get_mut(&p).unwrap().children.push(id);
        }
        self.live.insert(
            id,
            ModelNode {
                parent,
                spec: spec.clone(),
                children: Vec::new(),
            },
        );
        self.issued.push(id);
    }

    fn path(&self, id: NodeId) -> Vec<NodeId> {
        let mut path = vec![id];
        while let Some(p) = self.live[path.last().unwrap()].parent {
            path.push(p);
        }
        path.reverse();
        path
    }

    fn lane(&self, id: NodeId, view: u16) -> Vec<u32> {
        self.path(id)
            .iter()
            .flat_map(|n| {
                self.live[n]
                    .spec
                    .segments
                    .get(&view)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Tokens of every segment in `id`'s subtree, only `views` when given.
    fn subtree_tokens(&self, id: NodeId, views: Option<&[u16]>) -> u64 {
        let node = &self.live[&id];
        let own: usize = node
            .spec
            .segments
            .iter()
            .filter(|(v, _)| views.is_none_or(|views| views.contains(v)))
            .map(|(_, t)| t.len())
            .sum();
        own as u64
            + node
                .children
                .iter()
                .map(|&c| self.subtree_tokens(c, views))
                .sum::<u64>()
    }

    fn free(&mut self, id: NodeId) -> usize {
        let node = self.live.remove(&id).unwrap();
        if let Some(p) = node.parent {
            self.live.get_mut(&p).unwrap().children.retain(|&c| c != id);
        }
        let mut freed = 1;
        let mut stack = node.children;
        while let Some(c) = stack.pop() {
            stack.extend(self.live.remove(&c).unwrap().children);
            freed += 1;
        }
        freed
    }
}

fn is_stale(result: CoreResult<impl std::fmt::Debug>, id: NodeId) -> bool {
    matches!(result, Err(CoreError::StaleNode(x)) if x == id)
}

/// Run one op on both; returns a description of any disagreement.
fn step(forest: &mut Forest, model: &mut Model, op: &Op) -> Result<(), String> {
    match op {
        Op::AddRoot(spec) => {
            let id = forest
                .add_root(&spec.new_node())
                .map_err(|e| e.to_string())?;
            model.add(id, None, spec);
        }
        Op::Append(index, spec) => {
            let Some(parent) = model.pick(index) else {
                return Ok(());
            };
            let result = forest.append(parent, &spec.new_node());
            if model.live.contains_key(&parent) {
                model.add(result.map_err(|e| e.to_string())?, Some(parent), spec);
            } else if !is_stale(result, parent) {
                return Err(format!("append under freed {parent} did not fail as stale"));
            }
        }
        Op::AppendMany(batch, spoil) => {
            let mut parents: Vec<NodeId> = Vec::new();
            let mut specs: Vec<Spec> = Vec::new();
            for (index, spec) in batch {
                let live: Vec<NodeId> = model.live.keys().copied().collect();
                if live.is_empty() {
                    return Ok(());
                }
                parents.push(live[index.index(live.len())]);
                specs.push(spec.clone());
            }
            let mut nodes: Vec<NewNode> = specs.iter().map(Spec::new_node).collect();
            let spoiled = match spoil {
                Spoil::None => false,
                Spoil::BadRole(i) => {
                    let at = i.index(nodes.len());
                    nodes[at].role = "narrator";
                    true
                }
                Spoil::DeadParent(i) => {
                    match model.issued.iter().find(|id| !model.live.contains_key(id)) {
                        Some(&dead) => {
                            let at = i.index(parents.len());
                            parents[at] = dead;
                            true
                        }
                        None => false,
                    }
                }
                Spoil::Lengths => {
                    parents.pop();
                    true
                }
            };
            let before = forest.stats();
            let result = forest.append_many(&parents, &nodes);
            if spoiled {
                if result.is_ok() {
                    return Err("spoiled append_many succeeded".into());
                }
                let after = forest.stats();
                if (
                    after.live_nodes,
                    after.tokens,
                    after.text_bytes,
                    after.slots,
                ) != (
                    before.live_nodes,
                    before.tokens,
                    before.text_bytes,
                    before.slots,
                ) {
                    return Err(format!(
                        "failed append_many changed the forest: {before:?} -> {after:?}"
                    ));
                }
            } else {
                let ids = result.map_err(|e| e.to_string())?;
                for ((id, parent), spec) in ids.iter().zip(&parents).zip(&specs) {
                    model.add(*id, Some(*parent), spec);
                }
            }
        }
        Op::SetSegment(index, view, tokens) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let result = forest.set_segment(id, *view, tokens);
            match model.live.get_mut(&id) {
                Some(node) => {
                    result.map_err(|e| e.to_string())?;
                    node.spec.segments.insert(*view, tokens.clone());
                }
                None if !is_stale(result, id) => return Err(format!("set_segment on freed {id}")),
                None => {}
            }
        }
        Op::SetMeta(index, meta) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let result = forest.set_meta(id, meta);
            match model.live.get_mut(&id) {
                Some(node) => {
                    result.map_err(|e| e.to_string())?;
                    node.spec.meta = meta.clone();
                }
                None if !is_stale(result, id) => return Err(format!("set_meta on freed {id}")),
                None => {}
            }
        }
        Op::SetFinish(index, finish) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let result = forest.set_finish(id, FINISH_REASONS[*finish]);
            match model.live.get_mut(&id) {
                Some(node) => {
                    result.map_err(|e| e.to_string())?;
                    node.spec.finish = *finish;
                }
                None if !is_stale(result, id) => return Err(format!("set_finish on freed {id}")),
                None => {}
            }
        }
        Op::Free(index) => {
            let Some(id) = model.pick(index) else {
                return Ok(());
            };
            let result = forest.free_subtree(id);
            if model.live.contains_key(&id) {
                let expected = model.free(id);
                if result != Ok(expected) {
                    return Err(format!(
                        "free_subtree({id}) = {result:?}, model freed {expected}"
                    ));
                }
            } else if !is_stale(result, id) {
                return Err(format!("free of freed {id}"));
            }
        }
    }
    Ok(())
}

/// Every issued id reads the same from the forest as from the model.
fn agree(forest: &Forest, model: &Model) -> Result<(), String> {
    let stats = forest.stats();
    if forest.len() != model.live.len() || stats.live_nodes as usize != model.live.len() {
        return Err(format!(
            "{} live nodes, model has {}",
            forest.len(),
            model.live.len()
        ));
    }
    let roots = model.live.values().filter(|n| n.parent.is_none()).count();
    let tokens: usize = model
        .live
        .values()
        .flat_map(|n| n.spec.segments.values())
        .map(Vec::len)
        .sum();
    let text: usize = model
        .live
        .values()
        .map(|n| n.spec.text.len() + n.spec.meta.len())
        .sum();
    if (
        stats.roots as usize,
        stats.tokens as usize,
        stats.text_bytes as usize,
    ) != (roots, tokens, text)
    {
        return Err(format!(
            "stats {stats:?} vs roots {roots}, tokens {tokens}, text {text}"
        ));
    }
    for &id in &model.issued {
        let Some(node) = model.live.get(&id) else {
            if !is_stale(forest.node(id), id)
                || forest.is_live(id)
                || !is_stale(forest.lane(id, 0), id)
                || !is_stale(forest.subtree_tokens(id, None), id)
            {
                return Err(format!("freed {id} is not stale"));
            }
            continue;
        };
        let path = model.path(id);
        let expected = NodeView {
            participant: node.spec.participant,
            role: ROLES[node.spec.role],
            text: &node.spec.text,
            finish: FINISH_REASONS[node.spec.finish],
            meta: &node.spec.meta,
            depth: (path.len() - 1) as u32,
            parent: node.parent,
            children: node.children.clone(),
        };
        let got = forest.node(id).map_err(|e| e.to_string())?;
        if got != expected {
            return Err(format!("node {id}: {got:?} != {expected:?}"));
        }
        if forest.path(id) != Ok(path.clone()) || forest.root(id) != Ok(path[0]) {
            return Err(format!("path of {id}: {:?} != {path:?}", forest.path(id)));
        }
        if forest.depth(id) != Ok(path.len() as u32 - 1) {
            return Err(format!("depth of {id} is not path length - 1"));
        }
        for views in [None, Some(&[1][..]), Some(&[0, 2][..])] {
            let expected = model.subtree_tokens(id, views);
            if forest.subtree_tokens(id, views) != Ok(expected) {
                return Err(format!(
                    "subtree_tokens of {id} for {views:?}: {:?} != {expected}",
                    forest.subtree_tokens(id, views)
                ));
            }
        }
        for view in 0..VIEWS {
            let lane = model.lane(id, view);
            let segment = node.spec.segments.get(&view).map(Vec::as_slice);
            if forest.lane(id, view) != Ok(lane.clone())
                || forest.lane_len(id, view) != Ok(lane.len())
            {
                return Err(format!(
                    "lane of {id} view {view}: {:?} != {lane:?}",
                    forest.lane(id, view)
                ));
            }
            if forest.segment(id, view) != Ok(segment) {
                return Err(format!("segment of {id} view {view}"));
            }
        }
    }
    Ok(())
}

fn common_prefix(model: &Model, a: NodeId, b: NodeId) -> usize {
    model
        .path(a)
        .iter()
        .zip(model.path(b))
        .take_while(|(x, y)| **x == *y)
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn forest_matches_reference(floor in prop_oneof![Just(1usize), Just(16), Just(1 << 14)],
                                ops in prop::collection::vec(op(), 1..60)) {
        let mut forest = Forest::with_compaction_floor(floor);
        let mut model = Model::default();
        for (i, op) in ops.iter().enumerate() {
            step(&mut forest, &mut model, op).map_err(|e| TestCaseError::fail(format!("op {i} {op:?}: {e}")))?;
            agree(&forest, &model).map_err(|e| TestCaseError::fail(format!("after op {i} {op:?}: {e}")))?;
        }
    }

    #[test]
    fn shared_prefix_is_symmetric_and_bounded(ops in prop::collection::vec(op(), 1..40),
                                              pairs in prop::collection::vec((any::<Index>(), any::<Index>()), 1..20)) {
        let mut forest = Forest::with_compaction_floor(1);
        let mut model = Model::default();
        for op in &ops {
            step(&mut forest, &mut model, op).map_err(TestCaseError::fail)?;
        }
        let live: Vec<NodeId> = model.live.keys().copied().collect();
        if live.is_empty() {
            return Ok(());
        }
        for (i, j) in pairs {
            let (a, b) = (live[i.index(live.len())], live[j.index(live.len())]);
            let ab = forest.shared_prefix_len(a, b).unwrap();
            prop_assert_eq!(ab, forest.shared_prefix_len(b, a).unwrap());
            let bound = forest.depth(a).unwrap().min(forest.depth(b).unwrap()) as usize + 1;
            prop_assert!(ab <= bound);
            prop_assert_eq!(ab, common_prefix(&model, a, b));
        }
    }

    #[test]
    fn lane_is_concatenation_of_path_segments(ops in prop::collection::vec(op(), 1..40)) {
        let mut forest = Forest::with_compaction_floor(1);
        let mut model = Model::default();
        for op in &ops {
            step(&mut forest, &mut model, op).map_err(TestCaseError::fail)?;
        }
        let live: Vec<NodeId> = model.live.keys().copied().collect();
        let views: Vec<u16> = live.iter().map(|&id| (id % u64::from(VIEWS)) as u16).collect();
        let lanes = forest.lanes_for(&live, &views).unwrap();
        for ((&id, &view), lane) in live.iter().zip(&views).zip(&lanes) {
            let path = forest.path(id).unwrap();
            let concat: Vec<u32> = path.iter()
                .flat_map(|&n| forest.segment(n, view).unwrap().unwrap_or(&[]).to_vec())
                .collect();
            prop_assert_eq!(lane, &concat);
        }
        let (tokens, offsets) = forest.lanes_packed(&live, &views).unwrap();
        prop_assert_eq!(offsets.len(), live.len() + 1);
        for (i, lane) in lanes.iter().enumerate() {
            prop_assert_eq!(&tokens[offsets[i] as usize..offsets[i + 1] as usize], lane.as_slice());
        }
    }

    /// A packed batch (one token buffer, uniform views, roots and children
    /// mixed) adds the same nodes, under the same ids, as one call per node.
    #[test]
    fn packed_batch_matches_one_by_one(ops in prop::collection::vec(op(), 1..30),
                                       views in prop::sample::subsequence((0..VIEWS).collect::<Vec<_>>(), 0..=VIEWS as usize),
                                       batch in prop::collection::vec((prop::option::of(any::<Index>()), 0..ROLES.len(),
                                                                       prop::collection::vec(tokens(), VIEWS as usize)), 0..6),
                                       lead in 0usize..3) {
        let mut forest = Forest::with_compaction_floor(1);
        let mut model = Model::default();
        for op in &ops {
            step(&mut forest, &mut model, op).map_err(TestCaseError::fail)?;
        }
        let live: Vec<NodeId> = model.live.keys().copied().collect();
        let parents: Vec<Option<NodeId>> = batch.iter()
            .map(|(p, _, _)| p.as_ref().filter(|_| !live.is_empty()).map(|i| live[i.index(live.len())]))
            .collect();
        // Tokens start `lead` items in, as a slice of a larger buffer would.
        let mut flat = vec![7u32; lead];
        let mut offsets = vec![lead as u64];
        for (_, _, segs) in &batch {
            for &view in &views {
                flat.extend(&segs[usize::from(view)]);
                offsets.push(flat.len() as u64);
            }
        }
        let split = split_segments(batch.len(), &views, &flat, &offsets).unwrap();
        let per_node = views.len();
        let nodes: Vec<NewNode> = batch.iter().enumerate()
            .map(|(i, (_, role, _))| NewNode {
                role: ROLES[*role],
                segments: split[i * per_node..(i + 1) * per_node].into(),
                ..NewNode::default()
            })
            .collect();
        let mut one_by_one = forest.clone();
        let ids = forest.add_many(&parents, &nodes).unwrap();
        for ((&parent, node), &id) in parents.iter().zip(&nodes).zip(&ids) {
            let got = match parent {
                Some(p) => one_by_one.append(p, node),
                None => one_by_one.add_root(node),
            };
            prop_assert_eq!(got, Ok(id));
        }
        for &id in &ids {
            prop_assert_eq!(forest.node(id), one_by_one.node(id));
            for view in 0..VIEWS {
                prop_assert_eq!(forest.lane(id, view), one_by_one.lane(id, view));
                prop_assert_eq!(forest.segment(id, view), one_by_one.segment(id, view));
            }
        }
    }
}
