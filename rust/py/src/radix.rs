//! Python class `RadixCache`: converts arguments and results around
//! `turnloom_core::RadixCache`, which holds all the logic.

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use turnloom_core::radix::RadixCache;
use turnloom_core::CoreError;

use crate::to_py_err;

fn invalid(message: String) -> PyErr {
    to_py_err(CoreError::InvalidArgument(message))
}

/// A sequence of token ids; negative or too large ids are invalid arguments.
fn tokens(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    obj.extract::<Vec<u32>>().map_err(|e| overflow_to_invalid(obj.py(), e))
}

fn overflow_to_invalid(py: Python<'_>, e: PyErr) -> PyErr {
    if e.is_instance_of::<PyOverflowError>(py) {
        invalid(format!("token ids must be in 0..2**32: {e}"))
    } else {
        e
    }
}

fn count(value: i64, name: &str) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| invalid(format!("{name} must not be negative, got {value}")))
}

/// Model of a backend's radix prefix cache: token radix tree, capacity, LRU
/// leaf eviction.
///
/// Mirrors SGLang's RadixAttention cache: a finished request's prompt +
/// output is inserted, a new prompt reuses its longest cached prefix, whole
/// unpinned leaves are evicted least recently used first, and requests in
/// flight pin their prefix (lock_ref). Time is a logical clock (one tick per
/// call), so results are deterministic.
#[pyclass(module = "turnloom._core", name = "RadixCache")]
pub(crate) struct PyRadixCache {
    inner: RadixCache,
}

#[pymethods]
impl PyRadixCache {
    /// An empty cache holding at most `capacity` tokens (at least 1).
    #[new]
    fn new(capacity: i64) -> PyResult<Self> {
        if capacity <= 0 {
            return Err(invalid(format!("capacity must be at least 1, got {capacity}")));
        }
        let capacity = count(capacity, "capacity")?;
        Ok(PyRadixCache { inner: RadixCache::new(capacity).map_err(to_py_err)? })
    }

    fn __repr__(&self) -> String {
        format!(
            "RadixCache(capacity={}, size={}, pinned={})",
            self.inner.capacity(),
            self.inner.size(),
            self.inner.pinned()
        )
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// Tokens cached now (never above capacity).
    #[getter]
    fn size(&self) -> usize {
        self.inner.size()
    }

    /// Tokens on pinned paths (not evictable).
    #[getter]
    fn pinned(&self) -> usize {
        self.inner.pinned()
    }

    /// Length of the longest cached prefix of `tokens`; refreshes its LRU time.
    fn match_len(&mut self, tokens: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.inner.match_len(&self::tokens(tokens)?))
    }

    /// `match_len` of each prompt, in order, in one call.
    fn match_many(&mut self, prompts: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
        let prompts = sequences(prompts)?;
        Ok(prompts.iter().map(|p| self.inner.match_len(p)).collect())
    }

    /// Cache `tokens` (prompt + output of a finished request), evicting LRU
    /// leaves as needed; returns how many new tokens were cached (a suffix
    /// that does not fit because the rest is pinned is left out).
    fn insert(&mut self, tokens: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.inner.insert(&self::tokens(tokens)?))
    }

    /// `insert` of each sequence, in order, in one call.
    fn insert_many(&mut self, sequences: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
        let sequences = self::sequences(sequences)?;
        Ok(sequences.iter().map(|s| self.inner.insert(s)).collect())
    }

    /// Pin the cached prefix of `tokens` (a request in flight) so it is never
    /// evicted; returns its length (0 when nothing of it is cached).
    fn pin(&mut self, tokens: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.inner.pin(&self::tokens(tokens)?))
    }

    /// Undo the most recent pin of exactly this sequence; returns the length
    /// that pin covered. InvalidArgumentError if the sequence is not pinned.
    fn unpin(&mut self, tokens: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.inner.unpin(&self::tokens(tokens)?).map_err(to_py_err)
    }

    /// Evict at least `tokens` unpinned tokens (whole leaves, LRU first), or
    /// everything evictable; returns how many were evicted.
    fn evict(&mut self, tokens: i64) -> PyResult<usize> {
        Ok(self.inner.evict(count(tokens, "tokens")?))
    }

    /// Drop every unpinned token (SGLang's /flush_cache).
    fn clear(&mut self) {
        self.inner.clear();
    }

    /// size, capacity, pinned, nodes, queries, query_tokens, hit_tokens,
    /// inserted, evicted.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        dict.set_item("size", s.size)?;
        dict.set_item("capacity", s.capacity)?;
        dict.set_item("pinned", s.pinned)?;
        dict.set_item("nodes", s.nodes)?;
        dict.set_item("queries", s.queries)?;
        dict.set_item("query_tokens", s.query_tokens)?;
        dict.set_item("hit_tokens", s.hit_tokens)?;
        dict.set_item("inserted", s.inserted)?;
        dict.set_item("evicted", s.evicted)?;
        Ok(dict)
    }
}

/// A sequence of token sequences, all converted before any is used.
fn sequences(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
    obj.extract::<Vec<Vec<u32>>>().map_err(|e| overflow_to_invalid(obj.py(), e))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRadixCache>()
}
