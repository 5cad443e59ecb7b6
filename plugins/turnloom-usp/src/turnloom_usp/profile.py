"""The implicit user profile: objective facts and subjective characteristics.

Every field is optional, so one schema serves complete profiles (the bank, the
simulator's target) and partial ones (what an extractor could read from a few
messages); `require_complete` says what a simulator needs on top. Unknown keys
and wrong types are errors that name the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

import msgspec

_STRUCT = dict(frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True)

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=600)]
Level = Literal["low", "medium", "high"]
Score01 = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
TraitValue = Score01 | Level

BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
FACT_FIELDS = ("name", "age", "gender", "occupation", "education", "location", "family",
               "hobbies", "goal", "task_details")

# Where a 0-1 score sits when compared with a level, and the bands that name a score.
LEVEL_VALUE: dict[str, float] = {"low": 1 / 6, "medium": 0.5, "high": 5 / 6}


class Facts(msgspec.Struct, **_STRUCT):
    """Objective facts: who the user is and what they want from this conversation."""

    name: Text | None = None
    age: Annotated[int, msgspec.Meta(ge=5, le=120)] | None = None
    gender: Text | None = None
    occupation: Text | None = None
    education: Text | None = None
    location: Text | None = None
    family: Text | None = None
    hobbies: Text | None = None
    goal: Text | None = None  # what the user wants to achieve in this conversation
    task_details: Text | None = None  # specifics the user can reveal when asked


class BigFive(msgspec.Struct, **_STRUCT):
    """Personality (inner traits): a 0-1 score or a level per trait."""

    openness: TraitValue | None = None
    conscientiousness: TraitValue | None = None
    extraversion: TraitValue | None = None
    agreeableness: TraitValue | None = None
    neuroticism: TraitValue | None = None


class Traits(msgspec.Struct, **_STRUCT):
    """Subjective characteristics: personality and speaking style (outer traits)."""

    big_five: BigFive = BigFive()
    speaking_style: Text | None = None


class Profile(msgspec.Struct, **_STRUCT):
    """A user profile. `id` names a bank entry; `virtual` marks a mixed profile
    (facts of `id`, traits of `traits_from`)."""

    facts: Facts = Facts()
    traits: Traits = Traits()
    id: str | None = None
    virtual: bool = False
    traits_from: str | None = None


class ProfileError(ValueError):
    """A profile does not match the schema; the message names the field."""


def parse_profile(data: Any, *, where: str = "profile") -> Profile:
    """Validate plain data (e.g. decoded JSON) as a `Profile`."""
    if isinstance(data, Profile):
        return data
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: expected an object, got {type(data).__name__}")
    try:
        return msgspec.convert(dict(data), Profile)
    except msgspec.ValidationError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def require_complete(profile: Profile, *, where: str = "profile") -> Profile:
    """A profile a simulator can play needs at least a goal."""
    if profile.facts.goal is None:
        raise ProfileError(f"{where}: `facts.goal` is required to simulate a user")
    return profile


def to_dict(profile: Profile) -> dict[str, Any]:
    """JSON-ready plain data (unset fields left out)."""
    data: dict[str, Any] = msgspec.to_builtins(profile)
    return data


def level_of(value: float | str) -> str:
    """The level a trait value falls in (scores in thirds)."""
    if isinstance(value, str):
        return value
    return "low" if value < 1 / 3 else "medium" if value < 2 / 3 else "high"


def trait_value(value: float | str) -> float:
    """A trait value on the 0-1 scale."""
    return LEVEL_VALUE[value] if isinstance(value, str) else float(value)


def filled_facts(profile: Profile) -> dict[str, Any]:
    """The facts that are set, by field name."""
    return {f: v for f in FACT_FIELDS if (v := getattr(profile.facts, f)) is not None}


def filled_traits(profile: Profile) -> dict[str, Any]:
    """The Big Five traits that are set, by trait name."""
    big = profile.traits.big_five
    return {t: v for t in BIG_FIVE if (v := getattr(big, t)) is not None}
