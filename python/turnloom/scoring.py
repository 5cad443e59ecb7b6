"""Scorer interface: per-turn and per-conversation scores."""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

from turnloom import errorlog
from turnloom.records import ConversationState, TurnRecord

Score = dict[str, Any]
"""A scorer's result: metric name -> finite number, None, or a dict of the same
(see `checked_score`)."""


@runtime_checkable
class Scorer(Protocol):
    """Scores turns and/or whole conversations. Either method may return None
    (nothing to say). Exceptions are caught and recorded on the conversation."""

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> Score | None: ...

    def score_conversation(self, conversation: ConversationState) -> Score | None: ...


class ScoreError(ValueError):
    """A scorer returned something that is not a score; the message names the scorer
    and the metric."""


def checked_score(scorer: str, score: Any, labels: bool = False) -> Score | None:
    """`score` as it will be stored, or ScoreError naming `scorer`.

    A score is None (nothing to say) or a dict of metric name -> value, where a value is
    a finite number (bool, int, float, or a numpy scalar, stored as the Python number),
    None (no value), or a dict of the same (sub-metrics). Means are taken over numbers,
    so anything else (NaN, infinities, strings, lists, sets) is refused here rather than
    written as non-standard JSON or left out of the means without a word.

    With `labels` (judges: a pairwise judge names the participants it compared), strings
    and lists of strings are kept too, as labels that no mean includes."""
    if score is None:
        return None
    if not isinstance(score, dict):
        raise ScoreError(f"scorer {scorer!r} returned {type(score).__name__}, "
                         "expected a dict of metric -> number, or None")
    return _checked_metrics(scorer, score, (), labels)


def _checked_metrics(scorer: str, values: dict[Any, Any], path: tuple[str, ...],
                     labels: bool) -> Score:
    out: Score = {}
    for key, value in values.items():
        where = ".".join((*path, str(key)))
        if not isinstance(key, str):
            raise ScoreError(f"scorer {scorer!r}: metric name {key!r} is not a string")
        if isinstance(value, dict):
            out[key] = _checked_metrics(scorer, value, (*path, key), labels)
        elif labels and _is_label(value):
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
        else:
            out[key] = _checked_number(scorer, where, value)
    return out


def _is_label(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _checked_number(scorer: str, metric: str, value: Any) -> bool | int | float | None:
    if value is None or isinstance(value, (bool, int)):
        return value
    if type(value).__module__ == "numpy" and callable(getattr(value, "item", None)):
        value = value.item()  # numpy bool_, integer and floating scalars
        if isinstance(value, (bool, int)):
            return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ScoreError(f"scorer {scorer!r}: metric {metric!r} is {value}; "
                             "scores must be finite numbers")
        return value
    raise ScoreError(f"scorer {scorer!r}: metric {metric!r} is a {type(value).__name__} "
                     f"({value!r:.60}); scores must be numbers (or None for no value)")


class CheckedScorer:
    """A scorer whose results pass `checked_score`, and whose faults are recorded with
    their traceback in the run's error log before the engine records their message.
    Only the methods the scorer has are present, as the engine looks for them."""

    def __init__(self, name: str, scorer: Any) -> None:
        self.name = name
        self.scorer = scorer
        if callable(getattr(scorer, "score_turn", None)):
            self.score_turn = self._score_turn
        if callable(getattr(scorer, "score_conversation", None)):
            self.score_conversation = self._score_conversation

    def _score_turn(self, conversation: ConversationState, turn: TurnRecord) -> Score | None:
        try:
            return checked_score(self.name, self.scorer.score_turn(conversation, turn))
        except Exception as exc:
            errorlog.record(f"scorer {self.name!r} failed on turn {turn.turn}: "
                            f"{type(exc).__name__}: {exc}", exc,
                            errorlog.conversation_of(conversation))
            raise

    def _score_conversation(self, conversation: ConversationState) -> Score | None:
        try:
            return checked_score(self.name, self.scorer.score_conversation(conversation))
        except Exception as exc:
            errorlog.record(f"scorer {self.name!r} failed on the conversation: "
                            f"{type(exc).__name__}: {exc}", exc,
                            errorlog.conversation_of(conversation))
            raise
