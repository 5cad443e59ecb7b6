"""turnloom._core.Scheduler through its Python API: order, admission,
starvation, misuse, scale, and a property test against a plain-Python
reference of the documented rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnloom import _core


def test_cache_aware_order():
    s = _core.Scheduler()
    s.push_many([1], [20], [5])
    s.push_many([2], [30], [5])
    assert s.pop_batch(2, 100) == [1, 2]  # admits tree 20, then tree 30
    s.complete_many([1, 2])
    s.push_many([3, 4, 5, 6], [30, 20, 30, 20], [9, 9, 9, 9], priorities=[0, 0, 0, 1], cached_lens=[1, 1, 7, 0])
    assert len(s) == 4
    # priority, then longest cached prefix, then the earlier admitted tree
    assert s.pop_batch(10, 1000) == [6, 5, 4, 3]
    assert len(s) == 0


def test_update_cached_reranks():
    s = _core.Scheduler()
    s.push_many([1, 2], [7, 7], [50, 50])
    s.update_cached([2], [30])
    assert s.pop_batch(1, 100) == [2]


def test_token_limit_and_oversized_job():
    s = _core.Scheduler()
    s.push_many([1, 2, 3], [1, 1, 1], [500, 60, 30])
    assert s.pop_batch(8, 100) == [1]  # larger than max_tokens: alone
    assert s.pop_batch(8, 100) == [2, 3]


def test_admission_budget_and_release():
    s = _core.Scheduler(token_budget=100, output_reserve=10)
    s.push_many([1, 2, 3], [1, 2, 3], [50, 30, 10])
    assert s.pop_batch(8, 1000) == [1, 2]  # footprints 60 + 40 fill the budget
    assert s.stats()["admitted_tokens"] == 100
    assert s.pop_batch(8, 1000) == []  # tree 3 waits for room
    s.complete_many([1])
    assert s.stats()["admitted_tokens"] == 90
    s.finish_tree(1)
    assert s.stats()["admitted_tokens"] == 40
    assert s.pop_batch(8, 1000) == [3]
    stats = s.stats()
    assert stats == {
        "waiting": 0,
        "in_flight": 2,
        "admitted_trees": 2,
        "admitted_tokens": 60,
        "runnable": 2,
        "pops": 3,
        "max_wait": 2,
        "max_wait_admitted": 0,  # job 3 waited only for its tree's admission
    }


def test_tree_reserve_holds_back_admissions_until_trees_finish():
    # Admitted at 10 + 10 tokens, each tree reserves its expected size, 60.
    s = _core.Scheduler(token_budget=130, output_reserve=10, tree_reserve=60)
    s.push_many([1, 2, 3], [1, 2, 3], [10, 10, 10])
    assert s.pop_batch(8, 1000) == [1, 2]
    assert s.stats()["admitted_tokens"] == 120
    s.complete_many([1, 2])
    assert s.pop_batch(8, 1000) == []  # completions do not free a reserve
    s.finish_tree(1)
    assert s.pop_batch(8, 1000) == [3]


def test_set_tree_reserve_applies_to_later_admissions():
    s = _core.Scheduler(token_budget=100, output_reserve=0, tree_reserve=50)
    s.push_many([1], [1], [5])
    assert s.pop_batch(8, 1000) == [1]
    s.set_tree_reserve(20)
    assert s.stats()["admitted_tokens"] == 50  # tree 1 keeps its reserve
    s.push_many([2, 3, 4], [2, 3, 4], [5, 5, 5])
    assert s.pop_batch(8, 1000) == [2, 3]  # 50 + 20 + 20; a third 20 does not fit
    with pytest.raises(_core.InvalidArgumentError):
        s.set_tree_reserve(-1)


def test_min_runnable_admits_past_the_budget_when_work_is_short():
    s = _core.Scheduler(token_budget=30, output_reserve=10, min_runnable=3)
    s.push_many([1, 2, 3, 4], [1, 2, 3, 4], [10, 10, 10, 10])
    assert s.pop_batch(8, 1000) == [1, 2, 3]  # one fits the budget; the floor takes two more
    assert s.stats()["runnable"] == 3
    assert s.pop_batch(8, 1000) == []  # at the floor, the budget rules again
    s.complete_many([1])
    assert s.pop_batch(8, 1000) == [4]


def test_floor_trees_caps_the_trees_the_floor_admits():
    s = _core.Scheduler(token_budget=30, output_reserve=10, min_runnable=3, floor_trees=2)
    s.push_many([1, 2, 3], [1, 2, 3], [10, 10, 10])
    assert s.pop_batch(8, 1000) == [1, 2]  # under the floor, but two trees are the cap
    s.set_floor_trees(None)
    assert s.pop_batch(8, 1000) == [3]
    with pytest.raises(_core.InvalidArgumentError, match="floor_trees"):
        s.set_floor_trees(-1)


def test_starving_job_is_served_at_the_limit():
    s = _core.Scheduler(starvation_limit=3)
    s.push_many([100], [1], [5], priorities=[-5])
    served = []
    for pop in range(8):
        s.push_many([pop], [1], [5], priorities=[9])
        batch = s.pop_batch(1, 100)
        s.complete_many(batch)
        served.append(batch)
    assert served[3] == [100]
    assert s.stats()["max_wait"] == 3


def test_misuse():
    s = _core.Scheduler()
    s.push_many([1], [1], [5])
    with pytest.raises(_core.JobError):
        s.push_many([1], [1], [5])
    with pytest.raises(KeyError):  # JobError is a KeyError too
        s.push_many([2, 2], [1, 1], [5, 5])
    assert len(s) == 1
    with pytest.raises(_core.JobError):
        s.complete_many([1])  # waiting, not in flight
    with pytest.raises(_core.JobError):
        s.complete_many([99])
    with pytest.raises(_core.JobError):
        s.update_cached([99], [0])
    with pytest.raises(_core.InvalidArgumentError):
        s.push_many([3], [1, 2], [5])
    with pytest.raises(_core.InvalidArgumentError):
        s.push_many([3], [1], [-5])
    with pytest.raises(_core.InvalidArgumentError):
        s.push_many([-3], [1], [5])
    with pytest.raises(_core.InvalidArgumentError):
        s.push_many([3], [1], [5], cached_lens=[6])
    with pytest.raises(_core.InvalidArgumentError):
        s.push_many([3], [1], [5], priorities=[1, 2])
    with pytest.raises(_core.InvalidArgumentError):
        s.pop_batch(0, 10)
    with pytest.raises(_core.InvalidArgumentError):
        s.pop_batch(1, -1)
    with pytest.raises(_core.InvalidArgumentError):
        s.finish_tree(1)  # job 1 still waits
    s.finish_tree(12345)  # unknown trees are ignored
    s.finish_tree(-1)
    assert s.pop_batch(4, 10) == [1]
    with pytest.raises(_core.JobError):
        s.push_many([1], [1], [5])  # in flight
    with pytest.raises(_core.JobError):
        s.complete_many([1, 1])
    s.complete_many([1])
    s.finish_tree(1)
    assert s.stats()["admitted_trees"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"token_budget": -1}, {"starvation_limit": -1}, {"output_reserve": -1}, {"tree_reserve": -1},
     {"min_runnable": -1}, {"floor_trees": -1}, {"tree_reserve": 2**32 + 1}],
)
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(_core.InvalidArgumentError):
        _core.Scheduler(**kwargs)


def test_a_million_jobs():
    n = 1_000_000
    s = _core.Scheduler(token_budget=1 << 40)
    ids = range(n)
    s.push_many(ids, [i % 4099 for i in ids], [100 + i % 900 for i in ids], cached_lens=[i % 100 for i in ids])
    assert len(s) == n
    seen = 0
    while len(s):
        batch = s.pop_batch(4096, 1 << 24)
        seen += len(batch)
        s.complete_many(batch)
    assert seen == n
    assert s.stats()["in_flight"] == 0


class RefScheduler:
    """The documented rules as full scans over plain lists."""

    def __init__(self, budget, limit, reserve, tree_reserve=0, min_runnable=0, floor_trees=None):
        self.budget, self.limit, self.reserve = budget, limit, reserve
        self.tree_reserve, self.min_runnable = tree_reserve, min_runnable
        self.floor_trees = floor_trees
        self.jobs: dict[int, dict] = {}  # id -> job
        self.trees: list[dict] = []  # incarnations
        self.seq = self.admits = self.pops = 0

    def current(self, tree_id):
        return next((t for t in self.trees if t["id"] == tree_id and not t["finished"]), None)

    def footprint(self, tree, reserve=None):
        n = sum(1 for j in self.jobs.values() if j["tree"] is tree)
        return max(tree["max_prompt"] + self.reserve * n, tree["reserve"] if reserve is None else reserve)

    def runnable(self):
        return sum(1 for j in self.jobs.values() if j["tree"]["admitted"] is not None)

    def admitted_tokens(self):
        return sum(self.footprint(t) for t in self.trees if t["admitted"] is not None)

    def admitted_trees(self):
        return sum(1 for t in self.trees if t["admitted"] is not None)

    def push(self, ids, trees, lens, prios, cached):
        for k, (i, c, p) in enumerate(zip(ids, cached, lens)):
            if i in self.jobs or i in ids[:k]:
                raise _core.JobError("dup")
            if c > p:
                raise _core.InvalidArgumentError("cached")
        for i, t, p, pr, c in zip(ids, trees, lens, prios, cached):
            tree = self.current(t)
            if tree is None:
                tree = {"id": t, "admitted": None, "finished": False, "max_prompt": 0, "reserve": 0}
                self.trees.append(tree)
            tree["max_prompt"] = max(tree["max_prompt"], p)
            self.jobs[i] = dict(id=i, tree=tree, len=p, prio=pr, cached=c, seq=self.seq, at=self.pops, run=False)
            self.seq += 1

    def try_admit(self, tree):
        footprint = self.footprint(tree, self.tree_reserve)
        fits = self.budget is None or self.admitted_tokens() + footprint <= self.budget
        under_floor = self.runnable() < self.min_runnable and (
            self.floor_trees is None or self.admitted_trees() < self.floor_trees)
        if fits or self.admitted_trees() == 0 or under_floor:
            tree["admitted"], tree["reserve"] = self.admits, self.tree_reserve
            self.admits += 1
            return True
        return False

    def pick(self, now, blocked):
        while True:
            waiting = [j for j in self.jobs.values() if not j["run"]]
            starving = [
                j for j in waiting
                if now - j["at"] >= self.limit and (not blocked[0] or j["tree"]["admitted"] is not None)
            ]
            if starving:
                j = min(starving, key=lambda j: j["seq"])
                if j["tree"]["admitted"] is not None:
                    return j
                blocked[0] = not self.try_admit(j["tree"])
                continue
            ready = [j for j in waiting if j["tree"]["admitted"] is not None]
            if ready:
                return min(ready, key=lambda j: (-j["prio"], -j["cached"], j["tree"]["admitted"], j["seq"]))
            if blocked[0] or not waiting:
                return None
            if not self.try_admit(min(waiting, key=lambda j: j["seq"])["tree"]):
                blocked[0] = True
                return None

    def pop(self, max_requests, max_tokens):
        now, out, tokens, blocked = self.pops, [], 0, [False]
        while len(out) < max_requests:
            j = self.pick(now, blocked)
            if j is None or (out and tokens + j["len"] > max_tokens):
                break
            tokens += j["len"]
            j["run"] = True
            out.append(j["id"])
        self.pops += 1
        return out

    def complete(self, ids):
        if len(set(ids)) != len(ids) or any(i not in self.jobs or not self.jobs[i]["run"] for i in ids):
            raise _core.JobError("not in flight")
        for i in ids:
            del self.jobs[i]

    def finish(self, tree_id):
        tree = self.current(tree_id)
        if tree is None:
            return
        if any(j["tree"] is tree and not j["run"] for j in self.jobs.values()):
            raise _core.InvalidArgumentError("waiting")
        tree["finished"], tree["admitted"] = True, None


push_op = st.tuples(
    st.just("push"),
    st.lists(
        st.tuples(st.integers(0, 10), st.integers(0, 3), st.integers(1, 40), st.integers(-1, 1), st.integers(0, 45)),
        min_size=1,
        max_size=3,
    ),
)
sched_ops = st.lists(
    st.one_of(
        push_op,
        st.tuples(st.just("pop"), st.tuples(st.integers(1, 4), st.integers(1, 100))),
        st.tuples(st.just("complete"), st.lists(st.integers(0, 10), max_size=3)),
        st.tuples(st.just("finish"), st.integers(0, 3)),
        st.tuples(st.just("set_tree_reserve"), st.integers(0, 100)),
    ),
    max_size=50,
)


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except _core.TurnloomError as e:
        return ("err", type(e).__name__)


@settings(max_examples=300, deadline=None)
@given(
    budget=st.one_of(st.none(), st.integers(0, 150)),
    limit=st.integers(0, 4),
    reserve=st.integers(0, 8),
    tree_reserve=st.one_of(st.just(0), st.integers(0, 100)),
    min_runnable=st.one_of(st.just(0), st.integers(0, 5)),
    floor_trees=st.one_of(st.none(), st.integers(0, 3)),
    ops=sched_ops,
)
def test_matches_python_reference(budget, limit, reserve, tree_reserve, min_runnable, floor_trees,
                                  ops):
    s = _core.Scheduler(budget, limit, reserve, tree_reserve, min_runnable, floor_trees)
    ref = RefScheduler(budget, limit, reserve, tree_reserve, min_runnable, floor_trees)
    popped: set[int] = set()
    for name, arg in ops:
        if name == "push":
            cols = [list(c) for c in zip(*arg)]
            got = outcome(s.push_many, cols[0], cols[1], cols[2], cols[3], cols[4])
            assert got == outcome(ref.push, *cols)
        elif name == "pop":
            batch = s.pop_batch(*arg)
            assert batch == ref.pop(*arg)
            assert len(batch) <= arg[0]
            assert not popped & set(batch)
        elif name == "complete":
            assert outcome(s.complete_many, arg) == outcome(ref.complete, arg)
        elif name == "set_tree_reserve":
            s.set_tree_reserve(arg)
            ref.tree_reserve = arg
        else:
            assert outcome(s.finish_tree, arg) == outcome(ref.finish, arg)
        stats = s.stats()
        assert len(s) == stats["waiting"] == sum(1 for j in ref.jobs.values() if not j["run"])
        assert stats["admitted_tokens"] == ref.admitted_tokens()
        assert stats["admitted_trees"] == ref.admitted_trees()
        assert stats["runnable"] == ref.runnable()
