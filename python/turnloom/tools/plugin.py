"""The built-in tool-call parsers, registered like any plugin's."""

from __future__ import annotations

from typing import Any

from turnloom.hookspecs import Register, hookimpl
from turnloom.tools.parsers import BUILTIN_PARSERS, ToolParser


def _factory(name: str) -> Any:
    def make(settings: dict[str, Any] | None = None) -> ToolParser:
        if settings:
            raise ValueError(f"tool-call parser {name!r} takes no settings, got {sorted(settings)}")
        return BUILTIN_PARSERS[name]()
    return make


@hookimpl
def register_tool_parsers(register: Register) -> None:
    for name in BUILTIN_PARSERS:
        register(name, _factory(name))
