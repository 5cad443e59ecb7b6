//! Read-only access to objects that export the buffer protocol (array.array,
//! numpy arrays, bytes, memoryview), so token batches cross the boundary
//! without one Python int per token.
//!
//! pyo3's `PyBuffer` needs the 3.11 stable ABI, while this module is built
//! for abi3-py310. `PyObject_GetBuffer`, `PyBuffer_Release` and the
//! `Py_buffer` layout have not changed since CPython 3.3 (3.11 merely listed
//! them in the stable ABI), so they are declared here.

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void, CStr};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;

#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

const PYBUF_FORMAT: c_int = 0x0004;
const PYBUF_ND: c_int = 0x0008;
const PYBUF_STRIDES: c_int = 0x0010 | PYBUF_ND;
const PYBUF_C_CONTIGUOUS: c_int = 0x0020 | PYBUF_STRIDES;

/// A C-contiguous buffer held for reading; released on drop.
pub(crate) struct Buffer {
    // Boxed: exporters may point fields of the struct at the struct itself.
    raw: Box<RawBuffer>,
}

impl Buffer {
    /// The buffer of `obj`, which must be C-contiguous (any number of dimensions).
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Buffer> {
        let mut raw = Box::new(RawBuffer {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        });
        // SAFETY: `obj` is a live object and `raw` a writable Py_buffer; the
        // call either fills it (released in Drop) or fails and sets an error.
        let rc = unsafe {
            PyObject_GetBuffer(obj.as_ptr(), &mut *raw, PYBUF_C_CONTIGUOUS | PYBUF_FORMAT)
        };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(Buffer { raw })
    }

    /// struct-module format of one item ("B" when the exporter gives none).
    pub(crate) fn format(&self) -> &str {
        if self.raw.format.is_null() {
            return "B";
        }
        // SAFETY: a non-null format is a NUL-terminated string that lives as
        // long as the buffer is held.
        unsafe { CStr::from_ptr(self.raw.format) }
            .to_str()
            .unwrap_or("?")
    }

    pub(crate) fn item_size(&self) -> usize {
        self.raw.itemsize as usize
    }

    /// The whole buffer as bytes.
    fn bytes(&self) -> &[u8] {
        if self.raw.len == 0 {
            return &[];
        }
        // SAFETY: a held C-contiguous buffer is `len` readable bytes at `buf`.
        // Callers hold the GIL and run no Python code while they read, so
        // nothing can write to it meanwhile.
        unsafe { std::slice::from_raw_parts(self.raw.buf as *const u8, self.raw.len as usize) }
    }

    /// Code and item size of a native-order integer format ("I", "=Q", "<i"
    /// on little-endian machines, …); None for any other format.
    fn int_format(&self) -> Option<(char, usize)> {
        let format = self.format();
        let (native, code) = match format.chars().next() {
            Some('@' | '=') => (true, &format[1..]),
            Some('<') => (cfg!(target_endian = "little"), &format[1..]),
            Some('>' | '!') => (cfg!(target_endian = "big"), &format[1..]),
            _ => (true, format),
        };
        let mut chars = code.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if native && "bBhHiIlLqQnN".contains(c) => Some((c, self.item_size())),
            _ => None,
        }
    }

    /// The items as u32 token ids: a buffer of 4-byte unsigned ints, or raw
    /// bytes read as little-endian u32 (their length a multiple of 4).
    /// Borrowed when aligned, copied otherwise.
    pub(crate) fn tokens(&self) -> PyResult<Cow<'_, [u32]>> {
        let bytes = self.bytes();
        match self.int_format() {
            Some(('I' | 'L', 4)) => Ok(native_u32s(bytes)),
            Some(('B' | 'b', 1)) => le_u32s(bytes),
            _ if self.format() == "c" => le_u32s(bytes),
            _ => Err(PyTypeError::new_err(format!(
                "tokens must be a buffer of uint32 items (format 'I') or raw bytes, \
                 got format {:?} with {}-byte items",
                self.format(),
                self.item_size()
            ))),
        }
    }

    /// The items as u64: a buffer of native-order 4- or 8-byte integers;
    /// negative values are an error.
    pub(crate) fn naturals(&self, name: &str) -> PyResult<Vec<u64>> {
        let bytes = self.bytes();
        let negative = |v: i64| super::invalid(format!("{name} must not be negative, got {v}"));
        match self.int_format() {
            Some(('i' | 'l', 4)) => chunks::<4>(bytes)
                .map(|b| {
                    u64::try_from(i32::from_ne_bytes(b))
                        .map_err(|_| negative(i32::from_ne_bytes(b).into()))
                })
                .collect(),
            Some(('I' | 'L', 4)) => Ok(chunks::<4>(bytes)
                .map(|b| u32::from_ne_bytes(b).into())
                .collect()),
            Some(('l' | 'q' | 'n', 8)) => chunks::<8>(bytes)
                .map(|b| {
                    u64::try_from(i64::from_ne_bytes(b))
                        .map_err(|_| negative(i64::from_ne_bytes(b)))
                })
                .collect(),
            Some(('L' | 'Q' | 'N', 8)) => Ok(chunks::<8>(bytes).map(u64::from_ne_bytes).collect()),
            _ => Err(PyTypeError::new_err(format!(
                "{name} must be ints or a buffer of 4- or 8-byte integers, got format {:?}",
                self.format()
            ))),
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `raw` was filled by a successful PyObject_GetBuffer and is
        // released once; releasing needs the GIL, which attach guarantees.
        Python::attach(|_| unsafe { PyBuffer_Release(&mut *self.raw) });
    }
}

fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|c| c.try_into().expect("chunks are N bytes"))
}

/// Raw bytes as little-endian u32s.
fn le_u32s(bytes: &[u8]) -> PyResult<Cow<'_, [u32]>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(super::invalid(format!(
            "{} bytes of tokens is not a whole number of 4-byte tokens",
            bytes.len()
        )));
    }
    if cfg!(target_endian = "little") {
        Ok(native_u32s(bytes))
    } else {
        Ok(Cow::Owned(
            chunks::<4>(bytes).map(u32::from_le_bytes).collect(),
        ))
    }
}

/// Native-order u32s: the bytes themselves when 4-aligned, else a copy.
fn native_u32s(bytes: &[u8]) -> Cow<'_, [u32]> {
    // SAFETY: every bit pattern is a valid u32; align_to only yields a
    // non-empty middle part that is correctly aligned.
    let (head, items, tail) = unsafe { bytes.align_to::<u32>() };
    if head.is_empty() && tail.is_empty() {
        Cow::Borrowed(items)
    } else {
        Cow::Owned(chunks::<4>(bytes).map(u32::from_ne_bytes).collect())
    }
}

/// `obj` as u64 values: a buffer of 4- or 8-byte integers, else a sequence of ints.
pub(crate) fn naturals(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<u64>> {
    if let Ok(buffer) = Buffer::get(obj) {
        return buffer.naturals(name);
    }
    obj.extract::<Vec<u64>>().map_err(|e| {
        if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(obj.py()) {
            super::invalid(format!("{name} must be ints in 0..2**64: {e}"))
        } else {
            e
        }
    })
}
