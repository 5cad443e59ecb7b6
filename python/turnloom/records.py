"""Records: what a turn and a conversation look like to hooks, scorers and files."""

from __future__ import annotations

from typing import Any

import msgspec


class TurnRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One completed turn, as written to the write-ahead log and shown to hooks."""

    conversation_id: str
    branch: int  # 0 for the main line; n > 0 for the n-th extra branch of a tree
    turn: int  # 0-based index of this message in the conversation (system prompts excluded)
    participant: str  # participant name from the scenario
    role: str  # canonical role of the message ("user", "assistant", "environment", ...)
    text: str
    node: int  # forest node id (meaningful only inside the running process)
    parent_turn: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"
    seed: int | None = None
    meta: dict[str, Any] = {}


class ConversationState:
    """A conversation in progress, as hooks, agents and scorers see it.

    `messages` are (participant name, role, text) in order; `meta` is free-form
    and JSON-serialisable (plugins put their state there so a resumed run sees it);
    `profiles` holds what samplers drew for each participant.
    """

    __slots__ = ("conversation_id", "index", "branch", "seed", "messages", "turns", "meta",
                 "profiles", "stop_reason", "scores", "errors")

    def __init__(self, conversation_id: str, index: int, seed: int, branch: int = 0) -> None:
        self.conversation_id = conversation_id
        self.index = index
        self.branch = branch
        self.seed = seed
        self.messages: list[tuple[str, str, str]] = []
        self.turns: list[TurnRecord] = []
        self.meta: dict[str, Any] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.stop_reason: str | None = None
        self.scores: dict[str, Any] = {}
        self.errors: list[str] = []

    @property
    def last(self) -> TurnRecord | None:
        return self.turns[-1] if self.turns else None

    def turns_of(self, participant: str) -> list[TurnRecord]:
        return [t for t in self.turns if t.participant == participant]
