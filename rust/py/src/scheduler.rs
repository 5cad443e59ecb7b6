//! Python class `Scheduler`: converts arguments and results around
//! `turnloom_core::Scheduler`, which holds all the logic (and documents the
//! order, the starvation guarantee and the admission accounting).

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use turnloom_core::scheduler::Scheduler;
use turnloom_core::CoreError;

use crate::to_py_err;

fn invalid(message: String) -> PyErr {
    to_py_err(CoreError::InvalidArgument(message))
}

/// A sequence of non-negative ints; a negative one is an invalid argument.
fn naturals(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<u64>> {
    obj.extract::<Vec<u64>>().map_err(|e| {
        if e.is_instance_of::<PyOverflowError>(obj.py()) {
            invalid(format!("{name} must be ints in 0..2**64: {e}"))
        } else {
            e
        }
    })
}

fn natural(value: i64, name: &str) -> PyResult<u64> {
    u64::try_from(value).map_err(|_| invalid(format!("{name} must not be negative, got {value}")))
}

/// Ready generation jobs, popped in batches in an order that maximises cache
/// reuse.
///
/// Order: (1) jobs that have waited `starvation_limit` pops or more, oldest
/// first; (2) jobs of admitted trees: higher priority, then longer cached
/// prefix, then earlier admitted tree, then push order; (3) when none is
/// left, the tree whose first job was pushed earliest is admitted if its
/// footprint fits the budget. A batch stops before the first job that would
/// pass `max_tokens` (jobs are not skipped).
///
/// Starvation guarantee: every pop serves the jobs that have waited
/// `starvation_limit` pops before any other, oldest first (skipping only
/// jobs of trees the budget cannot admit yet), and takes at least one job.
/// So a job that reaches the limit with A older jobs still waiting waits at
/// most `starvation_limit + A` pops; the oldest waiting job never waits more
/// than `starvation_limit` pops.
///
/// Admission: a tree's footprint is its largest prompt_len pushed so far
/// plus `output_reserve` for each of its jobs waiting or in flight, but at
/// least the `tree_reserve` in force when it was admitted (its expected
/// final size; `set_tree_reserve` applies to later admissions only);
/// `admitted_tokens` sums the footprints of admitted trees. A tree is
/// admitted when `admitted_tokens + footprint <= token_budget`, or when no
/// tree is admitted (progress), or when fewer than `min_runnable` jobs of
/// admitted trees wait or run and fewer than `floor_trees` trees are
/// admitted (the floor: the budget never starves the backend; None: no cap on
/// the trees it admits). Jobs of admitted trees are never held back, so new turns pushed
/// to admitted trees may take `admitted_tokens` over the budget, as may
/// admissions under the floor; no new tree is admitted, except under the
/// floor, until it is back under. `finish_tree` releases the whole footprint.
#[pyclass(module = "turnloom._core", name = "Scheduler")]
pub(crate) struct PyScheduler {
    inner: Scheduler,
}

#[pymethods]
impl PyScheduler {
    /// `token_budget` caps the tokens of admitted (active) conversation
    /// trees; None means unlimited. `tree_reserve` (tokens) is the least
    /// footprint of a tree admitted from now on, `min_runnable` (jobs) the
    /// floor on work of admitted trees; 0 turns either off. `floor_trees`
    /// caps the trees the floor admits (None: no cap). See the class
    /// docstring for the exact starvation guarantee and footprint accounting.
    #[new]
    #[pyo3(signature = (token_budget=None, starvation_limit=64, output_reserve=256, tree_reserve=0, min_runnable=0, floor_trees=None))]
    fn new(
        token_budget: Option<i64>,
        starvation_limit: i64,
        output_reserve: i64,
        tree_reserve: i64,
        min_runnable: i64,
        floor_trees: Option<i64>,
    ) -> PyResult<Self> {
        let token_budget = token_budget.map(|b| natural(b, "token_budget")).transpose()?;
        let inner = Scheduler::new(
            token_budget,
            natural(starvation_limit, "starvation_limit")?,
            natural(output_reserve, "output_reserve")?,
            natural(tree_reserve, "tree_reserve")?,
            natural(min_runnable, "min_runnable")?,
        )
        .map_err(to_py_err)?;
        let mut scheduler = PyScheduler { inner };
        scheduler.set_floor_trees(floor_trees)?;
        Ok(scheduler)
    }

    /// The reserve (expected size, in tokens) of trees admitted from now on;
    /// admitted trees keep the one they were admitted with.
    fn set_tree_reserve(&mut self, tokens: i64) -> PyResult<()> {
        self.inner
            .set_tree_reserve(natural(tokens, "tree_reserve")?)
            .map_err(to_py_err)
    }

    /// The most trees the floor admits past the budget (None: no cap).
    fn set_floor_trees(&mut self, trees: Option<i64>) -> PyResult<()> {
        let trees = trees.map(|t| natural(t, "floor_trees")).transpose()?;
        self.inner.set_floor_trees(trees);
        Ok(())
    }

    /// Jobs waiting.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        let s = self.inner.stats();
        format!(
            "Scheduler(waiting={}, in_flight={}, admitted_trees={}, admitted_tokens={}, runnable={})",
            s.waiting, s.in_flight, s.admitted_trees, s.admitted_tokens, s.runnable
        )
    }

    /// Queue jobs; a job's tree is its conversation root (the affinity and
    /// admission unit). All sequences have one entry per job; priorities
    /// default to 0 and cached_lens to 0 (cached_len <= prompt_len).
    /// JobError if an id is already waiting or in flight (or repeated);
    /// all-or-nothing.
    #[pyo3(signature = (job_ids, trees, prompt_lens, priorities=None, cached_lens=None))]
    fn push_many(
        &mut self,
        job_ids: &Bound<'_, PyAny>,
        trees: &Bound<'_, PyAny>,
        prompt_lens: &Bound<'_, PyAny>,
        priorities: Option<Vec<i64>>,
        cached_lens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let job_ids = naturals(job_ids, "job_ids")?;
        let trees = naturals(trees, "trees")?;
        let prompt_lens = naturals(prompt_lens, "prompt_lens")?;
        let cached_lens = cached_lens.map(|c| naturals(c, "cached_lens")).transpose()?;
        self.inner
            .push_many(&job_ids, &trees, &prompt_lens, priorities.as_deref(), cached_lens.as_deref())
            .map_err(to_py_err)
    }

    /// Set the cached prefix length of waiting jobs (re-ranks them).
    /// JobError for an id that is not waiting; all-or-nothing.
    fn update_cached(&mut self, job_ids: &Bound<'_, PyAny>, cached_lens: &Bound<'_, PyAny>) -> PyResult<()> {
        let job_ids = naturals(job_ids, "job_ids")?;
        let cached_lens = naturals(cached_lens, "cached_lens")?;
        self.inner.update_cached(&job_ids, &cached_lens).map_err(to_py_err)
    }

    /// Job ids to run now, at most `max_requests` and `max_tokens` prompt
    /// tokens (a single job larger than `max_tokens` is still returned
    /// alone). Both limits must be at least 1. Returns [] only when no job
    /// waits or the budget cannot admit any waiting job's tree yet.
    fn pop_batch(&mut self, max_requests: i64, max_tokens: i64) -> PyResult<Vec<u64>> {
        let max_requests = natural(max_requests, "max_requests")?;
        let max_tokens = natural(max_tokens, "max_tokens")?;
        self.inner
            .pop_batch(usize::try_from(max_requests).unwrap_or(usize::MAX), max_tokens)
            .map_err(to_py_err)
    }

    /// Mark popped jobs finished (releases their in-flight reserve).
    /// JobError for an id that is not in flight; all-or-nothing.
    fn complete_many(&mut self, job_ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let job_ids = naturals(job_ids, "job_ids")?;
        self.inner.complete_many(&job_ids).map_err(to_py_err)
    }

    /// The conversation tree is done: release its admission budget. Unknown
    /// trees (any int that names none, negative ones included) are ignored;
    /// InvalidArgumentError if jobs of it still wait.
    /// Jobs of it in flight may still be completed.
    fn finish_tree(&mut self, tree: &Bound<'_, PyAny>) -> PyResult<()> {
        match tree.extract::<u64>() {
            Ok(tree) => self.inner.finish_tree(tree).map_err(to_py_err),
            // An int outside the id range (e.g. -1) names no tree.
            Err(e) if e.is_instance_of::<PyOverflowError>(tree.py()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// waiting, in_flight, admitted_trees, admitted_tokens, runnable (jobs of
    /// admitted trees waiting or in flight), pops, max_wait (the longest
    /// wait, in pops, of any job popped so far), max_wait_admitted (the same
    /// wait counted from the job's tree's admission when that came later: the
    /// wait the starvation bound applies to).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        dict.set_item("waiting", s.waiting)?;
        dict.set_item("in_flight", s.in_flight)?;
        dict.set_item("admitted_trees", s.admitted_trees)?;
        dict.set_item("admitted_tokens", s.admitted_tokens)?;
        dict.set_item("runnable", s.runnable)?;
        dict.set_item("pops", s.pops)?;
        dict.set_item("max_wait", s.max_wait)?;
        dict.set_item("max_wait_admitted", s.max_wait_admitted)?;
        Ok(dict)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyScheduler>()
}
