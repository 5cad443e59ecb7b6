"""Reward and pass^k as tau-bench defines them (sierra-research/tau-bench).

Reward (``Env.calculate_reward``): 1 when the final database hashes the same as the
database the gold actions produce, AND every required output appears in one of the
agent's messages to the customer; else 0. The hash is SHA-256 of ``str()`` of the data
made hashable (dicts as key-sorted tuples of pairs, lists as tuples), and an output is
found when ``output.lower()`` is a substring of ``message.lower()`` with commas removed
(so "1,200" in a message matches "1200"; the output itself is not stripped of commas).

pass^k (``display_metrics`` in run.py, from arXiv 2406.12045): with n trials per task
and c successes (reward within 1e-6 of 1) of a task, the task's pass^k is
C(c, k) / C(n, k); the result is its mean over tasks, for every k from 1 to n.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import comb
from typing import Any


def to_hashable(item: Any) -> Any:
    """Dicts as key-sorted tuples of pairs, lists as tuples, sets as sorted tuples."""
    if isinstance(item, dict):
        return tuple((key, to_hashable(value)) for key, value in sorted(item.items()))
    if isinstance(item, list):
        return tuple(to_hashable(x) for x in item)
    if isinstance(item, set):
        return tuple(sorted(to_hashable(x) for x in item))
    return item


def data_hash(data: Any) -> str:
    return hashlib.sha256(str(to_hashable(data)).encode("utf-8")).hexdigest()


def output_found(output: str, messages: Iterable[str]) -> bool:
    wanted = output.lower()
    return any(wanted in message.lower().replace(",", "") for message in messages)


@dataclass(frozen=True)
class RewardResult:
    reward: float
    state_matches: bool
    outputs: dict[str, bool] = field(default_factory=dict)


def reward(final_state: Any, expected_state: Any, outputs: Sequence[str],
           agent_messages: Sequence[str]) -> RewardResult:
    """tau-bench's reward of one conversation."""
    matches = data_hash(final_state) == data_hash(expected_state)
    found = {output: output_found(output, agent_messages) for output in outputs}
    ok = matches and all(found.values())
    return RewardResult(1.0 if ok else 0.0, matches, found)


def is_success(value: float) -> bool:
    return 1 - 1e-6 <= value <= 1 + 1e-6


def pass_hat_k(results: Iterable[tuple[str, int, float]]) -> dict[int, float]:
    """pass^k for k = 1..n from (task id, trial, reward) triples. Every task must have
    the same n trials (the estimator assumes it); a trial given twice is an error."""
    seen: dict[str, set[int]] = {}
    successes: dict[str, int] = {}
    for task, trial, value in results:
        trials = seen.setdefault(task, set())
        if trial in trials:
            raise ValueError(f"task {task!r}: trial {trial} is given twice")
        trials.add(trial)
        successes[task] = successes.get(task, 0) + int(is_success(value))
    if not seen:
        raise ValueError("pass^k needs at least one result")
    counts = {len(t) for t in seen.values()}
    if len(counts) != 1:
        short = min(seen, key=lambda t: len(seen[t]))
        raise ValueError(f"every task needs the same number of trials; task {short!r} has "
                         f"{len(seen[short])}, others up to {max(counts)}")
    n = counts.pop()
    return {k: sum(comb(c, k) for c in successes.values()) / comb(n, k) / len(successes)
            for k in range(1, n + 1)}


def pass_hat_k_from_records(records: Iterable[Mapping[str, Any]],
                            scorer: str = "tau-reward") -> dict[int, float]:
    """pass^k from exported conversation records (conversations.jsonl rows) scored by the
    reward scorer registered as `scorer`; only main lines (branch 0) are trials."""
    triples = []
    for record in records:
        if record.get("branch", 0) != 0:
            continue
        score = record.get("scores", {}).get(scorer)
        if not score:
            raise ValueError(f"conversation {record.get('conversation_id')!r} has no "
                             f"{scorer!r} score")
        triples.append((str(score["task"]), int(score["trial"]), float(score["reward"])))
    return pass_hat_k(triples)
