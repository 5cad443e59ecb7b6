"""Scorer interface: per-turn and per-conversation scores."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from turnloom.records import ConversationState, TurnRecord

Score = dict[str, Any]
"""A scorer's result: metric name -> JSON value (numbers for anything aggregated)."""


@runtime_checkable
class Scorer(Protocol):
    """Scores turns and/or whole conversations. Either method may return None
    (nothing to say). Exceptions are caught and recorded on the conversation."""

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> Score | None: ...

    def score_conversation(self, conversation: ConversationState) -> Score | None: ...
