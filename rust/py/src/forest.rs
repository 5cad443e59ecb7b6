//! Python class `Forest`: converts arguments and results around
//! `turnloom_core::Forest`, which holds all the logic.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyDict, PyList, PyTuple};
use turnloom_core::forest::{narrow_u16, Forest, NewNode, NodeId, FINISH_REASONS, ROLES};
use turnloom_core::CoreError;

use crate::to_py_err;

mod tokens;

use tokens::SharedInts;

/// A node's arguments as taken from Python, owning what the core borrows.
struct NodeArgs {
    participant: u16,
    role: PyBackedStr,
    text: PyBackedStr,
    segments: Vec<(u16, Vec<u32>)>,
    finish: Option<PyBackedStr>,
    meta: Option<PyBackedStr>,
}

impl NodeArgs {
    fn new_node(&self) -> NewNode<'_> {
        NewNode {
            participant: self.participant,
            role: &self.role,
            text: &self.text,
            segments: self
                .segments
                .iter()
                .map(|(view, tokens)| (*view, tokens.as_slice()))
                .collect(),
            finish: self.finish.as_deref().unwrap_or(""),
            meta: self.meta.as_deref().unwrap_or(""),
        }
    }
}

fn view(value: i64) -> PyResult<u16> {
    narrow_u16(value, "view").map_err(to_py_err)
}

fn participant(value: i64) -> PyResult<u16> {
    narrow_u16(value, "participant").map_err(to_py_err)
}

/// `{view: tokens}` (or None) as (view, tokens) pairs.
fn segments(dict: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(u16, Vec<u32>)>> {
    let Some(dict) = dict else {
        return Ok(Vec::new());
    };
    dict.iter()
        .map(|(key, tokens)| Ok((view(key.extract()?)?, tokens::extract(&tokens)?)))
        .collect()
}

fn invalid(message: String) -> PyErr {
    to_py_err(CoreError::InvalidArgument(message))
}

/// Arena of conversation trees; every conversation is a root-to-leaf path.
///
/// Each node holds a participant, a role, a text, a finish reason, a metadata
/// string and one token segment per view. A node's lane for a view is the
/// concatenation of its path's segments for that view (the prompt that view
/// sees). Node ids carry a generation: once freed, an id raises
/// StaleNodeError forever, even after its slot is reused.
#[pyclass(module = "turnloom._core", name = "Forest")]
pub(crate) struct PyForest {
    inner: Forest,
    ints: SharedInts,
}

#[pymethods]
impl PyForest {
    #[new]
    fn new() -> Self {
        PyForest {
            inner: Forest::new(),
            ints: SharedInts::default(),
        }
    }

    /// Number of live nodes.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        let stats = self.inner.stats();
        format!(
            "Forest(live_nodes={}, roots={}, tokens={})",
            stats.live_nodes, stats.roots, stats.tokens
        )
    }

    /// Start a conversation tree; returns the root's id.
    #[pyo3(
        signature = (participant, role, text, segments=None, finish=None, meta=None),
        text_signature = "($self, participant, role, text, segments=None, finish='', meta='')"
    )]
    fn add_root(
        &mut self,
        participant: i64,
        role: PyBackedStr,
        text: PyBackedStr,
        segments: Option<&Bound<'_, PyDict>>,
        finish: Option<PyBackedStr>,
        meta: Option<PyBackedStr>,
    ) -> PyResult<NodeId> {
        let args = node_args(participant, role, text, segments, finish, meta)?;
        self.inner.add_root(&args.new_node()).map_err(to_py_err)
    }

    /// Add a child under `parent` (several children make a branch); returns its id.
    #[pyo3(
        signature = (parent, participant, role, text, segments=None, finish=None, meta=None),
        text_signature = "($self, parent, participant, role, text, segments=None, finish='', meta='')"
    )]
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        parent: NodeId,
        participant: i64,
        role: PyBackedStr,
        text: PyBackedStr,
        segments: Option<&Bound<'_, PyDict>>,
        finish: Option<PyBackedStr>,
        meta: Option<PyBackedStr>,
    ) -> PyResult<NodeId> {
        let args = node_args(participant, role, text, segments, finish, meta)?;
        self.inner
            .append(parent, &args.new_node())
            .map_err(to_py_err)
    }

    /// Append one node per entry in a single call; returns their ids.
    ///
    /// All-or-nothing: every argument is checked before the forest changes.
    #[pyo3(signature = (parents, participants, roles, texts, segments=None, finishes=None, metas=None))]
    #[allow(clippy::too_many_arguments)]
    fn append_many(
        &mut self,
        parents: Vec<NodeId>,
        participants: Vec<i64>,
        roles: Vec<PyBackedStr>,
        texts: Vec<PyBackedStr>,
        segments: Option<Vec<Option<Bound<'_, PyDict>>>>,
        finishes: Option<Vec<PyBackedStr>>,
        metas: Option<Vec<PyBackedStr>>,
    ) -> PyResult<Vec<NodeId>> {
        let n = parents.len();
        let lengths = [
            ("participants", Some(participants.len())),
            ("roles", Some(roles.len())),
            ("texts", Some(texts.len())),
            ("segments", segments.as_ref().map(Vec::len)),
            ("finishes", finishes.as_ref().map(Vec::len)),
            ("metas", metas.as_ref().map(Vec::len)),
        ];
        for (name, len) in lengths {
            if let Some(len) = len.filter(|&len| len != n) {
                return Err(invalid(format!("{len} {name} for {n} parents")));
            }
        }
        let mut segments = segments.map(Vec::into_iter);
        let mut finishes = finishes.map(Vec::into_iter);
        let mut metas = metas.map(Vec::into_iter);
        let mut args = Vec::with_capacity(n);
        for ((participant, role), text) in participants.into_iter().zip(roles).zip(texts) {
            let dict = segments.as_mut().and_then(Iterator::next).flatten();
            args.push(node_args(
                participant,
                role,
                text,
                dict.as_ref(),
                finishes.as_mut().and_then(Iterator::next),
                metas.as_mut().and_then(Iterator::next),
            )?);
        }
        let nodes: Vec<NewNode> = args.iter().map(NodeArgs::new_node).collect();
        self.inner.append_many(&parents, &nodes).map_err(to_py_err)
    }

    /// Set (or replace) the token segment `node` contributes to `view`'s lane.
    fn set_segment(&mut self, node: NodeId, view: i64, tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        let (view, tokens) = (self::view(view)?, tokens::extract(tokens)?);
        self.inner
            .set_segment(node, view, &tokens)
            .map_err(to_py_err)
    }

    /// Replace the node's metadata string (JSON text by convention).
    fn set_meta(&mut self, node: NodeId, meta: PyBackedStr) -> PyResult<()> {
        self.inner.set_meta(node, &meta).map_err(to_py_err)
    }

    /// Replace the node's finish reason (one of FINISH_REASONS).
    fn set_finish(&mut self, node: NodeId, finish: PyBackedStr) -> PyResult<()> {
        self.inner.set_finish(node, &finish).map_err(to_py_err)
    }

    /// Whether `node` names a live node (False for freed and unknown ids).
    fn is_live(&self, node: NodeId) -> bool {
        self.inner.is_live(node)
    }

    /// The parent's id, or None for a root.
    fn parent(&self, node: NodeId) -> PyResult<Option<NodeId>> {
        self.inner.parent(node).map_err(to_py_err)
    }

    /// Children's ids, oldest first.
    fn children(&self, node: NodeId) -> PyResult<Vec<NodeId>> {
        self.inner.children(node).map_err(to_py_err)
    }

    /// 0 for a root.
    fn depth(&self, node: NodeId) -> PyResult<u32> {
        self.inner.depth(node).map_err(to_py_err)
    }

    /// Id of the root of the node's tree.
    fn root(&self, node: NodeId) -> PyResult<NodeId> {
        self.inner.root(node).map_err(to_py_err)
    }

    /// Node ids from the root down to `node`, inclusive.
    fn path(&self, node: NodeId) -> PyResult<Vec<NodeId>> {
        self.inner.path(node).map_err(to_py_err)
    }

    /// participant, role, text, finish, meta, depth, parent, children.
    fn node<'py>(&self, py: Python<'py>, node: NodeId) -> PyResult<Bound<'py, PyDict>> {
        let view = self.inner.node(node).map_err(to_py_err)?;
        let dict = PyDict::new(py);
        dict.set_item("participant", view.participant)?;
        dict.set_item("role", view.role)?;
        dict.set_item("text", view.text)?;
        dict.set_item("finish", view.finish)?;
        dict.set_item("meta", view.meta)?;
        dict.set_item("depth", view.depth)?;
        dict.set_item("parent", view.parent)?;
        dict.set_item("children", view.children)?;
        Ok(dict)
    }

    /// (participant, role, text) of every node on the path, root first.
    fn messages(&self, node: NodeId) -> PyResult<Vec<(u16, &'static str, String)>> {
        let messages = self.inner.messages(node).map_err(to_py_err)?;
        Ok(messages
            .into_iter()
            .map(|(p, role, text)| (p, role, text.to_owned()))
            .collect())
    }

    /// The tokens `node` itself contributes to `view`, or None if it has no segment for it.
    fn segment<'py>(
        &mut self,
        py: Python<'py>,
        node: NodeId,
        view: i64,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let segment = self
            .inner
            .segment(node, self::view(view)?)
            .map_err(to_py_err)?;
        segment.map(|tokens| self.ints.list(py, tokens)).transpose()
    }

    /// Concatenation of the path's segments for `view`; nodes without one add nothing.
    fn lane<'py>(
        &mut self,
        py: Python<'py>,
        node: NodeId,
        view: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let lane = self
            .inner
            .lane(node, self::view(view)?)
            .map_err(to_py_err)?;
        self.ints.list(py, &lane)
    }

    /// Number of tokens in the node's lane for `view`.
    fn lane_len(&self, node: NodeId, view: i64) -> PyResult<usize> {
        self.inner
            .lane_len(node, self::view(view)?)
            .map_err(to_py_err)
    }

    /// Lanes of `(nodes[i], views[i])` for every i, in one call.
    fn lanes_for<'py>(
        &mut self,
        py: Python<'py>,
        nodes: Vec<NodeId>,
        views: Vec<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let views = views.into_iter().map(view).collect::<PyResult<Vec<_>>>()?;
        if nodes.len() != views.len() {
            return Err(invalid(format!(
                "{} nodes for {} views",
                nodes.len(),
                views.len()
            )));
        }
        // One buffer for every lane; each is copied out as a list right away.
        let mut buffer = Vec::new();
        let lanes = PyList::empty(py);
        for (&node, &view) in nodes.iter().zip(&views) {
            buffer.clear();
            self.inner
                .lane_into(node, view, &mut buffer)
                .map_err(to_py_err)?;
            lanes.append(self.ints.list(py, &buffer)?)?;
        }
        Ok(lanes)
    }

    /// Number of nodes the two root paths share (0 when in different trees).
    fn shared_prefix_len(&self, a: NodeId, b: NodeId) -> PyResult<usize> {
        self.inner.shared_prefix_len(a, b).map_err(to_py_err)
    }

    /// Free `node` and all its descendants; returns how many nodes were freed.
    fn free_subtree(&mut self, node: NodeId) -> PyResult<usize> {
        self.inner.free_subtree(node).map_err(to_py_err)
    }

    /// live_nodes, freed_nodes, roots, tokens, token_capacity, text_bytes,
    /// bytes_estimate; also text_capacity, slots, core_bytes (node records and
    /// segment table, without token or text data) and compactions.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in self.inner.stats().entries() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}

fn node_args(
    participant: i64,
    role: PyBackedStr,
    text: PyBackedStr,
    segments: Option<&Bound<'_, PyDict>>,
    finish: Option<PyBackedStr>,
    meta: Option<PyBackedStr>,
) -> PyResult<NodeArgs> {
    Ok(NodeArgs {
        participant: self::participant(participant)?,
        role,
        text,
        segments: self::segments(segments)?,
        finish,
        meta,
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyForest>()?;
    m.add("ROLES", PyTuple::new(py, ROLES)?)?;
    m.add("FINISH_REASONS", PyTuple::new(py, FINISH_REASONS)?)?;
    Ok(())
}
