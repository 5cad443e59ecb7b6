"""turnloom._core.Forest through its Python API: behaviour, misuse, and lanes
against a plain-Python reference."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
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
