//! Thin PyO3 glue over turnloom-core: the `turnloom._core` module.
//! Logic lives in the core crate; this crate converts types and errors only.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyError, PyValueError};
use pyo3::prelude::*;
use turnloom_core::CoreError;

mod forest;
mod radix;
mod scheduler;

create_exception!(turnloom._core, TurnloomError, PyException, "Base class of every error raised by the native core.");
create_exception!(turnloom._core, CapacityError, TurnloomError, "A size or budget limit would be exceeded.");

// Exceptions with two bases (a turnloom one and a builtin) are made in Python
// by `make_subclass`, so `except KeyError` keeps working for callers.
pub(crate) struct Errors {
    unknown_node: Py<PyAny>,
    stale_node: Py<PyAny>,
    job: Py<PyAny>,
    invalid_argument: Py<PyAny>,
}

static ERRORS: pyo3::sync::PyOnceLock<Errors> = pyo3::sync::PyOnceLock::new();

pub(crate) fn to_py_err(err: CoreError) -> PyErr {
    Python::attach(|py| {
        let errors = ERRORS.get(py).expect("turnloom._core errors are initialised at import");
        let message = err.to_string();
        let class = match err {
            CoreError::UnknownNode(_) => &errors.unknown_node,
            CoreError::StaleNode(_) => &errors.stale_node,
            CoreError::Job(_) => &errors.job,
            CoreError::InvalidArgument(_) => &errors.invalid_argument,
            CoreError::Capacity(_) => return CapacityError::new_err(message),
        };
        match class.bind(py).call1((message.clone(),)) {
            Ok(instance) => PyErr::from_value(instance),
            Err(e) => e,
        }
    })
}

fn make_subclass(
    py: Python<'_>,
    name: &str,
    doc: &str,
    builtin: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let base = py.get_type::<TurnloomError>();
    let namespace = pyo3::types::PyDict::new(py);
    namespace.set_item("__doc__", doc)?;
    namespace.set_item("__module__", "turnloom._core")?;
    // KeyError's str() quotes its argument; a plain message reads better.
    let str_fn = py.eval(c"lambda self: str(self.args[0]) if self.args else ''", None, None)?;
    namespace.set_item("__str__", str_fn)?;
    let bases = pyo3::types::PyTuple::new(py, [base.as_any(), builtin])?;
    let class = py
        .get_type::<pyo3::types::PyType>()
        .call1((name, bases, namespace))?;
    Ok(class.unbind())
}

/// `turnloom.seeds.turn_seed` for every (seeds[i], branches[i], turns[i]), in one
/// call: the engine needs one seed per scheduled turn.
#[pyfunction]
fn turn_seeds(seeds: Vec<u64>, branches: Vec<u64>, turns: Vec<u64>) -> PyResult<Vec<u64>> {
    if branches.len() != seeds.len() || turns.len() != seeds.len() {
        return Err(to_py_err(CoreError::InvalidArgument(format!(
            "{} seeds, {} branches and {} turns",
            seeds.len(),
            branches.len(),
            turns.len()
        ))));
    }
    Ok(seeds
        .iter()
        .zip(&branches)
        .zip(&turns)
        .map(|((&s, &b), &t)| turnloom_core::seeds::turn_seed(s, b, t))
        .collect())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TurnloomError", py.get_type::<TurnloomError>())?;
    m.add("CapacityError", py.get_type::<CapacityError>())?;
    let key_error = py.get_type::<PyKeyError>();
    let value_error = py.get_type::<PyValueError>();
    let errors = Errors {
        unknown_node: make_subclass(py, "UnknownNodeError", "The id never named a node of this forest.", key_error.as_any())?,
        stale_node: make_subclass(py, "StaleNodeError", "The id named a node that has been freed.", key_error.as_any())?,
        job: make_subclass(py, "JobError", "A job id is unknown, or pushed twice.", key_error.as_any())?,
        invalid_argument: make_subclass(py, "InvalidArgumentError", "An argument is out of range or inconsistent with the others.", value_error.as_any())?,
    };
    m.add("UnknownNodeError", errors.unknown_node.clone_ref(py))?;
    m.add("StaleNodeError", errors.stale_node.clone_ref(py))?;
    m.add("JobError", errors.job.clone_ref(py))?;
    m.add("InvalidArgumentError", errors.invalid_argument.clone_ref(py))?;
    let _ = ERRORS.set(py, errors);
    forest::register(m)?;
    radix::register(m)?;
    scheduler::register(m)?;
    m.add_function(wrap_pyfunction!(turn_seeds, m)?)?;
    Ok(())
}
