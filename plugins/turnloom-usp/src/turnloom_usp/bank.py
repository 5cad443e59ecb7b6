"""The shipped profile bank (package data) and user-supplied banks."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from turnloom_usp.profile import Profile, parse_profile, require_complete


def load_bank(path: str | Path | None = None) -> list[Profile]:
    """Profiles from a JSON list (default: the shipped bank). Each must validate and
    have a goal; ids must be unique. Errors name the file and the entry."""
    if path is None:
        source = "turnloom_usp/data/profiles.json"
        text = resources.files("turnloom_usp").joinpath("data/profiles.json").read_text("utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{source}: cannot read profile bank: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source}: a profile bank is a non-empty JSON list of profiles")
    bank = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        where = f"{source}[{i}]"
        profile = require_complete(parse_profile(item, where=where), where=where)
        if profile.id is not None:
            if profile.id in seen:
                raise ValueError(f"{where}: duplicate id {profile.id!r}")
            seen.add(profile.id)
        bank.append(profile)
    return bank
