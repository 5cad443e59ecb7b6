"""turnloom.admission: the prior size of a conversation tree worked out from a
scenario, the running estimate from finished trees, and the engine wiring it
into its schedulers when a backend has a bounded cache."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import turnloom
from turnloom import Scenario, _core
from turnloom.admission import (
    DEFAULT_SYSTEM_TOKENS,
    EXPECTED_MESSAGE_CAP,
    TreeSizeEstimator,
    estimator_for,
    expected_message_tokens,
    floor_trees,
    mean_branches,
    prior_tree_tokens,
    scenario_branches,
    scenario_prior,
    system_prompt_tokens,
)
from turnloom.plugins import get_plugin_manager
from turnloom.runtime import load_chat_format


def scenario(branches: list[dict[str, Any]] | None = None, max_turns: int = 4,
             cache: int | None = None, profiles: int = 2) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "a", "conversations": 60, "max_turns": max_turns, "seed": 5,
                "batch_size": 2, "max_inflight": 1},
        "backends": {"sim": {"type": "scripted", "cache_capacity_tokens": cache,
                             "lines": ["Sure, here is a short answer.", "Could you tell me more?",
                                       "Let me think.", "Three ideas: a list, a plan and a check."]}},
        "participants": [
            {"name": "user", "agent": "user-simulator", "system_prompt": "You are {profile.name}.",
             "sampler": "inline",
             "sampler_settings": {"profiles": [{"name": f"N{i}"} for i in range(profiles)]}},
            {"name": "assistant", "agent": "assistant", "system_prompt": "Be brief.",
             "sampling": {"max_new_tokens": 64}},
        ],
        "branches": branches or [],
    })


def test_expected_message_length_is_capped():
    assert expected_message_tokens(64) == 64
    assert expected_message_tokens(4096) == EXPECTED_MESSAGE_CAP


def test_prior_without_forks_is_a_sum():
    assert prior_tree_tokens(300, [10, 20, 30], {}) == 360


def test_prior_multiplies_everything_after_a_fork():
    # trunk: messages 0 and 1; from message 2 on, 3 branches
    assert prior_tree_tokens(100, [10, 20, 30, 40], {2: 3}) == 100 + 10 + 20 + 3 * (30 + 40)
    # a second fork at message 3 splits each of the 3 branches in 2
    assert prior_tree_tokens(100, [10, 20, 30, 40], {2: 3, 3: 2}) == 100 + 10 + 20 + 3 * 30 + 6 * 40


def test_scenario_prior_counts_every_message_in_every_view():
    # user speaks messages 0 and 2 (max_new_tokens 128), assistant 1 and 3 (64)
    per_view = 128 + 64 + 128 + 64
    assert scenario_prior(scenario(), [7, 5]) == 12 + 2 * per_view
    assert scenario_prior(scenario(), [7]) == 7 + per_view


def test_scenario_prior_with_branches():
    forked = scenario([{"at_turn": 1, "n": 4}])
    assert scenario_prior(forked, [7]) == 7 + 128 + 4 * (64 + 128 + 64)
    # A fork turn drawn per conversation is taken at its earliest candidate: the largest tree.
    drawn = scenario([{"at_turn": 1, "n": 4, "to_turn": 3}])
    assert scenario_prior(drawn, [7]) == scenario_prior(forked, [7])


def test_mean_branches_over_a_backend_s_turns():
    assert mean_branches({}, range(8)) == 1.0
    assert mean_branches({2: 4}, range(8)) == (2 + 6 * 4) / 8
    # Only the given turns count; a second fork multiplies the first's branches.
    assert mean_branches({1: 3, 4: 2}, [0, 2, 4, 6]) == (1 + 3 + 6 + 6) / 4
    assert mean_branches({5: 3}, [0, 1]) == 1.0  # a fork after the backend's last turn
    assert mean_branches({0: 2}, []) == 1.0


def test_floor_trees_fills_the_lanes_once_trees_branch():
    assert floor_trees(64, 3.25) == 20  # ceil(64 / 3.25)
    assert floor_trees(64, 1.0) == 64  # no forks: one job per tree, as min_runnable counts
    assert floor_trees(2, 8.0) == 1  # never below one tree
    assert floor_trees(0, 2.0) is None  # no floor, no cap


def test_scenario_branches_counts_the_views_turns():
    views = [SimpleNamespace(index=0), SimpleNamespace(index=1)]
    forked = scenario([{"at_turn": 1, "n": 4}], max_turns=8)
    assert scenario_branches(forked, views) == (1 + 7 * 4) / 8
    # The assistant speaks messages 1, 3, 5, 7: all after the fork.
    assert scenario_branches(forked, views[1:]) == 4.0
    assert scenario_branches(scenario(), views) == 1.0


def test_system_prompt_tokens_uses_the_chat_format():
    fmt = load_chat_format("bytes")
    view = SimpleNamespace(spec=SimpleNamespace(system_prompt="Be brief."), fmt=fmt)
    assert system_prompt_tokens(view) == len(fmt.segments(["system"], ["Be brief."])[0]) > 9
    view.spec.system_prompt = None
    assert system_prompt_tokens(view) == DEFAULT_SYSTEM_TOKENS


def test_estimator_is_a_running_mean_with_the_prior_as_one_tree():
    est = TreeSizeEstimator(1000, views=[0, 2])
    assert (est.estimate, est.observed, est.views) == (1000, 0, [0, 2])
    assert est.observe(400) == 700
    assert est.observe(401) == math.ceil(1801 / 3) == 601  # rounded up: never under-reserve
    assert est.observed == 2
    heavy = TreeSizeEstimator(1000, prior_weight=3)
    assert heavy.observe(200) == 800
    with pytest.raises(ValueError):
        TreeSizeEstimator(-1)
    with pytest.raises(ValueError):
        TreeSizeEstimator(10, prior_weight=0)


def test_estimator_for_a_backend():
    fmt = load_chat_format("bytes")
    views = [SimpleNamespace(index=i, spec=SimpleNamespace(system_prompt="hi"), fmt=fmt) for i in (0, 1)]
    est = estimator_for(scenario(), views)
    assert est is not None and est.views == [0, 1]
    assert est.estimate == scenario_prior(scenario(), [len(fmt.segments(["system"], ["hi"])[0])] * 2)
    assert estimator_for(scenario(), []) is None  # a judges-only backend reserves nothing


# -- the engine ---------------------------------------------------------------------------


class RecordingScheduler:
    """A Scheduler that records how the engine builds and feeds it. With `old`
    it is built as before tree reserves and the floor: Scheduler(token_budget=cap)."""

    made: list[RecordingScheduler] = []

    def __init__(self, old: bool, real: Any, **kwargs: Any) -> None:
        self.kwargs, self.old = kwargs, old
        self.inner = real(token_budget=kwargs.get("token_budget")) if old else real(**kwargs)
        self.reserves: list[int] = []
        self.peak_trees = 0
        RecordingScheduler.made.append(self)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def pop_batch(self, max_requests: int, max_tokens: int) -> list[int]:
        batch = self.inner.pop_batch(max_requests, max_tokens)
        self.peak_trees = max(self.peak_trees, self.inner.stats()["admitted_trees"])
        return batch

    def set_tree_reserve(self, tokens: int) -> None:
        self.reserves.append(tokens)
        if not self.old:
            self.inner.set_tree_reserve(tokens)


def run_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s: Scenario,
                 old: bool) -> tuple[dict[str, Any], RecordingScheduler]:
    real = _core.Scheduler
    RecordingScheduler.made = []
    with monkeypatch.context() as m:
        m.setattr(_core, "Scheduler", lambda **kw: RecordingScheduler(old, real, **kw))
        result = turnloom.run(s, out=tmp_path / ("old" if old else "new"), progress=False,
                              plugin_manager=get_plugin_manager(autoload=False))
    (sched,) = RecordingScheduler.made
    return result.summary, sched


def test_engine_reserves_tree_sizes_under_a_bounded_cache(tmp_path, monkeypatch):
    # 60 best-of-4 conversations with distinct system prompts; the cache holds a few trees.
    s = scenario([{"at_turn": 1, "n": 4}], max_turns=8, cache=8000, profiles=500)
    new, sched = run_recorded(tmp_path, monkeypatch, s, old=False)
    old, old_sched = run_recorded(tmp_path, monkeypatch, s, old=True)

    fmt = load_chat_format("bytes")
    prior = scenario_prior(s, [len(fmt.segments(["system"], [p.system_prompt])[0])
                               for p in s.participants])
    # Two lanes (batch 2 x 1 in flight); a tree averages 29 / 8 branches, so one tree fills them.
    assert sched.kwargs == {"token_budget": 8000, "tree_reserve": prior, "min_runnable": 2 * 1,
                            "floor_trees": 1}
    # Every finished tree updated the reserve; the scripted lines are far shorter than
    # max_new_tokens, so the estimate falls from the upper-bound prior.
    assert len(sched.reserves) == 60
    assert prior > sched.reserves[0] > sched.reserves[-1] > 0
    # Reserving trees' final sizes admits fewer at once, and the cache does no worse.
    assert sched.peak_trees < old_sched.peak_trees
    assert new["cache"]["hit_rate"] >= old["cache"]["hit_rate"]
    assert new["cache"]["prompt_tokens"] == old["cache"]["prompt_tokens"]
    assert new["conversations"] == old["conversations"] == 60


def test_engine_without_a_cache_capacity_keeps_the_plain_scheduler(tmp_path, monkeypatch):
    _, sched = run_recorded(tmp_path, monkeypatch, scenario(), old=False)
    assert sched.kwargs == {} and sched.reserves == []
