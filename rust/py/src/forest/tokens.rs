//! Token lists across the Python boundary, the hot path of the forest: one
//! int object per token each way.

use pyo3::exceptions::PyOverflowError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyList};

/// Token ids below this get one shared int object each (vocabularies are
/// smaller), so building a lane increfs instead of allocating per token.
const SHARED_INT_LIMIT: u32 = 1 << 18;

/// `tokens` (any sequence of ints) as u32 values.
pub(crate) fn extract(tokens: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    match tokens.cast_exact::<PyList>() {
        Ok(list) => extract_list(list),
        Err(_) => tokens.extract(),
    }
}

fn extract_list(list: &Bound<'_, PyList>) -> PyResult<Vec<u32>> {
    let len = list.len();
    let mut out = Vec::with_capacity(len);
    for i in 0..len {
        // SAFETY: `list` is a live list. PyList_GetItem checks the index itself
        // (the list can shrink if a non-int item's conversion runs Python code)
        // and the borrowed item is used before anything else can run.
        let value = unsafe {
            let item = ffi::PyList_GetItem(list.as_ptr(), i as ffi::Py_ssize_t);
            if item.is_null() {
                return Err(PyErr::fetch(list.py()));
            }
            if ffi::PyLong_CheckExact(item) != 0 {
                let value = ffi::PyLong_AsUnsignedLong(item);
                if value == std::os::raw::c_ulong::MAX && !ffi::PyErr_Occurred().is_null() {
                    return Err(PyErr::fetch(list.py()));
                }
                u32::try_from(value).map_err(|_| {
                    PyOverflowError::new_err(format!("token {value} does not fit in u32"))
                })?
            } else {
                Bound::from_borrowed_ptr(list.py(), item).extract::<u32>()?
            }
        };
        out.push(value);
    }
    Ok(out)
}

/// Lazily built int objects for token ids, shared by every list made here.
#[derive(Default)]
pub(crate) struct SharedInts {
    ints: Vec<Option<Py<PyAny>>>,
}

impl SharedInts {
    fn int(&mut self, py: Python<'_>, token: u32) -> Py<PyAny> {
        if token >= SHARED_INT_LIMIT {
            return PyInt::new(py, token).into_any().unbind();
        }
        let i = token as usize;
        if i >= self.ints.len() {
            self.ints.resize_with(i + 1, || None);
        }
        self.ints[i]
            .get_or_insert_with(|| PyInt::new(py, token).into_any().unbind())
            .clone_ref(py)
    }

    /// `tokens` as a Python list of ints.
    pub(crate) fn list<'py>(
        &mut self,
        py: Python<'py>,
        tokens: &[u32],
    ) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, tokens.iter().map(|&t| self.int(py, t)))
    }
}
