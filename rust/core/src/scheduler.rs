//! Cache-aware scheduler of ready generation jobs.
//!
//! A job is one generation request; its *tree* is its conversation root, the
//! unit of cache affinity and of admission control. Job ids are chosen by the
//! caller and must be unique among jobs waiting or in flight.
//!
//! # Order
//! Each slot of a batch is filled by the first rule that yields a job:
//! 1. **Starvation.** The earliest pushed waiting job, if it has waited
//!    `starvation_limit` pops or more. If its tree is not admitted yet (it is
//!    then the first tree in admission order), the tree is admitted now when
//!    admission allows (see *Admission accounting*); otherwise no tree is
//!    admitted for the rest of the pop and only starving jobs of admitted
//!    trees are taken (starvation never forces an admission).
//! 2. **Cache reuse.** A waiting job of an admitted tree: higher priority
//!    first, then longer cached prefix, then the tree admitted earlier (so
//!    conversations run to completion, depth-first-ish, before new ones start
//!    and evict their prefixes), then push order.
//! 3. **Admission.** When no job of an admitted tree waits, the tree whose
//!    first job was pushed earliest is admitted (if admission allows) and its
//!    jobs join rule 2.
//!
//! A batch ends at `max_requests` jobs, or before the first job that would
//! take its prompt tokens over `max_tokens` (jobs are never skipped to fill
//! the batch, so the order above is exact; a first job larger than
//! `max_tokens` is returned alone).
//!
//! # Starvation guarantee
//! The *wait* of a job is the number of pops that ended while it was waiting
//! (counted from its push). Every pop first takes the jobs whose wait is at
//! least `starvation_limit`, oldest push first, before any other job,
//! skipping only jobs of trees admission holds back. A pop always
//! takes at least one job when one is ready (`max_requests` >= 1 and a first
//! job is taken whatever its size), so a job that reaches the limit while
//! `A` older jobs still wait is served within `A` more pops: its wait is at
//! most `starvation_limit + A` pops, unless admission holds back its tree.
//! In particular the oldest waiting job is served at the very pop where it
//! reaches the limit, so with no older backlog no job waits more than
//! `starvation_limit` pops. (No order can promise that bound for every job of
//! a burst larger than one batch.)
//!
//! # Admission accounting
//! The footprint of a tree is its largest prompt length pushed so far (the
//! context the cache holds for it) plus `output_reserve` for each of its jobs
//! waiting or in flight (waiting jobs of an admitted tree run next, so their
//! output is reserved up front), but at least its *reserve*: the
//! `tree_reserve` in force when the tree was admitted (0: none). A tree is
//! admitted small (a system prompt and a first message) and grows turn by
//! turn and branch by branch; reserving its expected final size up front
//! keeps the trees admitted in one burst from outgrowing the budget together.
//! `set_tree_reserve` applies to trees admitted from then on; admitted trees
//! keep the reserve they were admitted with. `admitted_tokens` is the sum of
//! the footprints of admitted trees.
//!
//! A tree is admitted if `admitted_tokens` plus its footprint (with the
//! current `tree_reserve`) fits `token_budget`; or if no tree is admitted (so
//! the scheduler always makes progress); or if fewer than `min_runnable` jobs
//! of admitted trees are waiting or in flight (the *floor*, 0 for none: the
//! budget never starves the backend of work) and fewer than `floor_trees`
//! trees are admitted (None: no such cap). A tree in its one-job trunk that
//! will branch into n jobs counts once toward the floor; capping the trees
//! the floor admits at the floor divided by a tree's mean number of jobs
//! keeps it from admitting a batch of trunks that then outgrow the cache by
//! the branching factor. Jobs of admitted trees are
//! never held back: once started, a conversation runs. So `admitted_tokens`
//! exceeds the budget only with a lone admitted tree, after admissions under
//! the floor, or after jobs pushed to admitted trees grow their footprint
//! past their reserve (a new turn adds its output reserve and may lengthen
//! the prompt); then no new tree is admitted, except under the floor, until
//! completions and `finish_tree` (which releases the whole footprint) bring
//! it back under.

mod ready;

#[cfg(test)]
mod model;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::error::{CoreError, CoreResult};
use crate::idhash::{IdMap, IdSet};
use ready::{ReadyJob, ReadySet};

/// Largest prompt length or output reserve accepted (keeps sums in u64).
pub const MAX_TOKENS: u64 = 1 << 32;

/// Counters reported by [`Scheduler::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub waiting: usize,
    pub in_flight: usize,
    pub admitted_trees: usize,
    pub admitted_tokens: u64,
    /// Jobs of admitted trees waiting or in flight (what the floor counts).
    pub runnable: usize,
    pub pops: u64,
    /// Largest wait (in pops) of any job popped so far.
    pub max_wait: u64,
    /// Largest wait of any job popped so far counted from when it could run:
    /// its push, or its tree's admission if that came later. The starvation
    /// bound applies to this wait; `max_wait` also counts admission holding a
    /// tree back.
    pub max_wait_admitted: u64,
}

struct Job {
    /// Serial of the tree incarnation the job belongs to.
    tree: u64,
    prompt_len: u64,
    priority: i64,
    cached_len: u64,
    seq: u64,
    /// Pops completed when the job was pushed.
    push_pop: u64,
    in_flight: bool,
}

/// One incarnation of a conversation tree: from its first push until
/// `finish_tree` (a later push of the same id starts a new incarnation).
struct Tree {
    /// Admission order, while admitted.
    admitted: Option<u64>,
    /// Set by `finish_tree` while jobs of the tree are still in flight.
    finished: bool,
    first_seq: u64,
    first_push_pop: u64,
    /// Waiting jobs while the tree is not admitted.
    pending_jobs: Vec<u64>,
    waiting: u64,
    in_flight: u64,
    max_prompt: u64,
    /// `tree_reserve` when the tree was admitted; 0 before.
    reserve: u64,
    /// Pops completed when the tree was admitted.
    admitted_pop: u64,
}

/// Ready jobs, popped in batches in cache-aware order (see the module docs).
pub struct Scheduler {
    token_budget: Option<u64>,
    starvation_limit: u64,
    output_reserve: u64,
    tree_reserve: u64,
    min_runnable: u64,
    floor_trees: Option<u64>,
    jobs: IdMap<Job>,
    trees: IdMap<Tree>,
    /// Tree id to the serial of its current incarnation.
    current: IdMap<u64>,
    /// Non-admitted trees by the seq of their first push (FIFO admission).
    pending: BTreeMap<u64, u64>,
    ready: ReadySet,
    next_seq: u64,
    next_serial: u64,
    next_admit: u64,
    pops: u64,
    in_flight: usize,
    admitted_trees: usize,
    admitted_tokens: u64,
    /// Jobs of admitted trees waiting or in flight.
    runnable: u64,
    max_wait: u64,
    max_wait_admitted: u64,
}

fn invalid(msg: String) -> CoreError {
    CoreError::InvalidArgument(msg)
}

impl Scheduler {
    /// `token_budget` caps the footprint of admitted trees (None: no cap);
    /// `output_reserve` is the footprint of one job of an admitted tree
    /// (waiting or in flight) on top of its largest prompt; `tree_reserve`
    /// is the least footprint of a tree admitted from now on (0: none);
    /// `min_runnable` is the floor on jobs of admitted trees below which
    /// trees are admitted past the budget (0: none).
    pub fn new(
        token_budget: Option<u64>,
        starvation_limit: u64,
        output_reserve: u64,
        tree_reserve: u64,
        min_runnable: u64,
    ) -> CoreResult<Self> {
        check_reserve("output_reserve", output_reserve)?;
        check_reserve("tree_reserve", tree_reserve)?;
        Ok(Scheduler {
            token_budget,
            starvation_limit,
            output_reserve,
            tree_reserve,
            min_runnable,
            floor_trees: None,
            jobs: IdMap::default(),
            trees: IdMap::default(),
            current: IdMap::default(),
            pending: BTreeMap::new(),
            ready: ReadySet::default(),
            next_seq: 0,
            next_serial: 0,
            next_admit: 0,
            pops: 0,
            in_flight: 0,
            admitted_trees: 0,
            admitted_tokens: 0,
            runnable: 0,
            max_wait: 0,
            max_wait_admitted: 0,
        })
    }

    /// The reserve of trees admitted from now on; admitted trees keep theirs.
    pub fn set_tree_reserve(&mut self, tokens: u64) -> CoreResult<()> {
        check_reserve("tree_reserve", tokens)?;
        self.tree_reserve = tokens;
        Ok(())
    }

    /// The most trees the floor admits past the budget (None: no cap).
    pub fn set_floor_trees(&mut self, trees: Option<u64>) {
        self.floor_trees = trees;
    }

    /// Jobs waiting (pushed, not popped).
    pub fn len(&self) -> usize {
        self.jobs.len() - self.in_flight
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            waiting: self.len(),
            in_flight: self.in_flight,
            admitted_trees: self.admitted_trees,
            admitted_tokens: self.admitted_tokens,
            runnable: self.runnable as usize,
            pops: self.pops,
            max_wait: self.max_wait,
            max_wait_admitted: self.max_wait_admitted,
        }
    }

    /// Queue jobs. `priorities` default to 0 and `cached_lens` to 0. All or
    /// nothing: on error no job is queued.
    pub fn push_many(
        &mut self,
        job_ids: &[u64],
        trees: &[u64],
        prompt_lens: &[u64],
        priorities: Option<&[i64]>,
        cached_lens: Option<&[u64]>,
    ) -> CoreResult<()> {
        let n = job_ids.len();
        let lens_ok = trees.len() == n
            && prompt_lens.len() == n
            && priorities.is_none_or(|p| p.len() == n)
            && cached_lens.is_none_or(|c| c.len() == n);
        if !lens_ok {
            return Err(invalid("push_many: all sequences must have the same length".into()));
        }
        let mut batch = IdSet::with_capacity_and_hasher(if n > 1 { n } else { 0 }, Default::default());
        for (i, &id) in job_ids.iter().enumerate() {
            if self.jobs.contains_key(&id) || (n > 1 && !batch.insert(id)) {
                return Err(CoreError::Job(format!("job {id} is already queued or in flight")));
            }
            let cached = cached_lens.map_or(0, |c| c[i]);
            check_lens(id, prompt_lens[i], cached)?;
        }
        for i in 0..n {
            self.push_one(
                job_ids[i],
                trees[i],
                prompt_lens[i],
                priorities.map_or(0, |p| p[i]),
                cached_lens.map_or(0, |c| c[i]),
            );
        }
        Ok(())
    }

    fn push_one(&mut self, id: u64, tree_id: u64, prompt_len: u64, priority: i64, cached_len: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let serial = match self.current.get(&tree_id) {
            Some(&s) => s,
            None => self.new_tree(tree_id, seq),
        };
        let tree = self.trees.get_mut(&serial).expect("current trees exist");
        let before = footprint(tree, self.output_reserve);
        tree.waiting += 1;
        tree.max_prompt = tree.max_prompt.max(prompt_len);
        if tree.admitted.is_some() {
            self.admitted_tokens += footprint(tree, self.output_reserve) - before;
            self.runnable += 1;
        }
        let admit_order = tree.admitted;
        if admit_order.is_none() {
            tree.pending_jobs.push(id);
        }
        let job = Job { tree: serial, prompt_len, priority, cached_len, seq, push_pop: self.pops, in_flight: false };
        if let Some(admit_order) = admit_order {
            self.ready.insert(ready_job(id, &job, admit_order));
        }
        self.jobs.insert(id, job);
    }

    fn new_tree(&mut self, id: u64, seq: u64) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.trees.insert(
            serial,
            Tree {
                admitted: None,
                finished: false,
                first_seq: seq,
                first_push_pop: self.pops,
                pending_jobs: Vec::new(),
                waiting: 0,
                in_flight: 0,
                max_prompt: 0,
                reserve: 0,
                admitted_pop: 0,
            },
        );
        self.current.insert(id, serial);
        self.pending.insert(seq, serial);
        serial
    }

    /// Set the cached prefix length of waiting jobs (re-ranks them).
    pub fn update_cached(&mut self, job_ids: &[u64], cached_lens: &[u64]) -> CoreResult<()> {
        if job_ids.len() != cached_lens.len() {
            return Err(invalid("update_cached: job_ids and cached_lens differ in length".into()));
        }
        for (&id, &cached) in job_ids.iter().zip(cached_lens) {
            match self.jobs.get(&id) {
                Some(job) if !job.in_flight => check_lens(id, job.prompt_len, cached)?,
                _ => return Err(CoreError::Job(format!("job {id} is not waiting"))),
            }
        }
        for (&id, &cached) in job_ids.iter().zip(cached_lens) {
            let admit_order = self.trees[&self.jobs[&id].tree].admitted;
            let job = self.jobs.get_mut(&id).expect("validated above");
            match admit_order {
                Some(order) => {
                    self.ready.remove(ready_job(id, job, order));
                    job.cached_len = cached;
                    self.ready.insert(ready_job(id, job, order));
                }
                None => job.cached_len = cached,
            }
        }
        Ok(())
    }

    /// Take the next batch: at most `max_requests` jobs and `max_tokens`
    /// prompt tokens (a first job larger than `max_tokens` comes alone).
    /// Empty only when no job waits, or when every waiting job belongs to a
    /// tree the budget cannot admit yet.
    pub fn pop_batch(&mut self, max_requests: usize, max_tokens: u64) -> CoreResult<Vec<u64>> {
        if max_requests == 0 || max_tokens == 0 {
            return Err(invalid("pop_batch: max_requests and max_tokens must be at least 1".into()));
        }
        let now = self.pops;
        let mut batch = Vec::new();
        let mut tokens = 0u64;
        let mut blocked = false;
        while batch.len() < max_requests {
            let Some(id) = self.next_job(now, &mut blocked) else { break };
            let len = self.jobs[&id].prompt_len;
            if !batch.is_empty() && tokens + len > max_tokens {
                break;
            }
            self.take(id, now);
            tokens += len;
            batch.push(id);
        }
        self.pops += 1;
        Ok(batch)
    }

    fn starving(&self, push_pop: u64, now: u64) -> bool {
        now - push_pop >= self.starvation_limit
    }

    /// The job the order rules pick next, admitting trees on the way;
    /// `blocked` records that admission refused the head pending tree (it
    /// stays refused for the rest of the pop: taking jobs changes neither
    /// the budget nor the runnable count).
    fn next_job(&mut self, now: u64, blocked: &mut bool) -> Option<u64> {
        loop {
            // Rule 1. Wait grows with age, so only the oldest waiting job can
            // be the oldest starving one; the oldest job of a non-admitted
            // tree is the first job of the head pending tree.
            let oldest_ready = self.ready.oldest();
            let head = if *blocked { None } else { self.pending.first_key_value().map(|(&s, &t)| (s, t)) };
            if let Some((seq, serial)) = head {
                let older = oldest_ready.is_none_or(|(r, _)| seq < r);
                if older && self.starving(self.trees[&serial].first_push_pop, now) {
                    *blocked = !self.try_admit(serial);
                    continue;
                }
            }
            if let Some((_, id)) = oldest_ready {
                if self.starving(self.jobs[&id].push_pop, now) {
                    return Some(id);
                }
            }
            // Rule 2.
            if let Some(id) = self.ready.best() {
                return Some(id);
            }
            // Rule 3.
            if *blocked {
                return None;
            }
            let (_, &serial) = self.pending.first_key_value()?;
            if !self.try_admit(serial) {
                *blocked = true;
                return None;
            }
        }
    }

    /// Admit the tree if its footprint with the current reserve fits the
    /// budget, or nothing is admitted, or runnable jobs are under the floor;
    /// its waiting jobs become ready.
    fn try_admit(&mut self, serial: u64) -> bool {
        let tree = self.trees.get_mut(&serial).expect("pending trees exist");
        // A pending tree has no reserve yet, so this is its footprint once admitted.
        let fp = footprint(tree, self.output_reserve).max(self.tree_reserve);
        let fits = self.token_budget.is_none_or(|b| self.admitted_tokens + fp <= b);
        let under_floor = self.runnable < self.min_runnable
            && self.floor_trees.is_none_or(|cap| (self.admitted_trees as u64) < cap);
        if !fits && !under_floor && self.admitted_trees > 0 {
            return false;
        }
        let order = self.next_admit;
        self.next_admit += 1;
        tree.admitted = Some(order);
        tree.reserve = self.tree_reserve;
        tree.admitted_pop = self.pops;
        self.pending.remove(&tree.first_seq);
        self.admitted_trees += 1;
        self.admitted_tokens += fp;
        self.runnable += tree.waiting + tree.in_flight;
        for id in std::mem::take(&mut tree.pending_jobs) {
            self.ready.insert(ready_job(id, &self.jobs[&id], order));
        }
        true
    }

    /// Move a ready job to in flight.
    fn take(&mut self, id: u64, now: u64) {
        let job = self.jobs.get_mut(&id).expect("ready jobs exist");
        let tree = self.trees.get_mut(&job.tree).expect("jobs have trees");
        let order = tree.admitted.expect("ready jobs belong to admitted trees");
        self.ready.remove(ready_job(id, job, order));
        job.in_flight = true;
        tree.waiting -= 1;
        tree.in_flight += 1;
        self.in_flight += 1;
        self.max_wait = self.max_wait.max(now - job.push_pop);
        let since = job.push_pop.max(tree.admitted_pop);
        self.max_wait_admitted = self.max_wait_admitted.max(now - since);
    }

    /// Mark popped jobs finished, releasing their output reserve. All or
    /// nothing: an id that is not in flight fails the whole call.
    pub fn complete_many(&mut self, job_ids: &[u64]) -> CoreResult<()> {
        let mut batch = IdSet::with_capacity_and_hasher(if job_ids.len() > 1 { job_ids.len() } else { 0 }, Default::default());
        for &id in job_ids {
            let in_flight = self.jobs.get(&id).is_some_and(|j| j.in_flight);
            if !in_flight || (job_ids.len() > 1 && !batch.insert(id)) {
                return Err(CoreError::Job(format!("job {id} is not in flight")));
            }
        }
        for id in job_ids {
            let job = self.jobs.remove(id).expect("validated above");
            let tree = self.trees.get_mut(&job.tree).expect("jobs have trees");
            let before = footprint(tree, self.output_reserve);
            tree.in_flight -= 1;
            if tree.admitted.is_some() {
                self.admitted_tokens -= before - footprint(tree, self.output_reserve);
                self.runnable -= 1;
            }
            self.in_flight -= 1;
            if tree.finished && tree.in_flight == 0 {
                self.trees.remove(&job.tree);
            }
        }
        Ok(())
    }

    /// The conversation is over: release its admission budget. A later push
    /// to the same tree id starts a new tree. Unknown trees are ignored;
    /// a tree with waiting jobs is an error (its jobs would be orphaned).
    pub fn finish_tree(&mut self, tree_id: u64) -> CoreResult<()> {
        let Some(&serial) = self.current.get(&tree_id) else { return Ok(()) };
        let tree = self.trees.get_mut(&serial).expect("current trees exist");
        if tree.waiting > 0 {
            return Err(invalid(format!("finish_tree: tree {tree_id} still has {} waiting jobs", tree.waiting)));
        }
        // Without waiting jobs a tree is never pending, so it is admitted.
        if tree.admitted.take().is_some() {
            self.admitted_tokens -= footprint(tree, self.output_reserve);
            self.admitted_trees -= 1;
            self.runnable -= tree.in_flight;
        }
        self.current.remove(&tree_id);
        if tree.in_flight == 0 {
            self.trees.remove(&serial);
        } else {
            tree.finished = true;
        }
        Ok(())
    }
}

/// Largest prompt plus the output reserve of every job waiting or in
/// flight, but at least the tree's reserve.
fn footprint(tree: &Tree, output_reserve: u64) -> u64 {
    (tree.max_prompt + output_reserve * (tree.waiting + tree.in_flight)).max(tree.reserve)
}

fn check_reserve(name: &str, tokens: u64) -> CoreResult<()> {
    if tokens > MAX_TOKENS {
        return Err(invalid(format!("{name} {tokens} is above {MAX_TOKENS}")));
    }
    Ok(())
}

fn ready_job(id: u64, job: &Job, admit_order: u64) -> ReadyJob {
    ReadyJob { id, priority: job.priority, cached_len: job.cached_len, admit_order, seq: job.seq }
}

fn check_lens(id: u64, prompt_len: u64, cached_len: u64) -> CoreResult<()> {
    if prompt_len > MAX_TOKENS {
        return Err(invalid(format!("job {id}: prompt_len {prompt_len} is above {MAX_TOKENS}")));
    }
    if cached_len > prompt_len {
        return Err(invalid(format!("job {id}: cached_len {cached_len} exceeds prompt_len {prompt_len}")));
    }
    Ok(())
}

/// Consistency checks used by the tests.
#[cfg(test)]
impl Scheduler {
    pub(crate) fn check_invariants(&self) {
        let mut admitted_tokens = 0;
        let mut admitted = 0;
        let mut ready = 0;
        let mut runnable = 0;
        for (&serial, t) in &self.trees {
            let waiting = self.jobs.values().filter(|j| j.tree == serial && !j.in_flight).count() as u64;
            let in_flight = self.jobs.values().filter(|j| j.tree == serial && j.in_flight).count() as u64;
            assert_eq!((t.waiting, t.in_flight), (waiting, in_flight), "tree {serial} counts");
            assert_eq!(t.finished, !self.current.values().any(|&s| s == serial));
            if t.admitted.is_some() {
                admitted += 1;
                admitted_tokens += footprint(t, self.output_reserve);
                ready += waiting;
                runnable += waiting + in_flight;
                assert!(t.pending_jobs.is_empty());
            } else if !t.finished {
                assert_eq!(self.pending.get(&t.first_seq), Some(&serial));
                assert_eq!(t.pending_jobs.len() as u64, waiting);
                assert_eq!((t.reserve, in_flight), (0, 0), "pending trees hold nothing");
            }
            assert!(t.finished || waiting + in_flight > 0 || t.admitted.is_some(), "idle tree not admitted");
        }
        assert_eq!(admitted, self.admitted_trees);
        assert_eq!(admitted_tokens, self.admitted_tokens);
        assert_eq!(runnable, self.runnable);
        assert_eq!(ready as usize, self.ready.len());
        assert_eq!(self.in_flight, self.jobs.values().filter(|j| j.in_flight).count());
    }
}
