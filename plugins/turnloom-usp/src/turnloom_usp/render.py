"""Profiles as text: the two second-person paragraphs a simulator is given, and
prompt templates filled without letting profile text act as a placeholder."""

from __future__ import annotations

import re
from typing import Mapping

from turnloom_usp.profile import BIG_FIVE, Profile, level_of

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def fill_template(template: str, values: Mapping[str, str], *, where: str = "template") -> str:
    """Replace each ``{name}`` in one pass. Substituted text is never scanned again,
    so a profile that contains ``{end_marker}`` stays literal text. An unknown
    placeholder is an error (a typo would otherwise reach the model)."""
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(values))
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {', '.join('{%s}' % u for u in unknown)}"
                         f"; allowed: {', '.join('{%s}' % k for k in sorted(values))}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def facts_paragraph(profile: Profile) -> str:
    f = profile.facts
    who = []
    if f.name:
        who.append(f"Your name is {f.name}.")
    about = [x for x in (f"{f.age} years old" if f.age is not None else None, f.gender) if x]
    if about:
        who.append(f"You are {', '.join(about)}.")
    for label, value in (("Your occupation:", f.occupation), ("Your education:", f.education),
                         ("You live in", f.location), ("Your family:", f.family),
                         ("Your hobbies:", f.hobbies)):
        if value:
            who.append(f"{label} {_sentence(value)}")
    if f.goal:
        who.append(f"What you want from this conversation: {_sentence(f.goal)}")
    if f.task_details:
        who.append(f"Details you know and can share when they matter: {_sentence(f.task_details)}")
    return " ".join(who)


def traits_paragraph(profile: Profile) -> str:
    big = profile.traits.big_five
    levels = [f"{level_of(v)} {t}" for t in BIG_FIVE if (v := getattr(big, t)) is not None]
    parts = []
    if levels:
        parts.append(f"Your personality: {', '.join(levels)}.")
    if profile.traits.speaking_style:
        parts.append(f"How you write: {_sentence(profile.traits.speaking_style)}")
    return " ".join(parts)


def render_profile(profile: Profile) -> str:
    """Facts, then traits, as second-person paragraphs."""
    return "\n\n".join(p for p in (facts_paragraph(profile), traits_paragraph(profile)) if p)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."
