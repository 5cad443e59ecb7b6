//! Python class `Forest`: converts arguments and results around
//! `turnloom_core::Forest`, which holds all the logic.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyMemoryView, PyTuple};
use turnloom_core::forest::{
    finish_code, narrow_u16, role_code, split_segments, Forest, NewNode, NodeId, FINISH_REASONS,
    ROLES,
};
use turnloom_core::{CoreError, CoreResult};

use crate::to_py_err;

mod buffer;
mod tokens;

use buffer::Buffer;
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

/// A role or finish reason given as its name or as its code (index into `table`).
fn name_or_code(
    value: &Bound<'_, PyAny>,
    table: &[&'static str],
    code_of: fn(&str) -> CoreResult<u8>,
    what: &str,
) -> PyResult<&'static str> {
    if value.is_instance_of::<PyInt>() {
        let code: i64 = value.extract()?;
        return usize::try_from(code)
            .ok()
            .and_then(|c| table.get(c).copied())
            .ok_or_else(|| {
                invalid(format!(
                    "{what} code {code} is out of range 0..{}",
                    table.len()
                ))
            });
    }
    let name: PyBackedStr = value.extract()?;
    let code = code_of(&name).map_err(to_py_err)?;
    Ok(table[usize::from(code)])
}

/// Views given as one int for every node, or one per node (ints or an integer buffer).
fn views_for(views: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<u16>> {
    if views.is_instance_of::<PyInt>() {
        return Ok(vec![view(views.extract()?)?; n]);
    }
    buffer::naturals(views, "views")?
        .into_iter()
        .map(|v| view(i64::try_from(v).unwrap_or(i64::MAX)))
        .collect()
}

/// Integer types for which every bit pattern is a value, so bytes can be viewed as them.
trait Plain: Copy + Default {}
impl Plain for u32 {}
impl Plain for u64 {}

/// A memoryview of `format` items over a new bytes object of `len` native-order
/// `T`s, written in place by `fill`.
fn packed<'py, T: Plain>(
    py: Python<'py>,
    len: usize,
    format: &str,
    fill: impl FnOnce(&mut [T]) -> PyResult<()>,
) -> PyResult<Bound<'py, PyAny>> {
    let size = std::mem::size_of::<T>();
    let bytes_len = len.checked_mul(size).ok_or_else(|| {
        to_py_err(CoreError::Capacity(format!(
            "{len} items do not fit in memory"
        )))
    })?;
    let bytes = PyBytes::new_with(py, bytes_len, |bytes| {
        // SAFETY: T is Plain: any bytes are a valid T.
        let (head, items, tail) = unsafe { bytes.align_to_mut::<T>() };
        if head.is_empty() && tail.is_empty() {
            return fill(items);
        }
        // CPython aligns bytes data to 8 bytes; this copy is a fallback only.
        let mut items = vec![T::default(); len];
        fill(&mut items)?;
        // SAFETY: reading the initialised items back as their bytes.
        let raw = unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), bytes_len) };
        bytes.copy_from_slice(raw);
        Ok(())
    })?;
    PyMemoryView::from(bytes.as_any())?.call_method1("cast", (format,))
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

    /// Append a batch whose token segments lie back to back in one buffer.
    ///
    /// Node `i` goes under `parents[i]` (None starts a new tree) and gets one
    /// segment per entry of `views`: segment `k` (node `k // len(views)`, view
    /// `views[k % len(views)]`) is `tokens[offsets[k]:offsets[k + 1]]`. Tokens
    /// are read in place from any buffer of uint32 items (or raw little-endian
    /// bytes); roles and finishes may be names or codes. All-or-nothing.
    #[pyo3(signature = (parents, participants, roles, texts, views, tokens, offsets, finishes=None, metas=None))]
    #[allow(clippy::too_many_arguments)]
    fn append_packed(
        &mut self,
        parents: Vec<Option<NodeId>>,
        participants: Vec<i64>,
        roles: Vec<Bound<'_, PyAny>>,
        texts: Vec<PyBackedStr>,
        views: Vec<i64>,
        tokens: &Bound<'_, PyAny>,
        offsets: &Bound<'_, PyAny>,
        finishes: Option<Vec<Bound<'_, PyAny>>>,
        metas: Option<Vec<PyBackedStr>>,
    ) -> PyResult<Vec<NodeId>> {
        let n = parents.len();
        let lengths = [
            ("participants", Some(participants.len())),
            ("roles", Some(roles.len())),
            ("texts", Some(texts.len())),
            ("finishes", finishes.as_ref().map(Vec::len)),
            ("metas", metas.as_ref().map(Vec::len)),
        ];
        for (name, len) in lengths {
            if let Some(len) = len.filter(|&len| len != n) {
                return Err(invalid(format!("{len} {name} for {n} parents")));
            }
        }
        let participants = participants
            .into_iter()
            .map(participant)
            .collect::<PyResult<Vec<_>>>()?;
        let roles = roles
            .iter()
            .map(|r| name_or_code(r, &ROLES, role_code, "role"))
            .collect::<PyResult<Vec<_>>>()?;
        let finishes = finishes
            .map(|f| {
                f.iter()
                    .map(|f| name_or_code(f, &FINISH_REASONS, finish_code, "finish reason"))
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let views = views.into_iter().map(view).collect::<PyResult<Vec<_>>>()?;
        let offsets = buffer::naturals(offsets, "offsets")?;
        // Taken last: no Python code runs while the core reads the caller's buffer.
        let buffer = Buffer::get(tokens)?;
        let tokens = buffer.tokens()?;
        let segments = split_segments(n, &views, &tokens, &offsets).map_err(to_py_err)?;
        let per_node = views.len();
        let nodes: Vec<NewNode> = (0..n)
            .map(|i| NewNode {
                participant: participants[i],
                role: roles[i],
                text: &texts[i],
                segments: segments[i * per_node..(i + 1) * per_node].into(),
                finish: finishes.as_ref().map_or("", |f| f[i]),
                meta: metas.as_ref().map_or("", |m| &m[i]),
            })
            .collect();
        self.inner.add_many(&parents, &nodes).map_err(to_py_err)
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

    /// Lanes of `(nodes[i], views[i])` for every i, in one call. With
    /// `suffixes`, `suffixes[v]` (when present) is appended to every lane of
    /// view `v`: a prompt is a lane plus its generation prefix.
    #[pyo3(signature = (nodes, views, suffixes=None))]
    fn lanes_for<'py>(
        &mut self,
        py: Python<'py>,
        nodes: Vec<NodeId>,
        views: Vec<i64>,
        suffixes: Option<Vec<Option<Vec<u32>>>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let views = views.into_iter().map(view).collect::<PyResult<Vec<_>>>()?;
        if nodes.len() != views.len() {
            return Err(invalid(format!(
                "{} nodes for {} views",
                nodes.len(),
                views.len()
            )));
        }
        let suffixes = suffixes.unwrap_or_default();
        // One buffer for every lane; each is copied out as a list right away.
        let mut buffer = Vec::new();
        let lanes = PyList::empty(py);
        for (&node, &view) in nodes.iter().zip(&views) {
            buffer.clear();
            self.inner
                .lane_into(node, view, &mut buffer)
                .map_err(to_py_err)?;
            let suffix = suffixes
                .get(usize::from(view))
                .and_then(Option::as_deref)
                .unwrap_or_default();
            lanes.append(self.ints.list_of_parts(py, &buffer, suffix)?)?;
        }
        Ok(lanes)
    }

    /// Lanes of `(nodes[i], views[i])` back to back in one buffer: returns
    /// `(tokens, offsets)`, memoryviews of uint32 and uint64 items, lane `i`
    /// being `tokens[offsets[i]:offsets[i + 1]]`. `views` may be one int for
    /// every node; `nodes` and `views` may be integer buffers.
    fn lanes_packed<'py>(
        &self,
        py: Python<'py>,
        nodes: &Bound<'py, PyAny>,
        views: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let nodes = buffer::naturals(nodes, "nodes")?;
        let views = views_for(views, nodes.len())?;
        let offsets = self.inner.lane_offsets(&nodes, &views).map_err(to_py_err)?;
        let total = offsets[nodes.len()] as usize;
        let tokens = packed::<u32>(py, total, "I", |out| {
            self.inner
                .write_lanes(&nodes, &views, &offsets, out)
                .map_err(to_py_err)
        })?;
        let offsets = packed::<u64>(py, offsets.len(), "Q", |out| {
            out.copy_from_slice(&offsets);
            Ok(())
        })?;
        Ok((tokens, offsets))
    }

    /// Number of nodes the two root paths share (0 when in different trees).
    fn shared_prefix_len(&self, a: NodeId, b: NodeId) -> PyResult<usize> {
        self.inner.shared_prefix_len(a, b).map_err(to_py_err)
    }

    /// Tokens in every segment of `node`'s subtree, for every view or only
    /// for `views` (what a prefix cache holds for a whole conversation tree).
    #[pyo3(signature = (node, views=None))]
    fn subtree_tokens(&self, node: NodeId, views: Option<Vec<i64>>) -> PyResult<u64> {
        let views = views
            .map(|vs| vs.into_iter().map(view).collect::<PyResult<Vec<_>>>())
            .transpose()?;
        self.inner
            .subtree_tokens(node, views.as_deref())
            .map_err(to_py_err)
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
