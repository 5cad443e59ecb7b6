"""Profile comparison: how well an extracted profile matches a target profile.

Facts are compared field by field with a soft match in [0, 1] and combined as
precision (extracted fields that match the target), recall (target fields that
were recovered) and F1, the atomic-fact F1 of USP's profile consistency with
one fact per field. Traits are scored separately: each Big Five trait by
closeness on the 0-1 scale, the speaking style by word overlap.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from turnloom_usp.profile import Profile, filled_facts, filled_traits, trait_value

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an and the of to in on for with at by from is are be as or my your their his her it "
    "i you he she we they this that".split())
AGE_TOLERANCE = 10  # years at which an age guess scores 0


class ProfileMatch(msgspec.Struct, frozen=True, kw_only=True):
    facts_precision: float
    facts_recall: float
    facts_f1: float
    traits: float  # mean over the target's traits (Big Five and speaking style)
    facts_compared: int
    traits_compared: int

    @property
    def overall(self) -> float:
        return (self.facts_f1 + self.traits) / 2

    def as_score(self) -> dict[str, Any]:
        return {**msgspec.structs.asdict(self), "overall": self.overall}


def words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def text_similarity(a: str, b: str) -> float:
    """Word-set F1 of two short texts (stop words ignored); 1.0 for equal texts."""
    wa, wb = words(a), words(b)
    if not wa or not wb:
        return float(a.strip().lower() == b.strip().lower())
    common = len(wa & wb)
    return 2 * common / (len(wa) + len(wb))


def fact_similarity(field: str, target: Any, guess: Any) -> float:
    if field == "age":
        return max(0.0, 1 - abs(int(target) - int(guess)) / AGE_TOLERANCE)
    return text_similarity(str(target), str(guess))


def compare_profiles(target: Profile, extracted: Profile) -> ProfileMatch:
    want, got = filled_facts(target), filled_facts(extracted)
    matched = sum(fact_similarity(f, want[f], got[f]) for f in want.keys() & got.keys())
    precision = matched / len(got) if got else 0.0
    recall = matched / len(want) if want else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    trait_scores = []
    want_traits, got_traits = filled_traits(target), filled_traits(extracted)
    for trait, value in want_traits.items():
        guess = got_traits.get(trait)
        trait_scores.append(0.0 if guess is None
                            else 1 - abs(trait_value(value) - trait_value(guess)))
    if target.traits.speaking_style is not None:
        guess_style = extracted.traits.speaking_style
        trait_scores.append(0.0 if guess_style is None
                            else text_similarity(target.traits.speaking_style, guess_style))
    traits = sum(trait_scores) / len(trait_scores) if trait_scores else 0.0
    return ProfileMatch(facts_precision=precision, facts_recall=recall, facts_f1=f1,
                        traits=traits, facts_compared=len(want), traits_compared=len(trait_scores))
