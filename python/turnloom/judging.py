"""Judge interface: LLM-judged scores, generated through the engine like any turn.

A *judge* reads a finished conversation (one branch) and asks a model one or
more questions about it. The engine renders each `JudgeCall` in the judge
backend's chat format, batches it with the run's other requests, hands the
output to `parse`, retries a call whose output does not parse once (with a new
seed), and then calls `score` with every call's verdict: the parsed value, or
None where the output stayed unparseable or the backend failed. The judge's
score is stored under its scenario name, with ``unparseable`` (the number of
calls that gave None) added, before the conversation's end is logged, so a
resumed run judges a conversation exactly once.

Scenario::

    [[judges]]
    name = "quality"          # the score key (unique among scorers and judges)
    judge = "single-score"    # a registered judges plugin
    backend = "local"         # optional when the scenario has one backend
    sampling = { max_new_tokens = 96, temperature = 0.0 }
    settings = { participant = "assistant" }
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec

from turnloom.records import ConversationState
from turnloom.scoring import Score


class JudgeCall(msgspec.Struct, frozen=True, kw_only=True):
    """One question to the judge model.

    `key` names the call among this judge's calls for one conversation (its
    verdict is found under it); `messages` are (role, text) pairs with role
    "system", "user" or "assistant", rendered with the backend's chat format
    and followed by the assistant generation prefix; `meta` is for the judge
    itself (e.g. which candidate was shown first) and must be JSON-serialisable.
    """

    key: str
    messages: tuple[tuple[str, str], ...]
    meta: dict[str, Any] = {}


class Unparseable(ValueError):
    """Raised by `Judge.parse` when the output does not follow the asked format."""


@runtime_checkable
class Judge(Protocol):
    """Asks a model about a finished conversation and turns its verdicts into a score."""

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        """The questions for this conversation (an empty list: nothing to judge)."""

    def parse(self, call: JudgeCall, text: str) -> Any:
        """The verdict in the model's output (JSON-serialisable); raise ValueError
        (e.g. `Unparseable`) when it does not follow the format."""

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        """The conversation's score from its verdicts (`verdicts[call.key]`, None
        for a call that stayed unparseable or failed)."""
