"""turnloom._core.Forest through its Python API: behaviour, misuse, and lanes
against a plain-Python reference."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from turnloom import _core


@pytest.fixture
def forest() -> _core.Forest:
    return _core.Forest()


def conversation(forest: _core.Forest) -> tuple[int, int, int]:
    """System root with views 0 and 1, a user turn, an assistant reply."""
    root = forest.add_root(0, "system", "be brief", {0: [1, 2], 1: [9]})
    user = forest.append(root, 1, "user", "hi", {0: [3], 1: [4, 5]})
    reply = forest.append(user, 0, "assistant", "hello", {0: [6, 7]}, finish="stop", meta='{"n": 1}')
    return root, user, reply


def test_constants():
    assert _core.ROLES == ("system", "user", "assistant", "tool", "environment")
    assert _core.FINISH_REASONS == ("", "stop", "length", "error", "abort")


def test_navigation_and_node(forest):
    root, user, reply = conversation(forest)
    assert len(forest) == 3
    assert forest.parent(root) is None
    assert forest.parent(reply) == user
    assert forest.children(root) == [user]
    assert forest.children(reply) == []
    assert [forest.depth(n) for n in (root, user, reply)] == [0, 1, 2]
    assert forest.root(reply) == root
    assert forest.path(reply) == [root, user, reply]
    assert forest.node(reply) == {
        "participant": 0,
        "role": "assistant",
        "text": "hello",
        "finish": "stop",
        "meta": '{"n": 1}',
        "depth": 2,
        "parent": user,
        "children": [],
    }
    assert forest.node(root)["parent"] is None
    assert forest.node(user)["finish"] == "" and forest.node(user)["meta"] == ""
    assert forest.messages(reply) == [(0, "system", "be brief"), (1, "user", "hi"), (0, "assistant", "hello")]


def test_lanes_and_segments(forest):
    root, user, reply = conversation(forest)
    assert forest.lane(reply, 0) == [1, 2, 3, 6, 7]
    assert forest.lane(reply, 1) == [9, 4, 5]
    assert forest.lane(reply, 5) == []
    assert forest.lane_len(reply, 0) == 5
    assert forest.segment(user, 1) == [4, 5]
    assert forest.segment(reply, 1) is None
    assert forest.lanes_for([reply, user, root], [1, 0, 0]) == [[9, 4, 5], [1, 2, 3], [1, 2]]
    assert forest.lanes_for([], []) == []


def test_lanes_for_with_suffixes(forest):
    """A prompt is a lane plus its view's generation prefix, built as one list."""
    root, user, reply = conversation(forest)
    suffixes = [[70, 71], None]  # view 1: none given; view 5: past the end
    assert forest.lanes_for([reply, reply, user, root], [0, 1, 5, 0], suffixes) == [
        [1, 2, 3, 6, 7, 70, 71], [9, 4, 5], [], [1, 2, 70, 71]]
    big = 1 << 20  # past the shared-int table: still exact
    assert forest.lanes_for([user], [1], [[], [big, 5]]) == [[9, 4, 5, big, 5]]
    with pytest.raises(TypeError):
        forest.lanes_for([user], [0], [["x"]])


def test_tokens_accept_any_int_sequence(forest):
    root = forest.add_root(0, "system", "", {0: (1, 2), 1: range(3, 6), 2: [2**32 - 1, 300_000]})
    assert forest.lane(root, 0) == [1, 2]
    assert forest.lane(root, 1) == [3, 4, 5]
    assert forest.lane(root, 2) == [2**32 - 1, 300_000]
    for bad in ([-1], [2**32], ["7"], [1.5]):
        with pytest.raises((OverflowError, TypeError, ValueError)):
            forest.set_segment(root, 0, bad)
    assert forest.lane(root, 0) == [1, 2]


def test_edits(forest):
    root, user, reply = conversation(forest)
    forest.set_segment(user, 0, [30, 31, 32])
    assert forest.lane(reply, 0) == [1, 2, 30, 31, 32, 6, 7]
    forest.set_segment(user, 0, [])
    assert forest.segment(user, 0) == []
    forest.set_segment(reply, 1, [8])
    assert forest.lane(reply, 1) == [9, 4, 5, 8]
    forest.set_meta(reply, '{"a": "longer than before"}')
    forest.set_finish(reply, "length")
    node = forest.node(reply)
    assert (node["text"], node["meta"], node["finish"]) == ("hello", '{"a": "longer than before"}', "length")
    forest.set_meta(reply, "")
    assert forest.node(reply)["meta"] == ""


def test_branches_and_shared_prefix(forest):
    root, user, reply = conversation(forest)
    alt = forest.append(user, 0, "assistant", "hey", {0: [8]})
    assert forest.children(user) == [reply, alt]
    assert forest.lane(alt, 0) == [1, 2, 3, 8]
    assert forest.shared_prefix_len(reply, alt) == forest.shared_prefix_len(alt, reply) == 2
    assert forest.shared_prefix_len(reply, reply) == 3
    other = forest.add_root(2, "environment", "")
    assert forest.shared_prefix_len(other, alt) == 0
    assert forest.stats()["roots"] == 2


def test_subtree_tokens(forest):
    root, user, reply = conversation(forest)
    forest.append(user, 0, "assistant", "hey", {0: [8], 2: [1, 1, 1]})
    assert forest.subtree_tokens(root) == 3 + 3 + 2 + 4 == forest.stats()["tokens"]
    assert forest.subtree_tokens(root, [0]) == 6 == len(forest.lane(reply, 0)) + 1
    assert forest.subtree_tokens(root, [1, 2]) == 6
    assert forest.subtree_tokens(user) == 9
    with pytest.raises(_core.InvalidArgumentError):
        forest.subtree_tokens(root, [-1])
    forest.free_subtree(user)
    with pytest.raises(_core.StaleNodeError):
        forest.subtree_tokens(user)


def test_free_subtree_makes_ids_stale(forest):
    root, user, reply = conversation(forest)
    alt = forest.append(user, 0, "assistant", "hey", {0: [8]})
    assert forest.free_subtree(reply) == 1
    assert forest.children(user) == [alt]
    assert not forest.is_live(reply)
    with pytest.raises(_core.StaleNodeError):
        forest.lane(reply, 0)
    # The slot comes back under a new id; the old one stays stale.
    again = forest.append(alt, 1, "user", "more", {0: [10]})
    assert again != reply
    assert forest.lane(again, 0) == [1, 2, 3, 8, 10]
    for method in ("node", "parent", "children", "depth", "root", "path", "messages", "free_subtree"):
        with pytest.raises(_core.StaleNodeError):
            getattr(forest, method)(reply)
    assert forest.free_subtree(root) == 4
    assert len(forest) == 0
    stats = forest.stats()
    assert (stats["live_nodes"], stats["freed_nodes"], stats["roots"], stats["tokens"]) == (0, 5, 0, 0)


def test_errors_are_keyerrors_and_turnloom_errors(forest):
    root, _, _ = conversation(forest)
    forest.free_subtree(root)
    with pytest.raises(KeyError) as stale:
        forest.node(root)
    assert isinstance(stale.value, _core.StaleNodeError)
    assert isinstance(stale.value, _core.TurnloomError)
    assert "stale" in str(stale.value)
    for unknown in (0, 12345, 2**63):
        with pytest.raises(_core.UnknownNodeError) as err:
            forest.depth(unknown)
        assert isinstance(err.value, KeyError) and isinstance(err.value, _core.TurnloomError)
        assert not forest.is_live(unknown)
    with pytest.raises(_core.UnknownNodeError):
        forest.append(777, 0, "user", "orphan")


def test_invalid_arguments(forest):
    root, user, _ = conversation(forest)
    calls = [
        lambda: forest.add_root(0, "narrator", ""),
        lambda: forest.append(root, 0, "user", "", finish="done"),
        lambda: forest.append(root, -1, "user", ""),
        lambda: forest.append(root, 70_000, "user", ""),
        lambda: forest.append(root, 0, "user", "", {-1: [1]}),
        lambda: forest.append(root, 0, "user", "", {65_536: [1]}),
        lambda: forest.set_finish(user, "stopped"),
        lambda: forest.set_segment(user, 1 << 16, [1]),
        lambda: forest.lane(user, -1),
        lambda: forest.segment(user, 1 << 20),
        lambda: forest.lane_len(user, -5),
        lambda: forest.lanes_for([user], [0, 1]),
        lambda: forest.lanes_for([user], [-1]),
    ]
    for call in calls:
        with pytest.raises(_core.InvalidArgumentError) as err:
            call()
        assert isinstance(err.value, ValueError)
    assert len(forest) == 3
    assert forest.children(user) != [] and forest.node(user)["finish"] == ""


def test_append_many(forest):
    root, user, reply = conversation(forest)
    ids = forest.append_many(
        [reply, reply, user],
        [1, 1, 0],
        ["user", "tool", "assistant"],
        ["a", "b", "c"],
        [{0: [11]}, None, {1: [12, 13]}],
        ["", "", "error"],
        ["", "{}", ""],
    )
    assert forest.children(reply) == ids[:2]
    assert forest.lane(ids[0], 0) == [1, 2, 3, 6, 7, 11]
    assert forest.lane(ids[2], 1) == [9, 4, 5, 12, 13]
    assert forest.node(ids[1])["meta"] == "{}" and forest.node(ids[2])["finish"] == "error"
    assert forest.append_many([], [], [], []) == []


def test_append_many_is_all_or_nothing(forest):
    root, user, reply = conversation(forest)
    gone = forest.append(root, 0, "user", "gone")
    forest.free_subtree(gone)
    before = (len(forest), forest.stats(), forest.children(reply), forest.children(user))
    ok = {0: [1]}
    bad_batches = [
        (_core.InvalidArgumentError, [reply, user], [0, 0], ["user", "wizard"], ["a", "b"], [ok, ok]),
        (_core.StaleNodeError, [reply, gone], [0, 0], ["user", "user"], ["a", "b"], [ok, ok]),
        (_core.UnknownNodeError, [reply, 99], [0, 0], ["user", "user"], ["a", "b"], None),
        (_core.InvalidArgumentError, [reply, user], [0, 0], ["user", "user"], ["a"], None),
        (_core.InvalidArgumentError, [reply, user], [0, -2], ["user", "user"], ["a", "b"], None),
        (_core.InvalidArgumentError, [reply, user], [0, 0], ["user", "user"], ["a", "b"], [ok, {1 << 16: [1]}]),
        (_core.InvalidArgumentError, [reply, user], [0, 0], ["user", "user"], ["a", "b"], [ok]),
        (OverflowError, [reply, user], [0, 0], ["user", "user"], ["a", "b"], [ok, {0: [1, -1]}]),
    ]
    for error, parents, participants, roles, texts, segments in bad_batches:
        with pytest.raises(error):
            forest.append_many(parents, participants, roles, texts, segments)
    with pytest.raises(_core.InvalidArgumentError):
        forest.append_many([reply, user], [0, 0], ["user", "user"], ["a", "b"], None, ["", "nope"])
    after = (len(forest), forest.stats(), forest.children(reply), forest.children(user))
    assert after == before


def test_memory_tracks_live_nodes():
    forest = _core.Forest()
    tokens = list(range(1000, 1050))
    roots = [forest.add_root(0, "system", "s", {0: tokens, 1: tokens}) for _ in range(2000)]
    leaves = roots
    for _ in range(4):
        leaves = forest.append_many(leaves, [1] * len(leaves), ["user"] * len(leaves), ["t"] * len(leaves),
                                    [{0: tokens, 1: tokens}] * len(leaves))
    full = forest.stats()
    assert full["core_bytes"] / full["live_nodes"] < 100
    assert full["bytes_estimate"] >= full["core_bytes"] + 4 * full["token_capacity"]
    for root in roots[:1900]:
        forest.free_subtree(root)
    kept = forest.stats()
    assert kept["live_nodes"] == 500 and kept["compactions"] > 0
    assert kept["token_capacity"] < full["token_capacity"] / 4
    assert forest.lane(leaves[-1], 1) == tokens * 5


def packed(segments: list[list[list[int]]], lead: int = 0) -> tuple[array, list[int]]:
    """Per-node per-view token lists as one uint32 buffer and its offsets,
    starting `lead` tokens in."""
    tokens, offsets = array("I", [7] * lead), [lead]
    for node in segments:
        for segment in node:
            tokens.extend(segment)
            offsets.append(len(tokens))
    return tokens, offsets


def test_append_packed(forest):
    root, user, reply = conversation(forest)
    tokens, offsets = packed([[[11], [12, 13]], [[], [14]], [[15, 16], []]], lead=2)
    ids = forest.append_packed(
        [reply, None, user], [1, 2, 0], ["user", 4, "assistant"], ["a", "env", "c"],
        [0, 1], tokens, offsets, finishes=["", "stop", 2], metas=["", "{}", ""],
    )
    assert forest.children(reply) == [ids[0]] and forest.children(user) == [reply, ids[2]]
    assert forest.parent(ids[1]) is None and forest.stats()["roots"] == 2
    assert forest.lane(ids[0], 0) == [1, 2, 3, 6, 7, 11]
    assert forest.lane(ids[0], 1) == [9, 4, 5, 12, 13]
    assert forest.segment(ids[1], 0) == [] and forest.lane(ids[1], 1) == [14]
    assert forest.lane(ids[2], 0) == [1, 2, 3, 15, 16] and forest.segment(ids[2], 1) == []
    assert forest.node(ids[1]) == {
        "participant": 2, "role": "environment", "text": "env", "finish": "stop", "meta": "{}",
        "depth": 0, "parent": None, "children": [],
    }
    assert forest.node(ids[2])["finish"] == "length" and forest.node(ids[2])["role"] == "assistant"
    assert forest.append_packed([], [], [], [], [0], array("I"), [0]) == []
    # No views: plain nodes.
    bare = forest.append_packed([root], [0], ["tool"], ["t"], [], b"", [0])
    assert forest.segment(bare[0], 0) is None


def test_append_packed_accepts_any_uint32_buffer(forest):
    root = forest.add_root(0, "system", "", {0: [1]})
    payload = array("I", [5, 6, 2**32 - 1])
    raw = payload.tobytes()
    unaligned = memoryview(bytearray(b"\0" + raw))[1:]
    for tokens in (payload, raw, bytearray(raw), memoryview(payload), memoryview(raw), unaligned):
        node = forest.append_packed([root], [0], [1], ["u"], [0], tokens, array("Q", [0, 3]))
        assert forest.segment(node[0], 0) == [5, 6, 2**32 - 1]
    node = forest.append_packed([root], [0], [1], ["u"], [0], payload, array("i", [1, 2]))
    assert forest.segment(node[0], 0) == [6]


def test_append_packed_with_numpy(forest):
    np = pytest.importorskip("numpy")
    root = forest.add_root(0, "system", "", {0: [1]})
    tokens = np.arange(10, 22, dtype=np.uint32).reshape(2, 2, 3)  # node, view, token
    offsets = np.arange(5, dtype=np.int64) * 3
    ids = forest.append_packed([root, root], [1, 1], [1, 1], ["a", "b"], [0, 1], tokens, offsets)
    assert forest.lane(ids[1], 0) == [1, 16, 17, 18] and forest.lane(ids[1], 1) == [19, 20, 21]
    lanes, ends = forest.lanes_packed(np.array(ids, dtype=np.uint64), np.array([1, 0]))
    assert np.asarray(lanes).dtype == np.uint32 and np.asarray(ends).tolist() == [0, 3, 7]
    assert np.asarray(lanes).tolist() == [13, 14, 15, 1, 16, 17, 18]
    with pytest.raises(TypeError):
        forest.append_packed([root], [1], [1], ["a"], [0], np.arange(3, dtype=np.int64), [0, 3])
    with pytest.raises((BufferError, ValueError)):  # numpy's word for "not contiguous"
        forest.append_packed([root], [1], [1], ["a"], [0], np.arange(6, dtype=np.uint32)[::2], [0, 3])


def test_append_packed_misuse_is_all_or_nothing(forest):
    root, user, reply = conversation(forest)
    gone = forest.append(root, 0, "user", "gone")
    forest.free_subtree(gone)
    before = (len(forest), forest.stats(), forest.children(reply), forest.children(user))
    tokens, offsets = packed([[[1], [2]], [[3], [4]]])  # two nodes, views 0 and 1
    good = dict(parents=[reply, None], participants=[0, 0], roles=["user", "system"], texts=["a", "b"],
                views=[0, 1], tokens=tokens, offsets=offsets)
    bad_calls = [
        (TypeError, dict(tokens=array("H", [1, 2, 3, 4]))),  # wrong item size
        (TypeError, dict(tokens=array("Q", [1, 2, 3, 4]))),
        (TypeError, dict(tokens=array("i", [1, 2, 3, 4]))),  # signed
        (TypeError, dict(tokens=array("f", [1, 2, 3, 4]))),
        (TypeError, dict(tokens=[1, 2, 3, 4])),  # not a buffer
        (TypeError, dict(tokens="1234")),
        (BufferError, dict(tokens=memoryview(tokens)[::2])),  # not contiguous
        (_core.InvalidArgumentError, dict(tokens=b"\1\0\0\0\2")),  # not whole u32s
        (_core.InvalidArgumentError, dict(offsets=[0, 1, 2, 3])),  # too few
        (_core.InvalidArgumentError, dict(offsets=[0, 1, 2, 3, 4, 4])),  # too many
        (_core.InvalidArgumentError, dict(offsets=[0, 2, 1, 3, 4])),  # decreasing
        (_core.InvalidArgumentError, dict(offsets=[0, 1, 2, 3, 5])),  # past the tokens
        (_core.InvalidArgumentError, dict(offsets=[-1, 1, 2, 3, 4])),
        (_core.InvalidArgumentError, dict(offsets=array("q", [0, 1, 2, 3, -4]))),
        (TypeError, dict(offsets=array("d", [0, 1, 2, 3, 4]))),
        (TypeError, dict(offsets=b"\0\1\2\3\4")),
        (_core.InvalidArgumentError, dict(views=[0, 0])),  # a view twice
        (_core.InvalidArgumentError, dict(views=[0, 1 << 16])),
        (_core.InvalidArgumentError, dict(views=[0, -1])),
        (_core.InvalidArgumentError, dict(roles=["user", "wizard"])),
        (_core.InvalidArgumentError, dict(roles=["user", 5])),
        (_core.InvalidArgumentError, dict(roles=["user", -1])),
        (TypeError, dict(roles=["user", 1.0])),
        (_core.InvalidArgumentError, dict(finishes=["", "done"])),
        (_core.InvalidArgumentError, dict(finishes=["", 9])),
        (_core.InvalidArgumentError, dict(participants=[0, 1 << 16])),
        (_core.InvalidArgumentError, dict(texts=["a"])),
        (_core.InvalidArgumentError, dict(metas=["", "", ""])),
        (_core.InvalidArgumentError, dict(parents=[reply])),
        (_core.StaleNodeError, dict(parents=[None, gone])),
        (_core.UnknownNodeError, dict(parents=[reply, 12345])),
    ]
    for error, change in bad_calls:
        with pytest.raises(error):
            forest.append_packed(**{**good, **change})
    after = (len(forest), forest.stats(), forest.children(reply), forest.children(user))
    assert after == before
    assert len(forest.append_packed(**good)) == 2


def test_lanes_packed(forest):
    root, user, reply = conversation(forest)
    nodes, views = [reply, user, root, reply], [1, 0, 0, 7]
    tokens, offsets = forest.lanes_packed(nodes, views)
    assert (tokens.format, tokens.itemsize, offsets.format, offsets.itemsize) == ("I", 4, "Q", 8)
    assert offsets.tolist() == [0, 3, 6, 8, 8]
    lanes = forest.lanes_for(nodes, views)
    assert [tokens[a:b].tolist() for a, b in zip(offsets, offsets[1:])] == lanes
    assert forest.lanes_packed(array("Q", [reply, user]), 0)[0].tolist() == [1, 2, 3, 6, 7, 1, 2, 3]
    empty, ends = forest.lanes_packed([], [])
    assert (len(empty), ends.tolist()) == (0, [0])
    for call, error in [
        (lambda: forest.lanes_packed([reply], [0, 1]), _core.InvalidArgumentError),
        (lambda: forest.lanes_packed([reply], [-1]), _core.InvalidArgumentError),
        (lambda: forest.lanes_packed([reply], 1 << 16), _core.InvalidArgumentError),
        (lambda: forest.lanes_packed([-5], 0), _core.InvalidArgumentError),
        (lambda: forest.lanes_packed([12345], 0), _core.UnknownNodeError),
        (lambda: forest.lanes_packed(array("d", [1.0]), 0), TypeError),
    ]:
        with pytest.raises(error):
            call()
    forest.free_subtree(user)
    with pytest.raises(_core.StaleNodeError):
        forest.lanes_packed([root, reply], 0)


tokens_lists = st.lists(st.integers(0, 2**32 - 1), max_size=5)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_packed_api_matches_list_api(data):
    """Random batches through append_packed into one forest and through
    add_root/append into another: same ids, nodes, segments and lanes, and
    lanes_packed agrees with lanes_for."""
    listed, packed_forest = _core.Forest(), _core.Forest()
    live: list[int] = []
    for _ in range(data.draw(st.integers(1, 5), label="batches")):
        if live and data.draw(st.booleans(), label="free first"):
            top = data.draw(st.sampled_from(live), label="freed")
            assert listed.free_subtree(top) == packed_forest.free_subtree(top)
            live = [n for n in live if listed.is_live(n)]
        views = data.draw(st.lists(st.integers(0, 3), unique=True, max_size=3), label="views")
        n = data.draw(st.integers(0, 5), label="nodes")
        parents = [data.draw(st.none() | st.sampled_from(live)) if live else None for _ in range(n)]
        roles = data.draw(st.lists(st.integers(0, len(_core.ROLES) - 1), min_size=n, max_size=n), label="roles")
        texts = data.draw(st.lists(st.text(max_size=4), min_size=n, max_size=n), label="texts")
        segments = data.draw(st.lists(st.lists(tokens_lists, min_size=len(views), max_size=len(views)),
                                      min_size=n, max_size=n), label="segments")
        tokens, offsets = packed(segments, lead=data.draw(st.integers(0, 3), label="lead"))
        ids = packed_forest.append_packed(parents, [3] * n, roles, texts, views, tokens, offsets)
        for parent, role, text, node_segments, node in zip(parents, roles, texts, segments, ids):
            args = (3, _core.ROLES[role], text, dict(zip(views, node_segments)))
            one = listed.add_root(*args) if parent is None else listed.append(parent, *args)
            assert one == node
        live.extend(ids)
    assert len(listed) == len(packed_forest) == len(live)
    for node in live:
        assert packed_forest.node(node) == listed.node(node)
        for view in range(4):
            assert packed_forest.segment(node, view) == listed.segment(node, view)
    pairs = [(node, view) for node in live for view in range(4)]
    nodes, views = [p[0] for p in pairs], [p[1] for p in pairs]
    lanes = listed.lanes_for(nodes, views)
    assert packed_forest.lanes_for(nodes, views) == lanes
    tokens, offsets = packed_forest.lanes_packed(nodes, views)
    assert [tokens[a:b].tolist() for a, b in zip(offsets, offsets[1:])] == lanes


class ForestMachine(RuleBasedStateMachine):
    """Random adds, appends, edits and frees, checked against dict-based nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.forest = _core.Forest()
        self.nodes: dict[int, dict] = {}  # live id -> {"parent", "segments"}
        self.freed: list[int] = []

    tokens = st.lists(st.integers(0, 2**32 - 1), max_size=6)
    segments = st.dictionaries(st.integers(0, 2), tokens, max_size=3)

    def lane(self, node: int, view: int) -> list[int]:
        path = []
        while node is not None:
            path.append(node)
            node = self.nodes[node]["parent"]
        return [t for n in reversed(path) for t in self.nodes[n]["segments"].get(view, [])]

    def pick(self, data) -> int:
        return data.draw(st.sampled_from(sorted(self.nodes)))

    @rule(segments=segments)
    def add_root(self, segments):
        node = self.forest.add_root(0, "system", "s", segments)
        self.nodes[node] = {"parent": None, "segments": segments}

    @precondition(lambda self: self.nodes)
    @rule(data=st.data(), segments=segments)
    def append(self, data, segments):
        parent = self.pick(data)
        node = self.forest.append(parent, 1, "user", "u", segments)
        self.nodes[node] = {"parent": parent, "segments": segments}

    @precondition(lambda self: self.nodes)
    @rule(data=st.data(), segments=st.lists(segments, min_size=1, max_size=4))
    def append_many(self, data, segments):
        parents = [self.pick(data) for _ in segments]
        n = len(parents)
        ids = self.forest.append_many(parents, [0] * n, ["assistant"] * n, ["a"] * n, segments)
        for node, parent, segs in zip(ids, parents, segments):
            self.nodes[node] = {"parent": parent, "segments": segs}

    @precondition(lambda self: self.nodes)
    @rule(data=st.data(), view=st.integers(0, 2), tokens=tokens)
    def set_segment(self, data, view, tokens):
        node = self.pick(data)
        self.forest.set_segment(node, view, tokens)
        self.nodes[node]["segments"] = {**self.nodes[node]["segments"], view: tokens}

    @precondition(lambda self: self.nodes)
    @rule(data=st.data())
    def free(self, data):
        top = self.pick(data)
        doomed = {top}
        for node in sorted(self.nodes):
            path, up = [], node
            while up is not None:
                path.append(up)
                up = self.nodes[up]["parent"]
            if top in path:
                doomed.add(node)
        assert self.forest.free_subtree(top) == len(doomed)
        for node in doomed:
            del self.nodes[node]
        self.freed.extend(doomed)

    @invariant()
    def lanes_match(self):
        live = sorted(self.nodes)
        assert len(self.forest) == len(live)
        for view in range(3):
            assert self.forest.lanes_for(live, [view] * len(live)) == [self.lane(n, view) for n in live]
        suffixes = [[100 + v] * v for v in range(3)]
        views = [n % 3 for n in live]
        assert self.forest.lanes_for(live, views, suffixes) == [
            self.lane(n, v) + suffixes[v] for n, v in zip(live, views)]
        for node in live:
            assert self.forest.depth(node) == len(self.forest.path(node)) - 1

    @invariant()
    def freed_are_stale(self):
        for node in self.freed[-20:]:
            assert not self.forest.is_live(node)
            with pytest.raises(_core.StaleNodeError):
                self.forest.lane(node, 0)


ForestMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_forest_machine = ForestMachine.TestCase
