"""Placeholders of the built-in agents' system prompts: ``{profile}`` and
``{profile.FIELD}`` (`turnloom.builtin.agents.render_prompt`).

Anything else in braces that looks like a placeholder (``{profle}``, ``{name}``,
``{profile.name.first}``) would stay in the prompt as literal text while the profile is
silently dropped, so it is refused before the run. Braces that hold no identifier
(JSON examples such as ``{"a": 1}``) are text, as render_prompt treats them.
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple

KNOWN = ("{profile}", "{profile.FIELD}")
_CANDIDATE = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\s*\.\s*[A-Za-z0-9_]+)*)\s*\}")
_VALID = re.compile(r"profile(?:\.[A-Za-z_][A-Za-z0-9_]*)?")


class BadPlaceholder(NamedTuple):
    text: str  # as written, braces included
    line: int  # 0-based line of the template it is on
    message: str


def unknown_placeholders(template: str) -> list[BadPlaceholder]:
    """Every brace group in `template` that looks like a placeholder but is not one."""
    out = []
    for m in _CANDIDATE.finditer(template):
        inner = m.group(1)
        if m.group(0) == "{" + inner + "}" and _VALID.fullmatch(inner):
            continue
        head = re.split(r"\s*\.\s*", inner)[0]
        close = difflib.get_close_matches(head, ["profile"], n=1, cutoff=0.6)
        if close and head != "profile":
            hint = f"; did you mean {{profile{inner[len(head):]}}}?"
        elif head == "profile":
            hint = "; write {profile} or {profile.FIELD} (one field, no spaces)"
        else:
            hint = ""
        out.append(BadPlaceholder(
            m.group(0), template.count("\n", 0, m.start()),
            f"unknown placeholder {m.group(0)}{hint} (placeholders: {', '.join(KNOWN)})"))
    return out
