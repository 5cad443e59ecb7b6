//! Property tests: exact agreement with the naive model, and the guarantees
//! of the module docs checked directly.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use proptest::sample::Index;

use super::model::Model;
use super::*;

type PushItem = (u64, u64, u64, i64, u64);

#[derive(Debug, Clone)]
enum Op {
    Push(Vec<PushItem>),
    Pop(usize, u64),
    Complete(Vec<Index>, Option<u64>),
    Update(u64, u64),
    Finish(u64),
    SetTreeReserve(u64),
}

fn push_item() -> impl Strategy<Value = PushItem> {
    (0u64..12, 0u64..4, 1u64..50, -1i64..2, 0u64..55)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(push_item(), 1..4).prop_map(Op::Push),
        4 => (1usize..5, 1u64..120).prop_map(|(r, t)| Op::Pop(r, t)),
        3 => (prop::collection::vec(any::<Index>(), 0..3), prop::option::weighted(0.1, 0u64..12))
            .prop_map(|(i, x)| Op::Complete(i, x)),
        1 => (0u64..12, 0u64..55).prop_map(|(j, c)| Op::Update(j, c)),
        2 => (0u64..4).prop_map(Op::Finish),
        1 => (0u64..120).prop_map(Op::SetTreeReserve),
    ]
}

fn same_outcome<T: PartialEq + std::fmt::Debug>(a: CoreResult<T>, b: CoreResult<T>) -> Result<(), TestCaseError> {
    match (a, b) {
        (Ok(x), Ok(y)) => prop_assert_eq!(x, y),
        (Err(x), Err(y)) => prop_assert_eq!(std::mem::discriminant(&x), std::mem::discriminant(&y)),
        (x, y) => prop_assert!(false, "scheduler {:?} but model {:?}", x, y),
    }
    Ok(())
}

/// Pop `max_requests`/`max_tokens` batches, checking the limits.
fn pop_checked(s: &mut Scheduler, r: usize, t: u64, lens: &HashMap<u64, u64>) -> Result<Vec<u64>, TestCaseError> {
    let batch = s.pop_batch(r, t).unwrap();
    prop_assert!(batch.len() <= r);
    let tokens: u64 = batch.iter().map(|id| lens[id]).sum();
    prop_assert!(batch.len() <= 1 || tokens <= t, "batch of {} tokens over {}", tokens, t);
    Ok(batch)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn agrees_with_the_naive_model(
        budget in prop::option::of(0u64..200),
        limit in 0u64..5,
        reserve in 0u64..10,
        tree_reserve in prop_oneof![Just(0u64), 0u64..120],
        min_runnable in prop_oneof![Just(0u64), 0u64..6],
        floor_trees in prop::option::of(0u64..4),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut s = Scheduler::new(budget, limit, reserve, tree_reserve, min_runnable).unwrap();
        let mut m = Model::new(budget, limit, reserve, tree_reserve, min_runnable);
        s.set_floor_trees(floor_trees);
        m.set_floor_trees(floor_trees);
        let mut in_flight: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Push(items) => {
                    let col = |f: fn(&PushItem) -> u64| items.iter().map(f).collect::<Vec<u64>>();
                    let prios: Vec<i64> = items.iter().map(|i| i.3).collect();
                    let got = s.push_many(&col(|i| i.0), &col(|i| i.1), &col(|i| i.2), Some(&prios), Some(&col(|i| i.4)));
                    same_outcome(got, m.push(&items))?;
                }
                Op::Pop(r, t) => {
                    let got = s.pop_batch(r, t).unwrap();
                    prop_assert_eq!(&got, &m.pop(r, t));
                    in_flight.extend(got);
                }
                Op::Complete(picks, extra) => {
                    let mut ids: Vec<u64> = if in_flight.is_empty() {
                        vec![]
                    } else {
                        picks.iter().map(|i| in_flight[i.index(in_flight.len())]).collect()
                    };
                    ids.extend(extra);
                    let got = s.complete_many(&ids);
                    let ok = got.is_ok();
                    same_outcome(got, m.complete(&ids))?;
                    if ok {
                        in_flight.retain(|j| !ids.contains(j));
                    }
                }
                Op::Update(j, c) => same_outcome(s.update_cached(&[j], &[c]), m.update(j, c))?,
                Op::Finish(t) => same_outcome(s.finish_tree(t), m.finish(t))?,
                Op::SetTreeReserve(r) => {
                    s.set_tree_reserve(r).unwrap();
                    m.set_tree_reserve(r);
                }
            }
            s.check_invariants();
            let st = s.stats();
            prop_assert_eq!(st.waiting, m.waiting());
            prop_assert_eq!(st.admitted_trees, m.admitted_trees());
            prop_assert_eq!(st.admitted_tokens, m.admitted_tokens());
            prop_assert_eq!(st.runnable, m.runnable());
            prop_assert_eq!(st.pops, m.pops);
            prop_assert_eq!(st.max_wait, m.max_wait);
            prop_assert_eq!(st.max_wait_admitted, m.max_wait_admitted);
            prop_assert!(st.max_wait_admitted <= st.max_wait);
        }
    }

    #[test]
    fn every_job_is_returned_exactly_once(
        budget in prop::option::of(0u64..300),
        limit in 0u64..8,
        steps in prop::collection::vec(
            (prop::collection::vec((0u64..6, 1u64..60, -2i64..3), 0..4), 1usize..6, 1u64..150, 0.0f64..1.0),
            1..40,
        ),
    ) {
        let mut s = Scheduler::new(budget, limit, 7, 0, 0).unwrap();
        let mut next = 0u64;
        let mut lens = HashMap::new();
        let mut tree_of = HashMap::new();
        let mut popped = HashSet::new();
        let mut in_flight: Vec<u64> = Vec::new();
        let mut waiting_per_tree: HashMap<u64, usize> = HashMap::new();
        for (jobs, r, t, done) in steps {
            for (tree, len, prio) in jobs {
                s.push_many(&[next], &[tree], &[len], Some(&[prio]), None).unwrap();
                lens.insert(next, len);
                tree_of.insert(next, tree);
                *waiting_per_tree.entry(tree).or_default() += 1;
                next += 1;
            }
            for id in pop_checked(&mut s, r, t, &lens)? {
                prop_assert!(popped.insert(id), "job {} returned twice", id);
                *waiting_per_tree.get_mut(&tree_of[&id]).unwrap() -= 1;
                in_flight.push(id);
            }
            let k = (in_flight.len() as f64 * done) as usize;
            let finished: Vec<u64> = in_flight.drain(..k).collect();
            s.complete_many(&finished).unwrap();
        }
        // Drain: complete everything, and finish idle trees when the budget stalls.
        let mut stalls = 0;
        while !s.is_empty() {
            let batch = pop_checked(&mut s, 4, 100, &lens)?;
            if batch.is_empty() {
                stalls += 1;
                prop_assert!(stalls < 100, "no progress");
                s.complete_many(&in_flight).unwrap();
                in_flight.clear();
                for (&tree, &w) in &waiting_per_tree {
                    if w == 0 {
                        s.finish_tree(tree).unwrap();
                    }
                }
            }
            for id in batch {
                prop_assert!(popped.insert(id), "job {} returned twice", id);
                *waiting_per_tree.get_mut(&tree_of[&id]).unwrap() -= 1;
                in_flight.push(id);
            }
        }
        prop_assert_eq!(popped.len() as u64, next);
        s.complete_many(&in_flight).unwrap();
        for tree in 0..6 {
            s.finish_tree(tree).unwrap();
        }
        let st = s.stats();
        prop_assert_eq!((st.admitted_trees, st.admitted_tokens, st.in_flight), (0, 0, 0));
        s.check_invariants();
    }

    #[test]
    fn starving_jobs_go_first_and_wait_is_bounded(
        limit in 0u64..6,
        steps in prop::collection::vec(
            (prop::collection::vec((0u64..5, 1u64..20, -3i64..3, 0u64..20), 0..5), 1usize..4, 1u64..50),
            1..80,
        ),
    ) {
        let mut s = Scheduler::new(None, limit, 16, 0, 0).unwrap();
        let mut next = 0u64;
        let mut lens = HashMap::new();
        // Waiting jobs in push order (ids grow with pushes): id -> push pop.
        let mut waiting: std::collections::BTreeMap<u64, u64> = Default::default();
        // Older jobs still waiting when a job reached the limit.
        let mut ahead: HashMap<u64, u64> = HashMap::new();
        for (pop, (jobs, r, t)) in steps.into_iter().enumerate() {
            let pop = pop as u64;
            for (tree, len, prio, cached) in jobs {
                let cached = cached.min(len);
                s.push_many(&[next], &[tree], &[len], Some(&[prio]), Some(&[cached])).unwrap();
                lens.insert(next, len);
                waiting.insert(next, pop);
                next += 1;
            }
            let starving: Vec<u64> = waiting.iter().filter(|(_, &p)| pop - p >= limit).map(|(&id, _)| id).collect();
            for (k, &id) in starving.iter().enumerate() {
                if pop - waiting[&id] == limit {
                    ahead.insert(id, k as u64);
                }
            }
            let batch = pop_checked(&mut s, r, t, &lens)?;
            prop_assert!(!batch.is_empty() || waiting.is_empty(), "a pop returned nothing with jobs ready");
            // Starving jobs come first, oldest first.
            let n = starving.len().min(batch.len());
            prop_assert_eq!(&batch[..n], &starving[..n]);
            for id in &batch {
                let wait = pop - waiting.remove(id).unwrap();
                if wait >= limit {
                    prop_assert!(wait <= limit + ahead[id], "job {} waited {} pops with {} ahead", id, wait, ahead[id]);
                }
                if wait >= limit && ahead[id] == 0 {
                    prop_assert_eq!(wait, limit, "the oldest job is served when it reaches the limit");
                }
            }
            s.complete_many(&batch).unwrap();
        }
    }

    #[test]
    fn budget_is_only_exceeded_by_a_lone_tree_or_under_the_floor(
        budget in 0u64..400,
        reserve in 0u64..20,
        tree_reserve in prop_oneof![Just(0u64), 0u64..300],
        min_runnable in prop_oneof![Just(0u64), 0u64..8],
        floor_trees in prop::option::of(0u64..5),
        trees in prop::collection::vec(prop::collection::vec(1u64..80, 1..4), 1..15),
        pops in prop::collection::vec((1usize..4, 0.0f64..1.0, any::<bool>(), prop::option::of(0u64..300)), 1..60),
    ) {
        // Each tree's jobs are pushed together and it gets no more jobs, so
        // admitted trees never grow: admission alone decides admitted_tokens.
        // Under the floor a tree (at most 3 jobs) is admitted past the budget,
        // so past the budget, jobs of admitted trees stay under floor + 3.
        const MAX_TREE_JOBS: usize = 3;
        let mut s = Scheduler::new(Some(budget), 3, reserve, tree_reserve, min_runnable).unwrap();
        s.set_floor_trees(floor_trees);
        let mut next = 0u64;
        let mut jobs_left: HashMap<u64, usize> = HashMap::new();
        let mut lens = HashMap::new();
        let mut tree_of = HashMap::new();
        for (t, prompts) in trees.iter().enumerate() {
            let ids: Vec<u64> = (next..next + prompts.len() as u64).collect();
            for (id, &len) in ids.iter().zip(prompts) {
                lens.insert(*id, len);
                tree_of.insert(*id, t as u64);
            }
            next += ids.len() as u64;
            s.push_many(&ids, &vec![t as u64; ids.len()], prompts, None, None).unwrap();
            jobs_left.insert(t as u64, ids.len());
        }
        let mut in_flight: Vec<u64> = Vec::new();
        let floor = min_runnable as usize;
        for (r, done, finish, set_reserve) in pops {
            if let Some(tokens) = set_reserve {
                s.set_tree_reserve(tokens).unwrap();
            }
            let before = s.stats();
            let batch = pop_checked(&mut s, r, 1000, &lens)?;
            let after = s.stats();
            prop_assert!(!batch.is_empty() || before.waiting == 0 || before.admitted_trees > 0, "stalled with nothing admitted");
            prop_assert!(after.admitted_tokens <= budget || after.admitted_trees == 1 || after.runnable < floor + MAX_TREE_JOBS,
                "{} tokens admitted over budget {} by {} trees with {} runnable jobs",
                after.admitted_tokens, budget, after.admitted_trees, after.runnable);
            // Only the floor admits past the budget, and only while fewer than
            // floor_trees trees are admitted.
            let cap = floor_trees.unwrap_or(u64::MAX).max(1);
            prop_assert!(after.admitted_tokens <= budget || after.admitted_trees as u64 <= cap,
                "{} trees admitted over budget past the cap {}", after.admitted_trees, cap);
            // The floor: a pop cut short (never by max_tokens here) with jobs
            // still waiting means admission stopped at or above the floor, or
            // at the cap on trees it may admit.
            if batch.len() < r && after.waiting > 0 {
                let capped = floor_trees.is_some_and(|cap| after.admitted_trees as u64 >= cap);
                prop_assert!(after.runnable >= floor || capped,
                    "{} runnable jobs under the floor {} with {} trees admitted", after.runnable, floor, after.admitted_trees);
            }
            in_flight.extend(&batch);
            let k = (in_flight.len() as f64 * done) as usize;
            let finished: Vec<u64> = in_flight.drain(..k).collect();
            s.complete_many(&finished).unwrap();
            for id in finished {
                let left = jobs_left.get_mut(&tree_of[&id]).unwrap();
                *left -= 1;
                if *left == 0 && finish {
                    let released = s.stats().admitted_tokens;
                    s.finish_tree(tree_of[&id]).unwrap();
                    prop_assert!(s.stats().admitted_tokens < released || released == 0);
                }
            }
            s.check_invariants();
        }
    }
}
