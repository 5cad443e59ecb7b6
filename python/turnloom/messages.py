"""Structured message parts shared by agents, environments and backends."""

from __future__ import annotations

import random

import msgspec


class ToolCall(msgspec.Struct, frozen=True):
    """One tool call in OpenAI format: `arguments` is a JSON-encoded object."""

    id: str
    name: str
    arguments: str


def new_call_id(rng: random.Random) -> str:
    """A call id in OpenAI's shape ("call_" + 24 hex digits), drawn from `rng`
    so a seeded run names its calls the same way every time."""
    return "call_" + "".join(f"{rng.randrange(16):x}" for _ in range(24))


def call_to_openai(call: ToolCall) -> dict[str, object]:
    """A tool call as chat APIs and `apply_chat_template` take it."""
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def call_from_openai(data: object) -> ToolCall:
    """A tool call from its OpenAI form; `arguments` may be a JSON string or an
    object (some servers return the parsed object). Raises ValueError otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"a tool call must be an object, got {type(data).__name__}")
    fn = data.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"a tool call needs function.name: {data!r:.200}")
    args = fn.get("arguments", "{}")
    if not isinstance(args, str):
        args = msgspec.json.encode(args).decode()
    call_id = data.get("id")
    return ToolCall(id=call_id if isinstance(call_id, str) else "", name=fn["name"],
                    arguments=args)
