"""What a report shows, gathered in one streaming pass over a run directory:
per-turn score curves, length distributions, stop reasons, failures by cause,
and a few whole conversation trees to browse. Memory holds running sums,
histograms and the sampled trees only."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from turnloom import rundir
from turnloom.exporters.run import read_records
from turnloom.exporters.runinfo import Fork, RunInfo
from turnloom.records import ConversationRecord


def numeric_scores(scores: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """``SCORER.KEY`` -> number for every numeric leaf of a scores mapping."""
    for scorer, values in scores.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    yield f"{scorer}.{key}", float(value)
        elif isinstance(values, (int, float)):
            yield scorer, float(values)


_ERROR_TYPE = re.compile(r"\b([A-Z][A-Za-z]*(?:Error|Exception|Timeout))\b")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


def failure_cause(error: str) -> str:
    """A failure message reduced to its kind: where it happened and the error type,
    with names and numbers blanked, so that like failures count together."""
    head = error.split(":", 1)[0]
    kind = _ERROR_TYPE.search(error)
    cause = _QUOTED.sub("…", head).strip()
    return f"{cause}: {kind.group(1)}" if kind else cause


@dataclass
class Mean:
    total: float = 0.0
    n: int = 0

    def add(self, x: float) -> None:
        self.total += x
        self.n += 1

    @property
    def value(self) -> float:
        return self.total / self.n if self.n else float("nan")


@dataclass
class RunData:
    run_dir: Path
    manifest: dict[str, Any]
    summary: dict[str, Any]
    info: RunInfo
    records: int = 0
    trees: int = 0
    # (metric, participant) -> turn index -> mean
    turn_curves: dict[tuple[str, str], dict[int, Mean]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Mean)))
    conversation_scores: dict[str, Mean] = field(default_factory=lambda: defaultdict(Mean))
    turns_per_conversation: Counter[int] = field(default_factory=Counter)
    # participant -> completion tokens per turn (histogram)
    tokens_per_turn: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    words_per_turn: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    stop_reasons: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    failure_examples: dict[str, str] = field(default_factory=dict)
    sample: list[list[ConversationRecord]] = field(default_factory=list)
    backends_used: dict[str, str | None] = field(default_factory=dict)  # from the records

    def participant_label(self, name: str) -> str:
        """The participant with the model it spoke through, e.g. ``tutor (smollm2-135m)``."""
        backend = (self.backends_used.get(name) if self.backends_used
                   else self.info.backend_of(name))
        spec = self.info.backends.get(backend or "", {})
        p = self.info.participants.get(name, {})
        if backend is None or spec == {}:
            return f"{name} ({p.get('agent', '?')})"
        model = spec.get("settings", {}).get("model") or spec.get("type", "?")
        return f"{name} ({model})"


def load_run(run_dir: str | Path, sample: int = 20) -> RunData:
    """Read a finished run directory once; keep the first `sample` trees whole."""
    run_dir = Path(run_dir)
    manifest = rundir.read_manifest(run_dir)
    summary_file = run_dir / rundir.SUMMARY
    if not summary_file.is_file():
        raise rundir.RunDirError(f"{run_dir} has no {rundir.SUMMARY}: the run is not finished "
                                 f"(`turnloom resume {run_dir}` finishes it)")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    data = RunData(run_dir, manifest, summary, RunInfo(manifest.get("scenario", {}),
                                                       str(run_dir / rundir.MANIFEST)))
    tree: list[ConversationRecord] = []
    for record in read_records(run_dir):
        if tree and tree[0].index != record.index:
            _end_tree(data, tree, sample)
            tree = []
        tree.append(record)
        _add(data, record)
    if tree:
        _end_tree(data, tree, sample)
    return data


def _end_tree(data: RunData, tree: list[ConversationRecord], sample: int) -> None:
    data.trees += 1
    if len(data.sample) < sample:
        data.sample.append(tree)


def _add(data: RunData, r: ConversationRecord) -> None:
    data.records += 1
    if not data.backends_used:
        data.backends_used = {n: p.get("backend") for n, p in r.participants.items()}
    data.stop_reasons[r.stop_reason] += 1
    data.turns_per_conversation[len(r.turns)] += 1
    for key, value in numeric_scores(r.scores):
        data.conversation_scores[key].add(value)
    messages = r.messages[len(r.messages) - len(r.turns):]
    for t, (turn, message) in enumerate(zip(r.turns, messages)):
        # Turns before a fork are shared by every branch: count them once, on branch 0.
        if r.branch and t < _fork_of(data.info.forks_for(r.seed), r.branch):
            continue
        for key, value in numeric_scores(turn.scores):
            data.turn_curves[(key, turn.participant)][t].add(value)
        if turn.completion_tokens:
            data.tokens_per_turn[turn.participant][turn.completion_tokens] += 1
        data.words_per_turn[turn.participant][len(message.content.split())] += 1
    if r.stop_reason == "error":
        cause = failure_cause(r.errors[0]) if r.errors else "no error recorded"
        data.failures[cause] += 1
        data.failure_examples.setdefault(cause, r.errors[0] if r.errors else "")


def _fork_of(forks: tuple[Fork, ...], branch: int) -> int:
    """The turn at which `branch` left its parent branch (its last non-zero choice)."""
    turn = 0
    for f in forks:
        if f.choice(branch):
            turn = f.turn
    return turn
