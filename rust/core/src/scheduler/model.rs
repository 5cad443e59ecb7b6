//! Naive reference scheduler for differential tests: the module-level rules
//! written as full scans over every job, with no indexes or counters.

use crate::error::{CoreError, CoreResult};

struct MJob {
    id: u64,
    tree: usize,
    prompt_len: u64,
    priority: i64,
    cached_len: u64,
    seq: u64,
    push_pop: u64,
    in_flight: bool,
}

struct MTree {
    id: u64,
    admitted: Option<u64>,
    finished: bool,
    max_prompt: u64,
    /// The tree reserve in force at admission.
    reserve: u64,
    /// Pops completed at admission.
    admitted_pop: u64,
}

pub(super) struct Model {
    budget: Option<u64>,
    limit: u64,
    reserve: u64,
    tree_reserve: u64,
    min_runnable: u64,
    floor_trees: Option<u64>,
    jobs: Vec<MJob>,
    trees: Vec<MTree>,
    seq: u64,
    admits: u64,
    pub pops: u64,
    pub max_wait: u64,
    pub max_wait_admitted: u64,
}

impl Model {
    pub fn new(budget: Option<u64>, limit: u64, reserve: u64, tree_reserve: u64, min_runnable: u64) -> Self {
        Model {
            budget,
            limit,
            reserve,
            tree_reserve,
            min_runnable,
            floor_trees: None,
            jobs: vec![],
            trees: vec![],
            seq: 0,
            admits: 0,
            pops: 0,
            max_wait: 0,
            max_wait_admitted: 0,
        }
    }

    pub fn set_tree_reserve(&mut self, tokens: u64) {
        self.tree_reserve = tokens;
    }

    pub fn set_floor_trees(&mut self, trees: Option<u64>) {
        self.floor_trees = trees;
    }

    fn count(&self, tree: usize, in_flight: bool) -> u64 {
        self.jobs.iter().filter(|j| j.tree == tree && j.in_flight == in_flight).count() as u64
    }

    pub fn admitted_tokens(&self) -> u64 {
        (0..self.trees.len())
            .filter(|&t| self.trees[t].admitted.is_some())
            .map(|t| self.footprint(t))
            .sum()
    }

    /// With `reserve`, the tree's reserve (its own once admitted).
    fn footprint_with(&self, tree: usize, reserve: u64) -> u64 {
        let jobs = self.count(tree, false) + self.count(tree, true);
        (self.trees[tree].max_prompt + self.reserve * jobs).max(reserve)
    }

    fn footprint(&self, tree: usize) -> u64 {
        self.footprint_with(tree, self.trees[tree].reserve)
    }

    /// Jobs of admitted trees, waiting or in flight.
    pub fn runnable(&self) -> usize {
        self.jobs.iter().filter(|j| self.trees[j.tree].admitted.is_some()).count()
    }

    pub fn admitted_trees(&self) -> usize {
        self.trees.iter().filter(|t| t.admitted.is_some()).count()
    }

    pub fn waiting(&self) -> usize {
        self.jobs.iter().filter(|j| !j.in_flight).count()
    }

    pub fn push(&mut self, jobs: &[(u64, u64, u64, i64, u64)]) -> CoreResult<()> {
        for (k, &(id, _, prompt, _, cached)) in jobs.iter().enumerate() {
            if self.jobs.iter().any(|j| j.id == id) || jobs[..k].iter().any(|j| j.0 == id) {
                return Err(CoreError::Job(String::new()));
            }
            if cached > prompt {
                return Err(CoreError::InvalidArgument(String::new()));
            }
        }
        for &(id, tree_id, prompt_len, priority, cached_len) in jobs {
            let tree = match self.trees.iter().position(|t| t.id == tree_id && !t.finished) {
                Some(t) => t,
                None => {
                    self.trees.push(MTree { id: tree_id, admitted: None, finished: false, max_prompt: 0, reserve: 0, admitted_pop: 0 });
                    self.trees.len() - 1
                }
            };
            self.trees[tree].max_prompt = self.trees[tree].max_prompt.max(prompt_len);
            let seq = self.seq;
            self.seq += 1;
            let push_pop = self.pops;
            self.jobs.push(MJob { id, tree, prompt_len, priority, cached_len, seq, push_pop, in_flight: false });
        }
        Ok(())
    }

    pub fn update(&mut self, id: u64, cached: u64) -> CoreResult<()> {
        match self.jobs.iter_mut().find(|j| j.id == id && !j.in_flight) {
            Some(j) if cached <= j.prompt_len => {
                j.cached_len = cached;
                Ok(())
            }
            Some(_) => Err(CoreError::InvalidArgument(String::new())),
            None => Err(CoreError::Job(String::new())),
        }
    }

    fn try_admit(&mut self, tree: usize) -> bool {
        let fp = self.footprint_with(tree, self.tree_reserve);
        let fits = self.budget.is_none_or(|b| self.admitted_tokens() + fp <= b);
        let under_floor = (self.runnable() as u64) < self.min_runnable
            && self.floor_trees.is_none_or(|cap| (self.admitted_trees() as u64) < cap);
        if fits || under_floor || self.admitted_trees() == 0 {
            self.trees[tree].admitted = Some(self.admits);
            self.trees[tree].reserve = self.tree_reserve;
            self.trees[tree].admitted_pop = self.pops;
            self.admits += 1;
            true
        } else {
            false
        }
    }

    /// Index of the next job, admitting trees on the way.
    fn pick(&mut self, now: u64, blocked: &mut bool) -> Option<usize> {
        loop {
            let starving = (0..self.jobs.len())
                .filter(|&i| !self.jobs[i].in_flight && now - self.jobs[i].push_pop >= self.limit)
                .filter(|&i| !*blocked || self.trees[self.jobs[i].tree].admitted.is_some())
                .min_by_key(|&i| self.jobs[i].seq);
            if let Some(i) = starving {
                let tree = self.jobs[i].tree;
                if self.trees[tree].admitted.is_some() {
                    return Some(i);
                }
                *blocked = !self.try_admit(tree);
                continue;
            }
            let best = (0..self.jobs.len())
                .filter(|&i| !self.jobs[i].in_flight)
                .filter_map(|i| self.trees[self.jobs[i].tree].admitted.map(|a| (i, a)))
                .min_by_key(|&(i, a)| {
                    let j = &self.jobs[i];
                    (-(j.priority as i128), std::cmp::Reverse(j.cached_len), a, j.seq)
                });
            if let Some((i, _)) = best {
                return Some(i);
            }
            if *blocked {
                return None;
            }
            let head = (0..self.jobs.len())
                .filter(|&i| !self.jobs[i].in_flight)
                .min_by_key(|&i| self.jobs[i].seq)?;
            let tree = self.jobs[head].tree;
            if !self.try_admit(tree) {
                *blocked = true;
                return None;
            }
        }
    }

    pub fn pop(&mut self, max_requests: usize, max_tokens: u64) -> Vec<u64> {
        let now = self.pops;
        let (mut out, mut tokens, mut blocked) = (Vec::new(), 0, false);
        while out.len() < max_requests {
            let Some(i) = self.pick(now, &mut blocked) else { break };
            if !out.is_empty() && tokens + self.jobs[i].prompt_len > max_tokens {
                break;
            }
            tokens += self.jobs[i].prompt_len;
            self.jobs[i].in_flight = true;
            out.push(self.jobs[i].id);
            let job = &self.jobs[i];
            self.max_wait = self.max_wait.max(now - job.push_pop);
            let since = job.push_pop.max(self.trees[job.tree].admitted_pop);
            self.max_wait_admitted = self.max_wait_admitted.max(now - since);
        }
        self.pops += 1;
        out
    }

    pub fn complete(&mut self, ids: &[u64]) -> CoreResult<()> {
        for (k, id) in ids.iter().enumerate() {
            if !self.jobs.iter().any(|j| j.id == *id && j.in_flight) || ids[..k].contains(id) {
                return Err(CoreError::Job(String::new()));
            }
        }
        self.jobs.retain(|j| !ids.contains(&j.id));
        Ok(())
    }

    pub fn finish(&mut self, tree_id: u64) -> CoreResult<()> {
        let Some(t) = self.trees.iter().position(|t| t.id == tree_id && !t.finished) else { return Ok(()) };
        if self.count(t, false) > 0 {
            return Err(CoreError::InvalidArgument(String::new()));
        }
        self.trees[t].finished = true;
        self.trees[t].admitted = None;
        Ok(())
    }
}
