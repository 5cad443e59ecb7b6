"""Records: what a turn and a conversation look like to hooks, scorers and files."""

from __future__ import annotations

from typing import Any

import msgspec

from turnloom.messages import ToolCall

_decode_json = msgspec.json.decode

class TurnRecord(msgspec.Struct, frozen=True):
    """One completed turn, as shown to hooks and scorers (positional arguments are
    accepted: one is made per turn)."""

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
    tool_calls: tuple[ToolCall, ...] = ()  # calls this message makes
    tool_call_id: str | None = None  # on a tool result: the call it answers
    reasoning: str | None = None  # reasoning kept apart from `text`


class ConversationState:
    """A conversation in progress, as hooks, agents and scorers see it.

    `messages` are (participant name, role, text) in order; `turns` the same as
    structured records (tool calls, tool results, reasoning); `meta` is free-form
    and JSON-serialisable (plugins put their state there so a resumed run sees it);
    `state` is the environment state (a JSON value that tool environments replace
    through `Reply.state`; each read is a fresh copy, so changing it in place
    changes nothing, and branches never share it);
    `profiles` holds what samplers drew for each participant; `system_prompts`
    each participant's rendered system prompt; `turn_scores[i]` the scores of
    `turns[i]` by scorer name; `errors` what went wrong (plugin or backend faults).
    """

    __slots__ = ("conversation_id", "index", "branch", "seed", "messages", "turns", "meta",
                 "profiles", "system_prompts", "stop_reason", "scores", "turn_scores", "errors",
                 "state_json", "tools", "structured")

    def __init__(self, conversation_id: str, index: int, seed: int, branch: int = 0) -> None:
        self.conversation_id = conversation_id
        self.index = index
        self.branch = branch
        self.seed = seed
        self.messages: list[tuple[str, str, str]] = []
        self.turns: list[TurnRecord] = []
        self.meta: dict[str, Any] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.system_prompts: dict[str, str] = {}
        self.stop_reason: str | None = None
        self.scores: dict[str, Any] = {}
        self.turn_scores: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.state_json: bytes = b"null"  # the environment state, encoded (immutable)
        self.tools: dict[str, list[dict[str, Any]]] = {}  # participant -> its tool schemas
        self.structured = False  # some turn has tool calls, a tool result or reasoning

    @property
    def state(self) -> Any:
        return _decode_json(self.state_json)

    def pending_tool_calls(self) -> list[ToolCall]:
        """The tool calls of the latest message that made calls, not answered yet."""
        answered: set[str] = set()
        for rec in reversed(self.turns):
            if rec.tool_call_id is not None:
                answered.add(rec.tool_call_id)
            elif rec.tool_calls:
                return [c for c in rec.tool_calls if c.id not in answered]
            else:
                return []
        return []

    @property
    def last(self) -> TurnRecord | None:
        return self.turns[-1] if self.turns else None

    def turns_of(self, participant: str) -> list[TurnRecord]:
        return [t for t in self.turns if t.participant == participant]

    def fork(self, branch: int, turns: int | None = None) -> ConversationState:
        """A copy as branch `branch`, keeping the first `turns` turns (all by default)."""
        k = len(self.turns) if turns is None else turns
        other = ConversationState(self.conversation_id, self.index, self.seed, branch)
        other.messages = self.messages[:k]
        other.turns = self.turns[:k]
        other.turn_scores = [dict(s) for s in self.turn_scores[:k]]
        # A deep copy: a plugin that changes nested meta in place must not reach
        # into a sibling branch (meta is checked to be JSON after every hook).
        other.meta = _decode_json(msgspec.json.encode(self.meta)) if self.meta else {}
        other.state_json = self.state_json
        other.tools = self.tools
        other.structured = self.structured
        other.profiles = self.profiles
        other.system_prompts = self.system_prompts
        other.errors = list(self.errors)
        return other


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    """One message in OpenAI chat format (`name` is the participant): assistant
    `tool_calls` (id, type "function", function name and JSON-string arguments),
    `tool_call_id` on a "tool" result, `reasoning_content` when reasoning was
    kept apart from the content."""

    role: str
    content: str
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class TurnInfo(msgspec.Struct, frozen=True):
    """Per-turn metadata kept next to the messages of an exported conversation
    (positional arguments are accepted: records are built once per turn)."""

    participant: str
    role: str
    seed: int | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    scores: dict[str, Any] = {}
    meta: dict[str, Any] = {}


class ConversationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A finished conversation (one branch of a tree), as exported.

    `messages` are in OpenAI chat format from the transcript's point of view
    (canonical roles), led by the system prompt of the first assistant-role
    participant that has one; `participants` holds every party's agent, role,
    backend, profile and system prompt. Everything here is deterministic under
    the run seed (no timings), so an interrupted and resumed run writes the
    same records as an uninterrupted one.
    """

    conversation_id: str
    index: int
    branch: int
    seed: int
    messages: list[Message]
    participants: dict[str, dict[str, Any]]
    turns: list[TurnInfo]
    tokens: dict[str, dict[str, int]]
    stop_reason: str
    scores: dict[str, Any] = {}
    errors: list[str] = []
    meta: dict[str, Any] = {}
