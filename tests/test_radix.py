"""turnloom._core.RadixCache through its Python API: behaviour, misuse, and a
property test against a plain-Python reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnloom import _core


def test_insert_match_and_stats():
    cache = _core.RadixCache(100)
    assert cache.capacity == 100
    assert cache.insert([1, 2, 3, 4]) == 4
    assert cache.insert((1, 2, 5)) == 1
    assert cache.match_len([1, 2, 3, 9]) == 3
    assert cache.match_many([[1, 2, 5], [7], []]) == [3, 0, 0]
    assert cache.insert_many([[1, 2, 3, 4, 5], [8]]) == [1, 1]
    assert cache.size == 7
    stats = cache.stats()
    assert stats == {
        "size": 7,
        "capacity": 100,
        "pinned": 0,
        "nodes": 6,
        "queries": 4,
        "query_tokens": 8,
        "hit_tokens": 6,
        "inserted": 7,
        "evicted": 0,
    }
    assert "size=7" in repr(cache)


def test_lru_leaf_eviction_on_insert():
    cache = _core.RadixCache(6)
    cache.insert([1, 1, 1])
    cache.insert([2, 2, 2])
    cache.match_len([1, 1, 1])
    assert cache.insert([3, 3]) == 2
    assert cache.match_len([2, 2, 2]) == 0
    assert cache.match_len([1, 1, 1]) == 3
    assert cache.stats()["evicted"] == 3


def test_pins_protect_and_limit():
    cache = _core.RadixCache(5)
    cache.insert([1, 2, 3])
    assert cache.pin([1, 2, 3, 4]) == 3
    assert cache.pinned == 3
    assert cache.insert([7, 8, 9, 10]) == 2  # only what fits next to the pinned path
    assert cache.size == 5
    cache.clear()
    assert cache.size == 3
    assert cache.evict(100) == 0
    assert cache.unpin([1, 2, 3, 4]) == 3
    assert cache.pinned == 0
    assert cache.evict(1) == 3
    assert cache.size == 0


def test_unpin_after_the_request_was_cached():
    cache = _core.RadixCache(20)
    cache.insert([1, 2])
    assert cache.pin([1, 2, 3]) == 2
    cache.insert([1, 2, 3, 4, 5])  # prompt + output of the finished request
    assert cache.unpin([1, 2, 3]) == 2
    assert cache.pinned == 0


@pytest.mark.parametrize("capacity", [0, -1])
def test_bad_capacity(capacity):
    with pytest.raises(_core.InvalidArgumentError):
        _core.RadixCache(capacity)


def test_misuse():
    cache = _core.RadixCache(10)
    with pytest.raises(_core.InvalidArgumentError):
        cache.unpin([1, 2])
    with pytest.raises(_core.InvalidArgumentError):
        cache.insert([1, -2])
    with pytest.raises(_core.InvalidArgumentError):
        cache.match_len([2**32])
    with pytest.raises(_core.InvalidArgumentError):
        cache.evict(-1)
    with pytest.raises(TypeError):
        cache.insert("abc")
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError
        cache.match_many([[1], [-1]])
    assert cache.size == 0


class RefCache:
    """Plain-Python model: the set of cached prefixes plus the prefixes where
    a node ends (SGLang splits edges where a match or insert stops), each
    with its last-access time and pin count."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.cached: set[tuple[int, ...]] = set()
        self.ends: dict[tuple[int, ...], list[int]] = {}  # end -> [time, pins]
        self.pins: dict[tuple[int, ...], list[int]] = {}
        self.clock = 0
        self.evicted = 0

    @property
    def size(self) -> int:
        return len(self.cached)

    @property
    def pinned(self) -> int:
        return sum(1 for p in self.cached if self.ends[self.node_end(p)][1] > 0)

    def node_end(self, p):
        while p not in self.ends:  # inside an edge: exactly one extension
            p = next(q for q in self.cached if len(q) == len(p) + 1 and q[:-1] == p)
        return p

    def path(self, p):
        return [p[:k] for k in range(1, len(p) + 1) if p[:k] in self.ends]

    def walk(self, tokens) -> int:
        self.clock += 1
        m = 0
        while m < len(tokens) and tuple(tokens[: m + 1]) in self.cached:
            m += 1
        p = tuple(tokens[:m])
        if m and p not in self.ends:
            self.ends[p] = list(self.ends[self.node_end(p)])
        for q in self.path(p):
            self.ends[q][0] = self.clock
        return m

    def lock(self, p, delta):
        for q in self.path(p):
            self.ends[q][1] += delta

    def evict(self, target: int) -> int:
        freed = 0
        while freed < target:
            leaves = [
                q for q, (_, pins) in self.ends.items()
                if pins == 0 and not any(len(c) == len(q) + 1 and c[:-1] == q for c in self.cached)
            ]
            if not leaves:
                break
            leaf = min(leaves, key=lambda q: self.ends[q][0])
            top = max((len(q) for q in self.path(leaf[:-1])), default=0)
            for k in range(top + 1, len(leaf) + 1):
                self.cached.remove(leaf[:k])
            del self.ends[leaf]
            freed += len(leaf) - top
        self.evicted += freed
        return freed

    def match_len(self, tokens) -> int:
        return self.walk(tokens)

    def insert(self, tokens) -> int:
        m = self.walk(tokens)
        need = len(tokens) - m
        if need == 0:
            return 0
        p = tuple(tokens[:m])
        self.lock(p, 1)
        if self.size + need > self.capacity:
            self.evict(self.size + need - self.capacity)
        take = min(need, self.capacity - self.size)
        for k in range(m + 1, m + take + 1):
            self.cached.add(tuple(tokens[:k]))
        if take:
            self.ends[tuple(tokens[: m + take])] = [self.clock, 0]
        self.lock(p, -1)
        return take

    def pin(self, tokens) -> int:
        m = self.walk(tokens)
        self.lock(tuple(tokens[:m]), 1)
        self.pins.setdefault(tuple(tokens), []).append(m)
        return m

    def unpin(self, tokens) -> int:
        stack = self.pins[tuple(tokens)]
        m = stack.pop()
        if not stack:
            del self.pins[tuple(tokens)]
        self.lock(tuple(tokens[:m]), -1)
        return m


seqs = st.lists(st.integers(0, 2), max_size=8)
ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["match_len", "insert", "pin", "unpin"]), seqs),
        st.tuples(st.just("evict"), st.integers(0, 10)),
        st.tuples(st.just("clear"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 20), ops=ops)
def test_matches_python_reference(capacity, ops):
    cache, ref = _core.RadixCache(capacity), RefCache(capacity)
    for name, arg in ops:
        if name == "unpin" and tuple(arg) not in ref.pins:
            with pytest.raises(_core.InvalidArgumentError):
                cache.unpin(arg)
            continue
        if name == "clear":
            cache.clear()
            ref.evict(ref.size)
        else:
            assert getattr(cache, name)(arg) == getattr(ref, name)(arg), (name, arg)
        assert (cache.size, cache.pinned) == (ref.size, ref.pinned)
        assert cache.size <= capacity
        stats = cache.stats()
        assert (stats["nodes"], stats["evicted"]) == (len(ref.ends), ref.evicted)
