"""Built-in scorers: message length, stop reason and a reward model (``reward-model``)."""

from __future__ import annotations

from typing import Any, Mapping

from turnloom.builtin.reward_model import RewardModelScorer
from turnloom.hookspecs import Register, hookimpl
from turnloom.records import ConversationState, TurnRecord
from turnloom.scoring import Score


class LengthScorer:
    """Words and tokens per turn; totals and means per conversation."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        if settings:
            raise ValueError(f"the length scorer takes no settings (got {sorted(settings)})")

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> Score:
        return {"words": len(turn.text.split()), "tokens": turn.completion_tokens}

    def score_conversation(self, conversation: ConversationState) -> Score:
        turns = conversation.turns
        words = sum(len(t.text.split()) for t in turns)
        tokens = sum(t.completion_tokens for t in turns)
        n = len(turns)
        return {"turns": n, "words": words, "tokens": tokens,
                "mean_words": words / n if n else 0.0}


class StopReasonScorer:
    """Why the conversation ended, and whether it ended before the turn limit."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        if settings:
            raise ValueError(f"the stop-reason scorer takes no settings (got {sorted(settings)})")

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> None:
        return None

    def score_conversation(self, conversation: ConversationState) -> Score:
        # The reason itself is the record's `stop_reason`; scores are numbers.
        reason = conversation.stop_reason or ""
        return {"early": int(reason not in ("max_turns", ""))}


@hookimpl
def register_scorers(register: Register) -> None:
    register("length", LengthScorer)
    register("stop-reason", StopReasonScorer)
    register("reward-model", RewardModelScorer)
