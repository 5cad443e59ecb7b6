//! The jobs that may run now (their tree is admitted), indexed twice: by the
//! cache-aware order, and by push order for the starvation bound.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Cache-aware order: higher priority, then longer cached prefix, then the
/// tree admitted earlier (finish conversations before starting new ones),
/// then push order. The job id rides along as payload.
type OrderKey = (Reverse<i64>, Reverse<u64>, u64, u64, u64);

/// What the ready set needs to know about a job to index it.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadyJob {
    pub id: u64,
    pub priority: i64,
    pub cached_len: u64,
    pub admit_order: u64,
    pub seq: u64,
}

impl ReadyJob {
    fn key(&self) -> OrderKey {
        (Reverse(self.priority), Reverse(self.cached_len), self.admit_order, self.seq, self.id)
    }
}

#[derive(Default)]
pub(super) struct ReadySet {
    order: BTreeSet<OrderKey>,
    by_seq: BTreeMap<u64, u64>,
}

impl ReadySet {
    pub fn insert(&mut self, job: ReadyJob) {
        self.order.insert(job.key());
        self.by_seq.insert(job.seq, job.id);
    }

    pub fn remove(&mut self, job: ReadyJob) {
        let had = self.order.remove(&job.key());
        debug_assert!(had, "job {} was not ready", job.id);
        self.by_seq.remove(&job.seq);
    }

    /// The first job in cache-aware order.
    pub fn best(&self) -> Option<u64> {
        self.order.first().map(|k| k.4)
    }

    /// The earliest pushed job: (seq, id).
    pub fn oldest(&self) -> Option<(u64, u64)> {
        self.by_seq.first_key_value().map(|(&s, &id)| (s, id))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        debug_assert_eq!(self.order.len(), self.by_seq.len());
        self.order.len()
    }
}
