"""Participant interfaces: LLM agents, environments and profile samplers.

An *agent* speaks through a backend: it supplies its system prompt and the role
each message has in its own view, and turns generated text into a message or a
stop. An *environment* answers without a backend (deterministic rules, tools).
A *sampler* draws the profile a participant plays in one conversation.
"""

from __future__ import annotations

import random
from typing import Any, Protocol, runtime_checkable

import msgspec

from turnloom.messages import ToolCall
from turnloom.records import ConversationState


class Reply(msgspec.Struct, frozen=True):
    """What a participant says this turn. `stop` ends the conversation after it
    (with `text` kept unless empty); `meta` is kept with the turn (JSON-serialisable).

    Structure beyond text: `tool_calls` the calls this message makes (an agent's);
    `tool_call_id` marks the message as the result of that call (an environment's);
    `reasoning` is reasoning kept apart from `text`; `state`, when given, replaces
    the conversation's environment state (a JSON value) from this turn on.
    """

    text: str
    stop: str | None = None
    meta: dict[str, Any] = {}
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    reasoning: str | None = None
    state: Any = msgspec.UNSET


@runtime_checkable
class Agent(Protocol):
    """A participant that generates through a backend."""

    def system_prompt(self, conversation: ConversationState, me: str) -> str | None:
        """This participant's system prompt for this conversation (None for none)."""

    def role_in_view(self, speaker: str, me: str) -> str:
        """The role a message by `speaker` has in this participant's view:
        usually "assistant" for its own messages and "user" for everyone else's."""

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        """Turn generated text into this turn's reply (or a stop)."""


@runtime_checkable
class Environment(Protocol):
    """A participant that answers without a backend."""

    def respond(self, conversation: ConversationState, me: str,
                rng: random.Random) -> Reply: ...


@runtime_checkable
class Sampler(Protocol):
    """Draws a profile (a JSON-serialisable dict) for one conversation."""

    def sample(self, rng: random.Random, index: int) -> dict[str, Any]: ...
