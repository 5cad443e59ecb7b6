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
        self.list_of_parts(py, tokens, &[])
    }

    /// `head` then `tail` as one Python list of ints, made at its final size
    /// (a lane plus a generation prefix, without growing the list afterwards).
    pub(crate) fn list_of_parts<'py>(
        &mut self,
        py: Python<'py>,
        head: &[u32],
        tail: &[u32],
    ) -> PyResult<Bound<'py, PyList>> {
        let len = head.len() + tail.len();
        // SAFETY: PyList_New returns a new list with `len` NULL slots (or NULL
        // with an exception set), owned by `list` from here on. Each slot is
        // set once with a new strong reference, which PyList_SetItem steals
        // (limited API: no SET_ITEM macro). Only int creation runs in between,
        // which cannot reach the unfilled list.
        unsafe {
            let raw = ffi::PyList_New(len as ffi::Py_ssize_t);
            if raw.is_null() {
                return Err(PyErr::fetch(py));
            }
            let list = Bound::from_owned_ptr(py, raw);
            for (i, &t) in head.iter().chain(tail).enumerate() {
                let item = self.int_ptr(py, t);
                if ffi::PyList_SetItem(raw, i as ffi::Py_ssize_t, item) != 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            Ok(list.cast_into_unchecked())
        }
    }

    /// A new strong reference to the int `token`, shared below the limit.
    fn int_ptr(&mut self, py: Python<'_>, token: u32) -> *mut ffi::PyObject {
        if let Some(Some(shared)) = self.ints.get(token as usize) {
            let ptr = shared.as_ptr();
            // SAFETY: `shared` keeps the object alive; the new reference is the caller's.
            unsafe { ffi::Py_INCREF(ptr) };
            return ptr;
        }
        self.int(py, token).into_ptr()
    }
}
