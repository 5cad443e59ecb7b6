"""Preference and RL datasets from sibling branches.

A scenario's ``[[branches]]`` forks every conversation at message `at_turn`
into `n` siblings that share the history before it (stored once in the forest)
and differ from that message on. Siblings are paired and scored by a metric:

- ``dpo-pairs``: chosen/rejected with the shared prompt, ties skipped; `span =
  "turn"` compares the fork turn's messages, `span = "rest"` whole continuations
  (multi-turn pairs).
- ``refuel-pairs``: REFUEL data (arXiv 2410.04612): two rollouts sharing the
  history before the speaker's turn h, finished to the same horizon, with their
  rewards and token ids, kept when their turn-h responses differ. `horizon` is
  the paper's H: it counts the fork speaker's turns (assistant turns), not
  messages; see `refuel_length` for how h and the rollout length are drawn.

A metric is ``SCORER.KEY`` from the conversation's scores, or ``turn:SCORER.KEY``
from the fork turn's own scores.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
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
from turnloom.seeds import derive


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
    # H, in the fork speaker's turns: each rollout is cut after that speaker's H-th
    # message (default: none; both rollouts are kept whole and must be equally long)
    horizon: int | None = None
    # "uniform": the paper's Algorithm 1 (h ~ U{0..H-1}, both rollouts run to H);
    # "official": the released code (length L ~ U{0..H-1}, h ~ U{0..L}, rollouts cut
    # after turn L, rewarded there)
    h_sampling: Literal["uniform", "official"] = "uniform"


def official_joint(horizon: int) -> dict[tuple[int, int], Fraction]:
    """P(h, L) of REFUEL's released generation code (0-based speaker turns): the
    reward turn L is uniform on 0..H-1, then the fork turn h uniform on 0..L."""
    return {(h, last): Fraction(1, horizon * (last + 1))
            for last in range(horizon) for h in range(last + 1)}


def refuel_length(seed: int, h: int, horizon: int, mode: str,
                  drawn: bool) -> int | None:
    """The 0-based speaker turn whose reward a pair carries (its rollouts are cut
    after it), for a conversation forked at speaker turn `h`; None when the
    conversation is not used.

    "uniform" (the paper's Algorithm 1): always H - 1. "official": the run's fork
    turn was drawn uniformly over 0..H-1 (`to_turn`), while the released code
    draws L uniformly, then h uniformly on 0..L, so h has P(h) = (1/H) sum over
    L >= h of 1/(L+1). A conversation is kept with probability P(h) / P(0)
    (rejection: the kept h follow the code's law) and L is drawn from P(L | h),
    proportional to 1/(L+1) on h..H-1. With a fork at a fixed turn (`drawn`
    False) only L | h is drawn. Both draws are seeded by the conversation."""
    if mode == "uniform":
        return horizon - 1
    weights = [Fraction(1, last + 1) for last in range(h, horizon)]
    p_h = sum(weights, Fraction(0))
    u_keep = derive(seed, "refuel", "keep") / 2.0 ** 63
    if drawn and u_keep >= p_h / sum((Fraction(1, k + 1) for k in range(horizon)), Fraction(0)):
        return None
    u_len = Fraction(derive(seed, "refuel", "length"), 2 ** 63) * p_h
    acc = Fraction(0)
    for last, w in zip(range(h, horizon), weights):
        acc += w
        if u_len < acc:
            return last
    return horizon - 1


def speaker_turn_ends(messages: Sequence[Any], speaker: str) -> list[int]:
    """Message indices of the speaker's messages, in order."""
    return [i for i, m in enumerate(messages) if m.name == speaker]


class RefuelPairs(PairExporter):
    """Two rollouts from the same history before turn h, with rewards and token ids:
    ``prompt_ids`` (the shared history in the speaker's view, ending with the
    generation prefix) and each turn-h response's ids (text and end-of-turn).
    With a `horizon`, ``h`` is the fork's 0-based speaker turn and ``horizon``
    the speaker turns in each (cut) rollout; a ``turn:`` metric is read at the
    last kept turn (the reward of the dialogue so far, as REFUEL's reward model
    scores it), a conversation metric only when nothing was cut."""

    name = "refuel-pairs"
    Settings = RefuelSettings
    columns: ClassVar[dict[str, str]] = {
        "id": "string", "conversation_id": "string", "index": "int", "fork_turn": "int",
        "participant": "string", "metric": "string", "h": "int", "horizon": "int",
        "prompt": "messages", "prompt_ids": "ids",
        "response_a": "string", "response_b": "string",
        "response_a_ids": "ids", "response_b_ids": "ids",
        "trajectory_a": "messages", "trajectory_b": "messages",
        "reward_a": "float", "reward_b": "float", "reward_diff": "float",
        "branch_a": "int", "branch_b": "int"}

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        s: RefuelSettings = self.settings  # type: ignore[assignment]
        if s.horizon is not None and s.horizon < 1:
            raise ValueError(f"{self.name}: horizon must be at least 1 (speaker turns), "
                             f"not {s.horizon}")
        if s.h_sampling == "official" and s.horizon is None:
            raise ValueError(f'{self.name}: h_sampling = "official" needs a horizon')

    def prepare(self) -> None:
        super().prepare()
        self._renderers: dict[str, ViewRenderer] = {}
        branches = self.info.scenario.get("branches", [])
        self._drawn = len(branches) == 1 and branches[0].get("to_turn") is not None

    def _renderer(self, record: ConversationRecord, speaker: str) -> ViewRenderer:
        renderer = self._renderers.get(speaker)
        if renderer is None:
            check_trainable(record, speaker)
            s: RefuelSettings = self.settings  # type: ignore[assignment]
            spec = s.tokenizer or self.info.tokenizer_spec(speaker)
            renderer = self._renderers[speaker] = ViewRenderer(load_chat_format(spec))
        return renderer

    def _cut(self, turn: int, a: ConversationRecord, b: ConversationRecord,
             speaker: str) -> tuple[int, int, int] | str:
        """(h, speaker turns kept, messages kept) or why the pair is skipped."""
        s: RefuelSettings = self.settings  # type: ignore[assignment]
        ta, tb = transcript(a), transcript(b)
        h = len(speaker_turn_ends(ta[:turn], speaker))
        if s.horizon is None:
            if len(ta) != len(tb):
                return "not finished to the same horizon"
            return h, len(speaker_turn_ends(ta, speaker)), len(ta)
        if h >= s.horizon:
            return "fork at or after the horizon"
        last = refuel_length(a.seed, h, s.horizon, s.h_sampling, self._drawn)
        if last is None:
            return "not drawn (official h distribution)"
        ends_a, ends_b = speaker_turn_ends(ta, speaker), speaker_turn_ends(tb, speaker)
        if len(ends_a) <= last or len(ends_b) <= last or ends_a[last] != ends_b[last]:
            return "not finished to the same horizon"
        return h, last + 1, ends_a[last] + 1

    def _reward(self, r: ConversationRecord, end: int) -> float | None:
        metric: str = self.settings.metric  # type: ignore[attr-defined]
        if metric.startswith("turn:"):
            value = metric_value(r, metric, end - 1)
        elif end == len(r.turns):
            value = metric_value(r, metric, 0)
        else:
            return None
        return None if value is None else self.signed(value)

    def pair(self, turn: int, a: ConversationRecord, b: ConversationRecord,
             va: float, vb: float) -> dict[str, Any] | None:
        ta, tb = transcript(a), transcript(b)
        speaker = speaker_of(ta[turn])
        cut = self._cut(turn, a, b, speaker)
        if isinstance(cut, str):
            self.stats[f"skipped: {cut}"] += 1
            return None
        h, kept_turns, end = cut
        if ta[turn].content == tb[turn].content:
            self.stats["skipped: same response"] += 1
            return None
        ra, rb = self._reward(a, end), self._reward(b, end)
        if ra is None or rb is None:
            self.stats["skipped: no reward at the horizon (use a turn: metric)"] += 1
            return None
        renderer = self._renderer(a, speaker)
        prompt = view_messages(a, speaker, ta[:turn])

        def trajectory(msgs: Sequence[Any]) -> list[dict[str, Any]]:
            return view_messages(a, speaker, msgs[turn:end], system=False)

        return {"id": f"{a.conversation_id}@{turn}:{a.branch},{b.branch}",
                "conversation_id": a.conversation_id, "index": a.index, "fork_turn": turn,
                "participant": speaker, "metric": self.settings.metric,  # type: ignore[attr-defined]
                "h": h, "horizon": kept_turns,
                "prompt": prompt,
                "prompt_ids": renderer.prompt_ids(prompt),
                "response_a": ta[turn].content, "response_b": tb[turn].content,
                "response_a_ids": renderer.response_ids(ta[turn].content),
                "response_b_ids": renderer.response_ids(tb[turn].content),
                "trajectory_a": trajectory(ta), "trajectory_b": trajectory(tb),
                "reward_a": ra, "reward_b": rb, "reward_diff": ra - rb,
                "branch_a": a.branch, "branch_b": b.branch}
