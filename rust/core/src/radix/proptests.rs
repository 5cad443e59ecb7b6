//! Property tests: invariants after every operation, and comparison with a
//! naive model (the set of cached sequences, searched by brute force).

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Match(Vec<u32>),
    Insert(Vec<u32>),
    Pin(Vec<u32>),
    Unpin(usize),
    Evict(usize),
    Clear,
}

/// Small alphabet and short sequences, so prefixes collide often.
fn seq() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..3, 0..10)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => seq().prop_map(Op::Match),
        5 => seq().prop_map(Op::Insert),
        2 => seq().prop_map(Op::Pin),
        2 => any::<usize>().prop_map(Op::Unpin),
        1 => (0usize..12).prop_map(Op::Evict),
        1 => Just(Op::Clear),
    ]
}

fn lcp(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Longest prefix of `tokens` shared with any of `sequences`.
fn naive_match(sequences: &[Vec<u32>], tokens: &[u32]) -> usize {
    sequences.iter().map(|s| lcp(s, tokens)).max().unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_under_any_operations(capacity in 1usize..24, ops in prop::collection::vec(op(), 1..80)) {
        let mut c = RadixCache::new(capacity).unwrap();
        let mut inserted: Vec<Vec<u32>> = Vec::new();
        let mut pins: Vec<(Vec<u32>, usize)> = Vec::new();
        for op in ops {
            match op {
                Op::Match(t) => {
                    let expected = naive_match(&c.cached_sequences(), &t);
                    let got = c.match_len(&t);
                    prop_assert_eq!(got, expected);
                    prop_assert!(got <= t.len() && got <= c.size());
                }
                Op::Insert(t) => {
                    let before = c.size();
                    let nothing_pinned = c.pinned() == 0;
                    let added = c.insert(&t);
                    prop_assert!(c.size() <= before + added);
                    if nothing_pinned && t.len() <= capacity {
                        prop_assert_eq!(c.peek_len(&t), t.len());
                    }
                    inserted.push(t);
                }
                Op::Pin(t) => {
                    let expected = c.peek_len(&t);
                    prop_assert_eq!(c.pin(&t), expected);
                    pins.push((t, expected));
                }
                Op::Unpin(i) => {
                    if pins.is_empty() {
                        continue;
                    }
                    let t = pins[i % pins.len()].0.clone();
                    // Pins of one sequence come off most recent first.
                    let last = pins.iter().rposition(|(s, _)| *s == t).unwrap();
                    let (_, len) = pins.remove(last);
                    prop_assert_eq!(c.unpin(&t), Ok(len));
                }
                Op::Evict(n) => {
                    let before = c.size();
                    let freed = c.evict(n);
                    prop_assert_eq!(before - freed, c.size());
                    prop_assert!(freed >= n.min(before - c.pinned()) || c.size() == c.pinned());
                }
                Op::Clear => {
                    c.clear();
                    prop_assert_eq!(c.size(), c.pinned());
                }
            }
            c.check_invariants();
            for (t, len) in &pins {
                prop_assert!(c.peek_len(t) >= *len, "a pinned prefix was evicted");
            }
            // Everything cached was inserted at some point.
            for s in c.cached_sequences() {
                prop_assert!(inserted.iter().any(|i| i.starts_with(&s)), "cached {:?} was never inserted", s);
            }
        }
    }

    #[test]
    fn without_eviction_the_cache_is_the_set_of_inserted_sequences(
        seqs in prop::collection::vec(seq(), 1..30),
        queries in prop::collection::vec(seq(), 1..30),
    ) {
        let mut c = RadixCache::new(1000).unwrap();
        let mut total = 0;
        for (i, s) in seqs.iter().enumerate() {
            let before = naive_match(&seqs[..i], s);
            prop_assert_eq!(c.insert(s), s.len() - before);
            total += s.len() - before;
        }
        prop_assert_eq!(c.size(), total);
        for q in &queries {
            prop_assert_eq!(c.match_len(q), naive_match(&seqs, q));
        }
        c.check_invariants();
        let s = c.stats();
        prop_assert_eq!(s.inserted as usize, total);
        prop_assert_eq!(s.evicted, 0);
    }
}
