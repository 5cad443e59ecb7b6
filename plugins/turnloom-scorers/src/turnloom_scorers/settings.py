"""Settings from a scenario file, decoded into frozen Structs with errors that name the place."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Mapping, TypeVar

import msgspec

T = TypeVar("T")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every component's settings."""


def decode(cls: type[T], settings: Mapping[str, Any] | None, component: str) -> T:
    """`settings` as a `cls`; a bad key or value raises ValueError naming `component`."""
    try:
        return msgspec.convert(dict(settings or {}), cls)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {component} settings: {exc}") from None


def load_data(name: str) -> Any:
    """A JSON file shipped in turnloom_scorers/data."""
    text = resources.files("turnloom_scorers").joinpath("data", name).read_text(encoding="utf-8")
    return json.loads(text)
