use super::*;

fn cache(capacity: usize) -> RadixCache {
    RadixCache::new(capacity).unwrap()
}

#[test]
fn zero_capacity_is_rejected() {
    assert!(matches!(RadixCache::new(0), Err(CoreError::InvalidArgument(_))));
}

#[test]
fn insert_then_match_shares_prefixes() {
    let mut c = cache(100);
    assert_eq!(c.insert(&[1, 2, 3, 4]), 4);
    assert_eq!(c.insert(&[1, 2, 5]), 1);
    assert_eq!(c.insert(&[1, 2, 3]), 0);
    assert_eq!(c.size(), 5);
    assert_eq!(c.match_len(&[1, 2, 3, 9]), 3);
    assert_eq!(c.match_len(&[1, 2, 5, 6]), 3);
    assert_eq!(c.match_len(&[7]), 0);
    assert_eq!(c.match_len(&[]), 0);
    c.check_invariants();
    let s = c.stats();
    assert_eq!((s.queries, s.query_tokens, s.hit_tokens, s.inserted), (4, 9, 6, 5));
    // [1,2] [3] [4] [5] after the splits.
    assert_eq!(s.nodes, 4);
}

#[test]
fn split_inside_edge_keeps_tokens() {
    let mut c = cache(100);
    c.insert(&[1, 2, 3, 4, 5]);
    assert_eq!(c.match_len(&[1, 2, 3]), 3);
    assert_eq!(c.stats().nodes, 2);
    assert_eq!(c.match_len(&[1, 2, 3, 4, 5]), 5);
    assert_eq!(c.size(), 5);
    c.check_invariants();
}

#[test]
fn eviction_takes_least_recently_used_leaf() {
    let mut c = cache(6);
    c.insert(&[1, 1, 1]);
    c.insert(&[2, 2, 2]);
    c.match_len(&[1]); // splits [1,1,1] and refreshes only its first token
    c.match_len(&[1, 1, 1]); // refresh the whole of it
    assert_eq!(c.insert(&[3, 3]), 2);
    assert_eq!(c.peek_len(&[2, 2, 2]), 0, "the older leaf goes first");
    assert_eq!(c.peek_len(&[1, 1, 1]), 3);
    assert_eq!(c.size(), 5);
    c.check_invariants();
}

#[test]
fn split_keeps_the_lower_part_old() {
    let mut c = cache(8);
    c.insert(&[1, 1, 1, 1]);
    c.insert(&[2, 2]);
    c.match_len(&[1, 1]); // the [1,1] head is fresh, the [1,1] tail is not
    assert_eq!(c.evict(1), 2);
    assert_eq!(c.peek_len(&[1, 1, 1, 1]), 2, "the stale tail was the LRU leaf");
    assert_eq!(c.peek_len(&[2, 2]), 2);
    c.check_invariants();
}

#[test]
fn insert_evicts_only_what_it_needs() {
    let mut c = cache(6);
    c.insert(&[1, 1]);
    c.insert(&[2, 2]);
    c.insert(&[3, 3]);
    assert_eq!(c.insert(&[4]), 1);
    assert_eq!(c.size(), 5);
    assert_eq!(c.peek_len(&[1, 1]), 0);
    assert_eq!(c.stats().evicted, 2);
    c.check_invariants();
}

#[test]
fn insert_never_evicts_the_path_it_extends() {
    let mut c = cache(4);
    c.insert(&[1, 2]);
    // [1,2] is the only evictable leaf, and it is the prefix being extended.
    assert_eq!(c.insert(&[1, 2, 3, 4, 5]), 2);
    assert_eq!(c.peek_len(&[1, 2, 3, 4, 5]), 4);
    assert_eq!(c.stats().evicted, 0);
    c.check_invariants();
}

#[test]
fn pinned_paths_survive_and_limit_inserts() {
    let mut c = cache(5);
    c.insert(&[1, 2, 3]);
    assert_eq!(c.pin(&[1, 2, 3, 7]), 3);
    assert_eq!(c.pinned(), 3);
    assert_eq!(c.insert(&[5, 6, 7, 8]), 2, "only the part that fits is cached");
    assert_eq!(c.size(), 5);
    assert_eq!(c.peek_len(&[1, 2, 3]), 3);
    assert_eq!(c.peek_len(&[5, 6, 7, 8]), 2);
    c.clear();
    assert_eq!(c.size(), 3);
    assert_eq!(c.evict(10), 0);
    assert_eq!(c.unpin(&[1, 2, 3, 7]).unwrap(), 3);
    assert_eq!(c.pinned(), 0);
    c.clear();
    assert_eq!(c.size(), 0);
    assert_eq!(c.stats().nodes, 0);
    c.check_invariants();
}

#[test]
fn pin_inside_an_edge_pins_only_the_match() {
    let mut c = cache(6);
    c.insert(&[1, 2, 3, 4]);
    assert_eq!(c.pin(&[1, 2, 9]), 2);
    assert_eq!(c.pinned(), 2);
    assert_eq!(c.evict(1), 2, "the unpinned tail [3,4] is a leaf");
    assert_eq!(c.size(), 2);
    c.check_invariants();
}

#[test]
fn unpin_undoes_the_matching_pin_after_the_cache_grew() {
    let mut c = cache(10);
    c.insert(&[1, 2]);
    assert_eq!(c.pin(&[1, 2, 3]), 2);
    // The request finishes: its prompt + output is cached, then unpinned.
    c.insert(&[1, 2, 3, 4]);
    assert_eq!(c.pin(&[1, 2, 3, 4]), 4);
    assert_eq!(c.unpin(&[1, 2, 3]).unwrap(), 2);
    assert_eq!(c.pinned(), 4, "the other pin still holds the whole path");
    assert_eq!(c.unpin(&[1, 2, 3, 4]).unwrap(), 4);
    assert_eq!(c.pinned(), 0);
    assert!(matches!(c.unpin(&[1, 2, 3]), Err(CoreError::InvalidArgument(_))));
    c.check_invariants();
}

#[test]
fn repeated_pins_of_one_sequence_stack() {
    let mut c = cache(10);
    assert_eq!(c.pin(&[1, 2]), 0);
    c.insert(&[1, 2]);
    assert_eq!(c.pin(&[1, 2]), 2);
    assert_eq!(c.unpin(&[1, 2]).unwrap(), 2, "most recent pin first");
    assert_eq!(c.unpin(&[1, 2]).unwrap(), 0);
    c.check_invariants();
}

#[test]
fn sequence_longer_than_capacity_keeps_its_head() {
    let mut c = cache(3);
    c.insert(&[9]);
    assert_eq!(c.insert(&[1, 2, 3, 4, 5]), 3);
    assert_eq!(c.peek_len(&[1, 2, 3, 4, 5]), 3);
    assert_eq!(c.size(), 3);
    c.check_invariants();
}

#[test]
fn evicting_a_leaf_exposes_its_parent() {
    let mut c = cache(100);
    c.insert(&[1, 2, 3]);
    c.insert(&[1, 2, 4]);
    assert_eq!(c.evict(3), 4, "two leaves, then the parent they leave behind");
    assert_eq!(c.size(), 0);
    c.check_invariants();
}

#[test]
fn heap_stays_compact_under_repeated_matches() {
    let mut c = cache(100);
    c.insert(&[1, 2, 3]);
    for _ in 0..10_000 {
        c.match_len(&[1, 2, 3]);
    }
    c.check_invariants();
    assert_eq!(c.evict(1), 3);
}

#[test]
fn many_sequences_stay_within_capacity() {
    let mut c = cache(50_000);
    let mut x: u64 = 7;
    for i in 0..20_000u32 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let branch = (x >> 40) as u32 % 64;
        let len = 20 + (x >> 20) as usize % 40;
        let seq: Vec<u32> = (0..len as u32).map(|t| if t < 10 { branch } else { t ^ i }).collect();
        c.insert(&seq);
        assert!(c.size() <= c.capacity());
    }
    assert!(c.stats().evicted > 0);
    c.check_invariants();
}
