use super::*;

fn sched(budget: Option<u64>, limit: u64, reserve: u64) -> Scheduler {
    Scheduler::new(budget, limit, reserve, 0, 0).unwrap()
}

fn push(s: &mut Scheduler, jobs: &[(u64, u64, u64)]) {
    let ids: Vec<u64> = jobs.iter().map(|j| j.0).collect();
    let trees: Vec<u64> = jobs.iter().map(|j| j.1).collect();
    let lens: Vec<u64> = jobs.iter().map(|j| j.2).collect();
    s.push_many(&ids, &trees, &lens, None, None).unwrap();
}

#[test]
fn fifo_without_hints() {
    let mut s = sched(None, 64, 0);
    push(&mut s, &[(1, 10, 5), (2, 10, 5), (3, 10, 5)]);
    assert_eq!(s.len(), 3);
    assert_eq!(s.pop_batch(2, 100).unwrap(), vec![1, 2]);
    assert_eq!(s.pop_batch(2, 100).unwrap(), vec![3]);
    assert_eq!(s.pop_batch(2, 100).unwrap(), Vec::<u64>::new());
    assert!(s.is_empty());
    s.check_invariants();
}

#[test]
fn priority_then_cached_then_admission_order() {
    let mut s = sched(None, 64, 0);
    // Tree 20 is admitted first (its job is pushed first).
    s.push_many(&[1], &[20], &[5], None, None).unwrap();
    s.push_many(&[2], &[30], &[5], None, None).unwrap();
    assert_eq!(s.pop_batch(2, 100).unwrap(), vec![1, 2]);
    s.push_many(&[3, 4, 5, 6], &[30, 20, 30, 20], &[9, 9, 9, 9], Some(&[0, 0, 0, 1]), Some(&[1, 1, 7, 0]))
        .unwrap();
    // 6: priority; 5: longest cached; then 4 (tree 20 admitted before 30), 3.
    assert_eq!(s.pop_batch(4, 1000).unwrap(), vec![6, 5, 4, 3]);
    s.check_invariants();
}

#[test]
fn update_cached_reranks() {
    let mut s = sched(None, 64, 0);
    push(&mut s, &[(1, 10, 50), (2, 10, 50)]);
    s.update_cached(&[2], &[40]).unwrap();
    assert_eq!(s.pop_batch(1, 100).unwrap(), vec![2]);
    assert!(matches!(s.update_cached(&[2], &[1]), Err(CoreError::Job(_))), "in flight");
    assert!(matches!(s.update_cached(&[9], &[1]), Err(CoreError::Job(_))), "unknown");
    assert!(matches!(s.update_cached(&[1], &[51]), Err(CoreError::InvalidArgument(_))));
    assert!(matches!(s.update_cached(&[1], &[]), Err(CoreError::InvalidArgument(_))));
    s.check_invariants();
}

#[test]
fn max_tokens_stops_the_batch_without_skipping() {
    let mut s = sched(None, 64, 0);
    push(&mut s, &[(1, 10, 60), (2, 10, 60), (3, 10, 10)]);
    assert_eq!(s.pop_batch(8, 100).unwrap(), vec![1]);
    assert_eq!(s.pop_batch(8, 100).unwrap(), vec![2, 3]);
    push(&mut s, &[(4, 10, 500), (5, 10, 1)]);
    assert_eq!(s.pop_batch(8, 100).unwrap(), vec![4], "oversized job comes alone");
    assert_eq!(s.pop_batch(8, 100).unwrap(), vec![5]);
}

#[test]
fn misuse_is_reported() {
    let mut s = sched(None, 64, 0);
    push(&mut s, &[(1, 10, 5)]);
    let dup = s.push_many(&[2, 1], &[10, 10], &[5, 5], None, None);
    assert!(matches!(dup, Err(CoreError::Job(_))));
    let dup_in_batch = s.push_many(&[3, 3], &[10, 10], &[5, 5], None, None);
    assert!(matches!(dup_in_batch, Err(CoreError::Job(_))));
    assert_eq!(s.len(), 1, "failed pushes queue nothing");
    let ragged = s.push_many(&[4], &[10, 11], &[5], None, None);
    assert!(matches!(ragged, Err(CoreError::InvalidArgument(_))));
    let ragged = s.push_many(&[4], &[10], &[5], Some(&[]), None);
    assert!(matches!(ragged, Err(CoreError::InvalidArgument(_))));
    assert!(matches!(s.complete_many(&[1]), Err(CoreError::Job(_))), "waiting, not in flight");
    assert!(matches!(s.complete_many(&[7]), Err(CoreError::Job(_))));
    assert!(matches!(s.pop_batch(0, 10), Err(CoreError::InvalidArgument(_))));
    assert!(matches!(s.pop_batch(1, 0), Err(CoreError::InvalidArgument(_))));
    assert_eq!(s.pop_batch(1, 10).unwrap(), vec![1]);
    let twice = s.complete_many(&[1, 1]);
    assert!(matches!(twice, Err(CoreError::Job(_))));
    s.complete_many(&[1]).unwrap();
    assert!(matches!(s.complete_many(&[1]), Err(CoreError::Job(_))));
    // A completed id can be reused.
    push(&mut s, &[(1, 10, 5)]);
    assert!(matches!(s.finish_tree(10), Err(CoreError::InvalidArgument(_))), "tree has a waiting job");
    s.finish_tree(999).unwrap();
    s.check_invariants();
}

#[test]
fn budget_gates_admission_fifo() {
    // Footprint: largest prompt + 10 per job waiting or in flight.
    let mut s = sched(Some(100), 64, 10);
    push(&mut s, &[(1, 1, 50), (2, 2, 30), (3, 3, 10)]);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![1, 2]);
    assert_eq!(s.stats().admitted_tokens, 100);
    assert_eq!(s.stats().admitted_trees, 2);
    // Tree 3 (20 tokens) waits for room even though it is small.
    assert_eq!(s.pop_batch(8, 1000).unwrap(), Vec::<u64>::new());
    s.complete_many(&[1]).unwrap();
    assert_eq!(s.stats().admitted_tokens, 90, "the reserve is released, the prompt is not");
    assert_eq!(s.pop_batch(8, 1000).unwrap(), Vec::<u64>::new());
    s.finish_tree(1).unwrap();
    assert_eq!(s.stats().admitted_tokens, 40);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![3]);
    assert_eq!(s.stats().admitted_tokens, 60);
    s.check_invariants();
}

#[test]
fn a_tree_too_big_for_the_budget_runs_alone() {
    let mut s = sched(Some(10), 64, 5);
    push(&mut s, &[(1, 1, 500), (2, 2, 1)]);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![1]);
    assert_eq!(s.stats().admitted_tokens, 505);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), Vec::<u64>::new());
    s.complete_many(&[1]).unwrap();
    s.finish_tree(1).unwrap();
    assert_eq!(s.stats().admitted_tokens, 0);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![2]);
}

#[test]
fn tree_reserve_holds_back_admissions_until_trees_finish() {
    // Each tree is admitted at 10 + 10 = 20 tokens but reserves 60.
    let mut s = Scheduler::new(Some(130), 64, 10, 60, 0).unwrap();
    push(&mut s, &[(1, 1, 10), (2, 2, 10), (3, 3, 10)]);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![1, 2], "a third reserve does not fit");
    assert_eq!(s.stats().admitted_tokens, 120);
    // Growing within its reserve changes nothing; past it, the footprint grows.
    s.complete_many(&[1]).unwrap();
    push(&mut s, &[(4, 1, 40)]);
    assert_eq!(s.stats().admitted_tokens, 120);
    push(&mut s, &[(5, 1, 45)]);
    assert_eq!(s.stats().admitted_tokens, 125, "45 + 2 x 10 = 65 > 60");
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![4, 5]);
    s.complete_many(&[2, 4, 5]).unwrap();
    assert_eq!(s.stats().admitted_tokens, 120, "back to the reserves");
    assert_eq!(s.pop_batch(8, 1000).unwrap(), Vec::<u64>::new());
    s.finish_tree(1).unwrap();
    assert_eq!(s.stats().admitted_tokens, 60);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![3]);
    assert_eq!(s.stats().admitted_tokens, 120);
    s.check_invariants();
}

#[test]
fn set_tree_reserve_applies_to_later_admissions_only() {
    let mut s = Scheduler::new(Some(100), 64, 0, 50, 0).unwrap();
    push(&mut s, &[(1, 1, 5)]);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![1]);
    assert_eq!(s.stats().admitted_tokens, 50);
    s.set_tree_reserve(20).unwrap();
    assert_eq!(s.stats().admitted_tokens, 50, "tree 1 keeps the reserve it was admitted with");
    push(&mut s, &[(2, 2, 5), (3, 3, 5), (4, 4, 5)]);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![2, 3], "50 + 2 x 20 fit, a third 20 does not");
    assert_eq!(s.stats().admitted_tokens, 90);
    s.complete_many(&[1]).unwrap();
    s.finish_tree(1).unwrap();
    assert_eq!(s.stats().admitted_tokens, 40, "finishing releases the old reserve");
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![4]);
    assert!(matches!(s.set_tree_reserve(MAX_TOKENS + 1), Err(CoreError::InvalidArgument(_))));
    assert!(Scheduler::new(None, 64, 0, MAX_TOKENS + 1, 0).is_err());
    s.check_invariants();
}

#[test]
fn min_runnable_admits_past_the_budget_only_when_work_is_short() {
    // Every tree's footprint (20) exceeds what is left of the budget after one.
    let mut s = Scheduler::new(Some(30), 64, 10, 0, 3).unwrap();
    push(&mut s, &[(1, 1, 10), (2, 2, 10), (3, 3, 10), (4, 4, 10), (5, 4, 10)]);
    // Under the floor of 3 runnable jobs, trees 2 and 3 are admitted anyway;
    // then 3 jobs run and tree 4 waits.
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![1, 2, 3]);
    assert_eq!(s.stats().admitted_tokens, 60);
    assert_eq!(s.stats().runnable, 3);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), Vec::<u64>::new());
    // One job done: 2 runnable, under the floor again.
    s.complete_many(&[1]).unwrap();
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![4, 5]);
    assert_eq!(s.stats().runnable, 4);
    s.check_invariants();
    // Without the floor the same budget admits one tree at a time.
    let mut s = sched(Some(30), 64, 10);
    push(&mut s, &[(1, 1, 10), (2, 2, 10)]);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![1]);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), Vec::<u64>::new());
}

#[test]
fn admitted_trees_go_first() {
    let mut s = sched(None, 64, 0);
    push(&mut s, &[(1, 1, 5), (2, 2, 5)]);
    assert_eq!(s.pop_batch(1, 100).unwrap(), vec![1]);
    s.complete_many(&[1]).unwrap();
    // Tree 1's next turn overtakes tree 2, which is not admitted yet.
    push(&mut s, &[(3, 1, 5)]);
    assert_eq!(s.pop_batch(1, 100).unwrap(), vec![3]);
    assert_eq!(s.pop_batch(1, 100).unwrap(), vec![2]);
}

#[test]
fn starving_job_goes_first() {
    let mut s = sched(None, 2, 0);
    // Job 100 (low priority) keeps losing to fresh high-priority jobs.
    s.push_many(&[100], &[1], &[5], Some(&[-1]), None).unwrap();
    let mut served_at = None;
    for pop in 0..6u64 {
        s.push_many(&[200 + pop], &[1], &[5], Some(&[5]), None).unwrap();
        let batch = s.pop_batch(1, 100).unwrap();
        if batch == vec![100] {
            served_at = Some(pop);
        }
    }
    assert_eq!(served_at, Some(2), "job 100 waited exactly starvation_limit pops");
    assert_eq!(s.stats().max_wait, 2);
}

#[test]
fn finish_with_jobs_in_flight_detaches_them() {
    let mut s = sched(Some(100), 64, 10);
    push(&mut s, &[(1, 1, 20)]);
    assert_eq!(s.pop_batch(8, 100).unwrap(), vec![1]);
    s.finish_tree(1).unwrap();
    assert_eq!(s.stats().admitted_tokens, 0);
    // A new conversation under the same id is a new tree.
    push(&mut s, &[(2, 1, 30)]);
    assert_eq!(s.pop_batch(8, 100).unwrap(), vec![2]);
    assert_eq!(s.stats().admitted_tokens, 40);
    s.complete_many(&[1]).unwrap();
    assert_eq!(s.stats().admitted_tokens, 40, "the old tree's job releases nothing twice");
    s.check_invariants();
}

#[test]
fn a_million_jobs() {
    let mut s = sched(Some(1 << 40), 64, 16);
    let n = 1_000_000u64;
    let ids: Vec<u64> = (0..n).collect();
    let trees: Vec<u64> = (0..n).map(|i| i % 10_007).collect();
    let lens: Vec<u64> = (0..n).map(|i| 100 + i % 900).collect();
    let cached: Vec<u64> = (0..n).map(|i| i % 100).collect();
    s.push_many(&ids, &trees, &lens, None, Some(&cached)).unwrap();
    let mut popped = 0;
    while !s.is_empty() {
        let batch = s.pop_batch(256, 1 << 20).unwrap();
        popped += batch.len();
        s.complete_many(&batch).unwrap();
    }
    assert_eq!(popped, n as usize);
}

#[test]
fn wait_for_admission_is_told_apart() {
    // Two trees of 30 tokens each (20 prompt + 10 reserved output) under a budget of 30.
    let mut s = sched(Some(30), 64, 10);
    push(&mut s, &[(1, 1, 20), (2, 2, 20)]);
    assert_eq!(s.pop_batch(4, 100).unwrap(), vec![1]); // tree 2 does not fit
    assert_eq!(s.pop_batch(4, 100).unwrap(), Vec::<u64>::new());
    s.complete_many(&[1]).unwrap();
    s.finish_tree(1).unwrap();
    assert_eq!(s.pop_batch(4, 100).unwrap(), vec![2]); // admitted at the third pop
    let st = s.stats();
    // Job 2 waited two pops, all of them for its tree's admission.
    assert_eq!((st.max_wait, st.max_wait_admitted), (2, 0));
    s.check_invariants();
}

#[test]
fn floor_trees_caps_what_the_floor_admits() {
    // As in the test above, but the floor may only bring the admitted trees to 2.
    let mut s = Scheduler::new(Some(30), 64, 10, 0, 3).unwrap();
    s.set_floor_trees(Some(2));
    push(&mut s, &[(1, 1, 10), (2, 2, 10), (3, 3, 10)]);
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![1, 2]);
    assert_eq!(s.stats().admitted_trees, 2);
    // Tree 1 ends: the floor admits tree 3 (one tree admitted, under the cap).
    s.complete_many(&[1]).unwrap();
    s.finish_tree(1).unwrap();
    assert_eq!(s.pop_batch(8, 1000).unwrap(), vec![3]);
    s.check_invariants();
}
