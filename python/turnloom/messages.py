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
