"""Preference and RL datasets from sibling branches.

A scenario's ``[[branches]]`` forks every conversation at message `at_turn`
into `n` siblings that share the history before it (stored once in the forest)
and differ from that message on. Siblings are paired and scored by a metric:

- ``dpo-pairs``: chosen/rejected with the shared prompt, ties skipped; `span =
  "turn"` compares the fork turn's messages, `span = "rest"` whole continuations
  (multi-turn pairs).
- ``refuel-pairs``: REFUEL data (arXiv 2410.04612): two rollouts sharing the
  history before the speaker's turn h, finished to the same horizon, with their
  rewards and token ids, kept when their turn-h responses differ.

A metric is ``SCORER.KEY`` from the conversation's scores, or ``turn:SCORER.KEY``
from the fork turn's own scores.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Iterator, Literal, Mapping, Sequence

from turnloom.exporters.base import CommonSettings, TreeExporter
from turnloom.exporters.runinfo import Fork, load_chat_format
from turnloom.exporters.views import (
    ViewRenderer,
    check_trainable,
    speaker_of,
    transcript,
    view_messages,
)
from turnloom.records import ConversationRecord


class PairSettings(CommonSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    metric: str = ""  # required: SCORER.KEY or turn:SCORER.KEY
    fork_turn: int | None = None  # pair at this fork only (default: every fork)
    pairs: Literal["all", "best-worst"] = "all"  # every sibling pair, or the extremes only
    higher_is_better: bool = True


def metric_value(record: ConversationRecord, metric: str, turn: int) -> float | None:
    """The metric's number for a record (None when missing or not a number)."""
    if metric.startswith("turn:"):
        if turn >= len(record.turns):
            return None
        scores: Any = record.turns[turn].scores
        metric = metric[5:]
    else:
        scores = record.scores
    scorer, _, key = metric.partition(".")
    value = scores.get(scorer) if isinstance(scores, dict) else None
    if key:
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def sibling_groups(tree: Sequence[ConversationRecord], forks: Sequence[Fork],
                   k: int) -> Iterator[list[ConversationRecord]]:
    """Sets of records that share every choice before fork `k`, took a different
    choice at it, and the first choice (0) at every later fork: siblings whose
    histories are equal before fork k's turn."""
    fork = forks[k]
    groups: dict[tuple[int, ...], list[ConversationRecord]] = {}
    for r in tree:
        if len(r.turns) <= fork.turn or any(f.choice(r.branch) for f in forks[k + 1:]):
            continue
        groups.setdefault(tuple(f.choice(r.branch) for f in forks[:k]), []).append(r)
    for group in groups.values():
        if len(group) > 1:
            group.sort(key=lambda r: fork.choice(r.branch))
            _check_shared(group, fork.turn)
            yield group


def _check_shared(group: Sequence[ConversationRecord], turn: int) -> None:
    first = transcript(group[0])[:turn]
    for r in group[1:]:
        if transcript(r)[:turn] != first:
            raise ValueError(f"{r.conversation_id}: branches {group[0].branch} and {r.branch} "
                             f"differ before their fork at turn {turn}")


class PairExporter(TreeExporter):
    """Pairs of siblings at each fork (or the chosen one), scored by a metric."""

    Settings = PairSettings

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        if not self.settings.metric:  # type: ignore[attr-defined]
            raise ValueError(f'{self.name} needs a metric, e.g. metric = "length.words" '
                             'or "turn:length.words"')

    def prepare(self) -> None:
        s: PairSettings = self.settings  # type: ignore[assignment]
        if not self.info.forks:
            raise ValueError(f"{self.name}: the scenario has no [[branches]], so there are "
                             "no sibling branches to pair")
        self._fork_ids = [self.info.forks.index(self.info.fork_at(s.fork_turn))] \
            if s.fork_turn is not None else list(range(len(self.info.forks)))

    def tree_rows(self, tree: list[ConversationRecord]) -> Iterator[dict[str, Any]]:
        s: PairSettings = self.settings  # type: ignore[assignment]
        forks = self.info.forks_for(tree[0].seed)
        for k in self._fork_ids:
            turn = forks[k].turn
            for group in sibling_groups(tree, forks, k):
                scored = []
                for r in group:
                    value = metric_value(r, s.metric, turn)
                    if value is None:
                        self.stats["skipped: unscored"] += 1
                    else:
                        scored.append((value if s.higher_is_better else -value, r))
                if len(scored) < 2:
                    continue
                if s.pairs == "best-worst":
                    scored.sort(key=lambda x: x[0])
                    candidates = [(scored[-1], scored[0])]
                else:
                    candidates = list(itertools.combinations(scored, 2))
                for (va, a), (vb, b) in candidates:
                    row = self.pair(turn, a, b, va, vb)
                    if row is not None:
                        yield row

    def pair(self, turn: int, a: ConversationRecord, b: ConversationRecord,
             va: float, vb: float) -> dict[str, Any] | None:
        raise NotImplementedError

    def signed(self, value: float) -> float:
        s: PairSettings = self.settings  # type: ignore[assignment]
        return value if s.higher_is_better else -value


class DPOSettings(PairSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    span: Literal["turn", "rest"] = "turn"  # the fork turn's message, or all messages after it
    min_margin: float = 0.0  # pairs whose scores differ by this much or less are ties


class DPOPairs(PairExporter):
    """Chosen/rejected continuations of one prompt (TRL's conversational format)."""

    name = "dpo-pairs"
    Settings = DPOSettings
    columns: ClassVar[dict[str, str]] = {
        "id": "string", "conversation_id": "string", "index": "int", "fork_turn": "int",
        "participant": "string", "metric": "string", "prompt": "messages",
        "chosen": "messages", "rejected": "messages", "score_chosen": "float",
        "score_rejected": "float", "branch_chosen": "int", "branch_rejected": "int"}

    def pair(self, turn: int, a: ConversationRecord, b: ConversationRecord,
             va: float, vb: float) -> dict[str, Any] | None:
        s: DPOSettings = self.settings  # type: ignore[assignment]
        if abs(va - vb) <= s.min_margin:
            self.stats["skipped: tie"] += 1
            return None
        if vb > va:
            (va, a), (vb, b) = (vb, b), (va, a)
        speaker = speaker_of(transcript(a)[turn])
        end = None if s.span == "rest" else turn + 1

        def continuation(r: ConversationRecord) -> list[dict[str, Any]]:
            return view_messages(r, speaker, transcript(r)[turn:end], system=False)

        prompt = view_messages(a, speaker, transcript(a)[:turn])
        return {"id": f"{a.conversation_id}@{turn}:{a.branch}>{b.branch}",
                "conversation_id": a.conversation_id, "index": a.index, "fork_turn": turn,
                "participant": speaker, "metric": s.metric,
                "prompt": prompt,
                "chosen": continuation(a), "rejected": continuation(b),
                "score_chosen": self.signed(va), "score_rejected": self.signed(vb),
                "branch_chosen": a.branch, "branch_rejected": b.branch}


class RefuelSettings(PairSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tokenizer: str | None = None  # chat-format spec; default: the speaker's backend's
    horizon: int | None = None  # turns both rollouts must have (default: any, if equal)


class RefuelPairs(PairExporter):
    """Two rollouts from the same history before turn h, with rewards and token ids:
    ``prompt_ids`` (the shared history in the speaker's view, ending with the
    generation prefix) and each turn-h response's ids (text and end-of-turn)."""

    name = "refuel-pairs"
    Settings = RefuelSettings
    columns: ClassVar[dict[str, str]] = {
        "id": "string", "conversation_id": "string", "index": "int", "fork_turn": "int",
        "participant": "string", "metric": "string", "horizon": "int",
        "prompt": "messages", "prompt_ids": "ids",
        "response_a": "string", "response_b": "string",
        "response_a_ids": "ids", "response_b_ids": "ids",
        "trajectory_a": "messages", "trajectory_b": "messages",
        "reward_a": "float", "reward_b": "float", "reward_diff": "float",
        "branch_a": "int", "branch_b": "int"}

    def prepare(self) -> None:
        super().prepare()
        self._renderers: dict[str, ViewRenderer] = {}

    def _renderer(self, record: ConversationRecord, speaker: str) -> ViewRenderer:
        renderer = self._renderers.get(speaker)
        if renderer is None:
            check_trainable(record, speaker)
            s: RefuelSettings = self.settings  # type: ignore[assignment]
            spec = s.tokenizer or self.info.tokenizer_spec(speaker)
            renderer = self._renderers[speaker] = ViewRenderer(load_chat_format(spec))
        return renderer

    def pair(self, turn: int, a: ConversationRecord, b: ConversationRecord,
             va: float, vb: float) -> dict[str, Any] | None:
        horizon = self.settings.horizon  # type: ignore[attr-defined]
        if len(a.turns) != len(b.turns) or (horizon is not None and len(a.turns) != horizon):
            self.stats["skipped: not finished to the same horizon"] += 1
            return None
        ta, tb = transcript(a), transcript(b)
        if ta[turn].content == tb[turn].content:
            self.stats["skipped: same response"] += 1
            return None
        speaker = speaker_of(ta[turn])
        renderer = self._renderer(a, speaker)
        prompt = view_messages(a, speaker, ta[:turn])

        def trajectory(msgs: Sequence[Any]) -> list[dict[str, Any]]:
            return view_messages(a, speaker, msgs[turn:], system=False)

        ra, rb = self.signed(va), self.signed(vb)
        return {"id": f"{a.conversation_id}@{turn}:{a.branch},{b.branch}",
                "conversation_id": a.conversation_id, "index": a.index, "fork_turn": turn,
                "participant": speaker, "metric": self.settings.metric,  # type: ignore[attr-defined]
                "horizon": len(a.turns),
                "prompt": prompt,
                "prompt_ids": renderer.prompt_ids(prompt),
                "response_a": ta[turn].content, "response_b": tb[turn].content,
                "response_a_ids": renderer.response_ids(ta[turn].content),
                "response_b_ids": renderer.response_ids(tb[turn].content),
                "trajectory_a": trajectory(ta), "trajectory_b": trajectory(tb),
                "reward_a": ra, "reward_b": rb, "reward_diff": ra - rb,
                "branch_a": a.branch, "branch_b": b.branch}
