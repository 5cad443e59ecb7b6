//! Unit tests of the forest: behaviour of each operation and its misuse.

use super::slot::{pack, unpack};
use super::*;

fn msg<'a>(role: &'a str, text: &'a str, segments: Vec<(u16, &'a [u32])>) -> NewNode<'a> {
    NewNode {
        participant: 0,
        role,
        text,
        segments: segments.into(),
        finish: "",
        meta: "",
    }
}

/// A root with views 0 and 1, then a user and an assistant turn.
fn conversation(forest: &mut Forest) -> (NodeId, NodeId, NodeId) {
    let root = forest
        .add_root(&msg("system", "be nice", vec![(0, &[1, 2]), (1, &[9])]))
        .unwrap();
    let user = forest
        .append(
            root,
            &NewNode {
                participant: 1,
                ..msg("user", "hi", vec![(0, &[3]), (1, &[4, 5])])
            },
        )
        .unwrap();
    let reply = forest
        .append(user, &msg("assistant", "hello", vec![(0, &[6, 7])]))
        .unwrap();
    (root, user, reply)
}

#[test]
fn navigation_and_lanes() {
    let mut forest = Forest::new();
    let (root, user, reply) = conversation(&mut forest);
    assert_eq!(forest.len(), 3);
    assert_eq!(forest.parent(root), Ok(None));
    assert_eq!(forest.parent(reply), Ok(Some(user)));
    assert_eq!(forest.children(root), Ok(vec![user]));
    assert_eq!(forest.depth(reply), Ok(2));
    assert_eq!(forest.root(reply), Ok(root));
    assert_eq!(forest.path(reply), Ok(vec![root, user, reply]));
    assert_eq!(forest.lane(reply, 0), Ok(vec![1, 2, 3, 6, 7]));
    assert_eq!(forest.lane(reply, 1), Ok(vec![9, 4, 5]));
    assert_eq!(forest.lane(reply, 7), Ok(vec![]));
    assert_eq!(forest.lane_len(reply, 0), Ok(5));
    assert_eq!(forest.segment(reply, 1), Ok(None));
    assert_eq!(forest.segment(user, 1), Ok(Some(&[4, 5][..])));
    assert_eq!(
        forest.lanes_for(&[reply, user], &[1, 0]),
        Ok(vec![vec![9, 4, 5], vec![1, 2, 3]])
    );
    assert_eq!(
        forest.messages(reply),
        Ok(vec![
            (0, "system", "be nice"),
            (1, "user", "hi"),
            (0, "assistant", "hello")
        ])
    );
}

#[test]
fn node_view_and_edits() {
    let mut forest = Forest::new();
    let (root, user, reply) = conversation(&mut forest);
    forest.set_meta(user, "{\"k\": 1}").unwrap();
    forest.set_finish(reply, "length").unwrap();
    let view = forest.node(user).unwrap();
    assert_eq!(view.participant, 1);
    assert_eq!(
        (view.role, view.text, view.meta, view.finish),
        ("user", "hi", "{\"k\": 1}", "")
    );
    assert_eq!(
        (view.depth, view.parent, view.children),
        (1, Some(root), vec![reply])
    );
    assert_eq!(forest.node(reply).unwrap().finish, "length");
    // Shorter meta is written in place; text is untouched either way.
    forest.set_meta(user, "{}").unwrap();
    assert_eq!(forest.node(user).unwrap().meta, "{}");
    assert_eq!(forest.node(user).unwrap().text, "hi");
    // Replacing a segment, growing and shrinking, and adding a new view.
    forest.set_segment(user, 0, &[30, 31, 32]).unwrap();
    assert_eq!(forest.lane(reply, 0), Ok(vec![1, 2, 30, 31, 32, 6, 7]));
    forest.set_segment(user, 0, &[33]).unwrap();
    forest.set_segment(reply, 1, &[8]).unwrap();
    assert_eq!(forest.lane(reply, 0), Ok(vec![1, 2, 33, 6, 7]));
    assert_eq!(forest.lane(reply, 1), Ok(vec![9, 4, 5, 8]));
}

#[test]
fn branches_and_shared_prefix() {
    let mut forest = Forest::new();
    let (root, user, reply) = conversation(&mut forest);
    let alt = forest
        .append(user, &msg("assistant", "hey", vec![(0, &[8])]))
        .unwrap();
    assert_eq!(forest.children(user), Ok(vec![reply, alt]));
    assert_eq!(forest.lane(alt, 0), Ok(vec![1, 2, 3, 8]));
    assert_eq!(forest.shared_prefix_len(reply, alt), Ok(2));
    assert_eq!(forest.shared_prefix_len(alt, reply), Ok(2));
    assert_eq!(forest.shared_prefix_len(reply, reply), Ok(3));
    assert_eq!(forest.shared_prefix_len(root, alt), Ok(1));
    let other = forest.add_root(&msg("system", "", vec![])).unwrap();
    assert_eq!(forest.shared_prefix_len(other, alt), Ok(0));
    assert_eq!(forest.stats().roots, 2);
}

#[test]
fn subtree_tokens_sum_every_segment_below() {
    let mut forest = Forest::new();
    let (root, user, reply) = conversation(&mut forest);
    forest
        .append(
            user,
            &msg("assistant", "hey", vec![(0, &[8]), (2, &[1, 1, 1])]),
        )
        .unwrap();
    // root 2 + 1, user 1 + 2, reply 2, alt 1 + 3
    assert_eq!(forest.subtree_tokens(root, None), Ok(12));
    assert_eq!(forest.subtree_tokens(root, Some(&[0])), Ok(6));
    assert_eq!(forest.subtree_tokens(root, Some(&[1, 2])), Ok(6));
    assert_eq!(forest.subtree_tokens(root, Some(&[])), Ok(0));
    assert_eq!(forest.subtree_tokens(user, None), Ok(9));
    assert_eq!(forest.subtree_tokens(reply, None), Ok(2));
    forest.free_subtree(user).unwrap();
    assert_eq!(forest.subtree_tokens(root, None), Ok(3));
    assert_eq!(
        forest.subtree_tokens(user, None),
        Err(CoreError::StaleNode(user))
    );
}

#[test]
fn free_makes_ids_stale_and_keeps_the_rest() {
    let mut forest = Forest::with_compaction_floor(1);
    let (root, user, reply) = conversation(&mut forest);
    let alt = forest
        .append(user, &msg("assistant", "hey", vec![(0, &[8])]))
        .unwrap();
    assert_eq!(forest.free_subtree(reply), Ok(1));
    assert_eq!(forest.children(user), Ok(vec![alt]));
    assert_eq!(forest.depth(reply), Err(CoreError::StaleNode(reply)));
    assert!(!forest.is_live(reply));
    // The slot is reused under a new generation; the old id stays stale.
    let again = forest
        .append(alt, &msg("user", "more", vec![(0, &[10])]))
        .unwrap();
    assert_eq!(unpack(again).1, unpack(reply).1);
    assert_ne!(again, reply);
    assert_eq!(forest.lane(reply, 0), Err(CoreError::StaleNode(reply)));
    assert_eq!(forest.lane(again, 0), Ok(vec![1, 2, 3, 8, 10]));
    assert_eq!(forest.free_subtree(root), Ok(4));
    assert_eq!(forest.len(), 0);
    assert_eq!(forest.stats().roots, 0);
    assert_eq!(forest.stats().freed_nodes, 5);
    for id in [root, user, alt, again] {
        assert_eq!(forest.node(id).map(|_| ()), Err(CoreError::StaleNode(id)));
    }
}

#[test]
fn unknown_ids() {
    let mut forest = Forest::new();
    let (root, _, _) = conversation(&mut forest);
    let (generation, slot) = unpack(root);
    for id in [
        0,
        1,
        2,
        pack(generation, 99),
        pack(generation + 1, slot),
        u64::MAX,
    ] {
        assert_eq!(
            forest.parent(id),
            Err(CoreError::UnknownNode(id)),
            "id {id:#x}"
        );
        assert!(!forest.is_live(id));
    }
}

#[test]
fn bad_arguments() {
    let mut forest = Forest::new();
    let (root, _, _) = conversation(&mut forest);
    let invalid = |r: CoreResult<NodeId>| matches!(r, Err(CoreError::InvalidArgument(_)));
    assert!(invalid(forest.append(root, &msg("robot", "", vec![]))));
    assert!(invalid(forest.append(
        root,
        &NewNode {
            finish: "done",
            ..msg("user", "", vec![])
        }
    )));
    assert!(invalid(
        forest.append(root, &msg("user", "", vec![(0, &[1]), (0, &[2])]))
    ));
    assert!(matches!(
        forest.set_finish(root, "nope"),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        forest.lanes_for(&[root], &[]),
        Err(CoreError::InvalidArgument(_))
    ));
    assert_eq!(narrow_u16(65_535, "view"), Ok(65_535));
    assert!(matches!(
        narrow_u16(65_536, "view"),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        narrow_u16(-1, "participant"),
        Err(CoreError::InvalidArgument(_))
    ));
    assert_eq!(forest.len(), 3);
}

#[test]
fn append_many_is_all_or_nothing() {
    let mut forest = Forest::new();
    let (root, user, reply) = conversation(&mut forest);
    let before = forest.stats();
    let nodes = vec![msg("user", "a", vec![(0, &[1])]), msg("user", "b", vec![])];
    let stale = {
        let tmp = forest.append(root, &msg("user", "tmp", vec![])).unwrap();
        forest.free_subtree(tmp).unwrap();
        tmp
    };
    let after_tmp = forest.stats();
    assert_eq!(
        forest.append_many(&[user, stale], &nodes),
        Err(CoreError::StaleNode(stale))
    );
    let bad = vec![msg("user", "a", vec![]), msg("wizard", "b", vec![])];
    assert!(matches!(
        forest.append_many(&[user, reply], &bad),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        forest.append_many(&[user], &nodes),
        Err(CoreError::InvalidArgument(_))
    ));
    let unchanged = forest.stats();
    assert_eq!(
        (unchanged.live_nodes, unchanged.tokens, unchanged.text_bytes),
        (3, after_tmp.tokens, after_tmp.text_bytes)
    );
    assert_eq!(before.live_nodes, 3);
    let ids = forest.append_many(&[reply, reply], &nodes).unwrap();
    assert_eq!(forest.children(reply), Ok(ids.clone()));
    assert_eq!(forest.lane(ids[0], 0), Ok(vec![1, 2, 3, 6, 7, 1]));
}

#[test]
fn compaction_reclaims_space_and_keeps_data() {
    let mut forest = Forest::with_compaction_floor(64);
    let tokens: Vec<u32> = (0..100).collect();
    let mut keep = Vec::new();
    for round in 0..50u32 {
        let root = forest
            .add_root(&msg("system", "sys", vec![(0, &tokens)]))
            .unwrap();
        let leaf = forest
            .append(
                root,
                &msg("user", "question", vec![(0, &tokens[..round as usize])]),
            )
            .unwrap();
        if round % 10 == 0 {
            keep.push((
                leaf,
                forest.lane(leaf, 0).unwrap(),
                forest.node(leaf).unwrap().text.to_owned(),
            ));
        } else {
            forest.free_subtree(root).unwrap();
        }
    }
    let stats = forest.stats();
    assert!(stats.compactions > 0);
    assert_eq!(stats.live_nodes, 10);
    // Garbage stays below half the arena (plus the compaction floor).
    assert!(
        stats.token_capacity <= 2 * stats.tokens + 64 + 64,
        "{stats:?}"
    );
    for (leaf, lane, text) in keep {
        assert_eq!(forest.lane(leaf, 0).unwrap(), lane);
        assert_eq!(forest.node(leaf).unwrap().text, text);
    }
}

#[test]
fn retired_slot_is_never_reused() {
    let mut forest = Forest::new();
    let root = forest.add_root(&msg("system", "", vec![])).unwrap();
    let slot = unpack(root).1;
    forest.slots[slot as usize].generation = u32::MAX - 1;
    let last = pack(u32::MAX - 1, slot);
    forest.free_subtree(last).unwrap();
    let next = forest.add_root(&msg("system", "", vec![])).unwrap();
    assert_ne!(unpack(next).1, slot);
    assert_eq!(forest.parent(last), Err(CoreError::StaleNode(last)));
    assert_eq!(forest.parent(root), Err(CoreError::StaleNode(root)));
}

#[test]
fn core_bytes_per_node_stay_under_100() {
    let mut forest = Forest::new();
    let tokens: Vec<u32> = (0..50).collect();
    let mut parents = Vec::new();
    for _ in 0..2_000 {
        let root = forest
            .add_root(&msg("system", "sys", vec![(0, &tokens), (1, &tokens)]))
            .unwrap();
        parents.push(root);
    }
    for _ in 0..7 {
        let nodes: Vec<NewNode> = parents
            .iter()
            .map(|_| msg("user", "turn", vec![(0, &tokens[..]), (1, &tokens[..])]))
            .collect();
        parents = forest.append_many(&parents, &nodes).unwrap();
    }
    let stats = forest.stats();
    let per_node = stats.core_bytes as f64 / stats.live_nodes as f64;
    assert!(per_node < 100.0, "{per_node} bytes per node");
}

#[test]
fn split_segments_locates_each_node_view() {
    let tokens = [1, 2, 3, 4, 5, 6, 7];
    let split = split_segments(2, &[0, 3], &tokens, &[1, 3, 3, 6, 7]).unwrap();
    let expected: Vec<(u16, &[u32])> = vec![(0, &[2, 3]), (3, &[]), (0, &[4, 5, 6]), (3, &[7])];
    assert_eq!(split, expected);
    assert_eq!(split_segments(0, &[0], &[], &[0]), Ok(vec![]));
    assert_eq!(split_segments(2, &[], &[], &[0]), Ok(vec![]));
    let invalid =
        |r: CoreResult<Vec<(u16, &[u32])>>| matches!(r, Err(CoreError::InvalidArgument(_)));
    assert!(invalid(split_segments(2, &[0], &tokens, &[0, 1])));
    assert!(invalid(split_segments(0, &[0], &tokens, &[])));
    assert!(invalid(split_segments(2, &[0], &tokens, &[0, 3, 2])));
    assert!(invalid(split_segments(2, &[0], &tokens, &[0, 3, 8])));
    assert!(invalid(split_segments(usize::MAX, &[0, 1], &tokens, &[0])));
}

#[test]
fn add_many_takes_roots_and_children_all_or_nothing() {
    let mut forest = Forest::new();
    let (root, user, _) = conversation(&mut forest);
    let nodes = vec![
        msg("system", "new tree", vec![(0, &[40])]),
        msg("user", "turn", vec![(0, &[41])]),
    ];
    let ids = forest.add_many(&[None, Some(user)], &nodes).unwrap();
    assert_eq!(forest.parent(ids[0]), Ok(None));
    assert_eq!(forest.lane(ids[1], 0), Ok(vec![1, 2, 3, 41]));
    assert_eq!(forest.stats().roots, 2);
    forest.free_subtree(ids[0]).unwrap();
    let before = forest.stats();
    assert_eq!(
        forest.add_many(&[None, Some(ids[0])], &nodes),
        Err(CoreError::StaleNode(ids[0]))
    );
    let bad = vec![msg("system", "", vec![]), msg("wizard", "", vec![])];
    assert!(matches!(
        forest.add_many(&[None, Some(root)], &bad),
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        forest.add_many(&[None], &nodes),
        Err(CoreError::InvalidArgument(_))
    ));
    assert_eq!(forest.stats(), before);
}

#[test]
fn lanes_packed_matches_lanes_for() {
    let mut forest = Forest::new();
    let (root, user, reply) = conversation(&mut forest);
    let (ids, views) = ([reply, user, root, reply], [1, 0, 0, 7]);
    let (tokens, offsets) = forest.lanes_packed(&ids, &views).unwrap();
    assert_eq!(offsets, vec![0, 3, 6, 8, 8]);
    let lanes = forest.lanes_for(&ids, &views).unwrap();
    assert_eq!(tokens, lanes.concat());
    assert_eq!(forest.lanes_packed(&[], &[]), Ok((vec![], vec![0])));
    assert!(matches!(
        forest.lane_offsets(&[root], &[]),
        Err(CoreError::InvalidArgument(_))
    ));
    forest.free_subtree(user).unwrap();
    assert_eq!(
        forest.lanes_packed(&[root, reply], &[0, 0]),
        Err(CoreError::StaleNode(reply))
    );
}

#[test]
fn write_lanes_rejects_offsets_that_do_not_fit() {
    let mut forest = Forest::new();
    let (root, user, reply) = conversation(&mut forest);
    let (ids, views) = ([reply, root], [0, 0]);
    let mut out = vec![0; 7];
    forest
        .write_lanes(&ids, &views, &[0, 5, 7], &mut out)
        .unwrap();
    assert_eq!(out, vec![1, 2, 3, 6, 7, 1, 2]);
    for (offsets, len) in [
        (&[0, 5][..], 7),
        (&[0, 5, 7], 6),
        (&[1, 5, 7], 7),
        (&[0, 8, 7], 7),
        (&[0, 4, 7], 7),
        (&[0, 6, 7], 7),
    ] {
        let mut out = vec![0; len];
        assert!(
            matches!(
                forest.write_lanes(&ids, &views, offsets, &mut out),
                Err(CoreError::InvalidArgument(_))
            ),
            "{offsets:?} into {len}"
        );
    }
    forest.free_subtree(user).unwrap();
    assert_eq!(
        forest.write_lanes(&ids, &views, &[0, 5, 7], &mut out),
        Err(CoreError::StaleNode(reply))
    );
}

#[test]
fn codes_follow_table_order() {
    for (code, role) in ROLES.iter().enumerate() {
        assert_eq!(role_code(role), Ok(code as u8));
    }
    for (code, finish) in FINISH_REASONS.iter().enumerate() {
        assert_eq!(finish_code(finish), Ok(code as u8));
    }
    assert!(role_code("System").is_err() && finish_code("stop ").is_err());
}
