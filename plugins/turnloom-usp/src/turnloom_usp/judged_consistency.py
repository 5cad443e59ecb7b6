"""`usp-consistency`: profile consistency as USP measures it, with a judge model.

Two questions per conversation to the judge backend:

- ``facts``: the target profile's facts, one sentence each, are judged against
  the simulated user's messages, each ``supported``, ``contradicted`` or
  ``unmentioned``; the score keeps the supported and contradicted shares;
- ``profile``: the profile is extracted again from those messages (the cycle
  of USP's cycle consistency), and the target's and the extracted profile's
  paragraphs are compared by embedding cosine, facts paragraph with facts
  paragraph and traits with traits, as USP's released cycle-consistency reward
  does with SimCSE.

The embedder is a setting: no trained sentence encoder such as SimCSE can be
shipped here, so the default is the mean-pooled hidden states of the embedded
SmolLM2 model (`turnloom_scorers.embedding.mean_pool_embedder`), and ``tfidf``
(the plugin's hashed TF-IDF, lexical) runs without a model. Either way the
numbers are not SimCSE's: compare them across runs with the same embedder only.
The word-overlap comparison this plugin used before is `usp-consistency-lexical`.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping, Sequence

import msgspec

from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState
from turnloom.references import check_participant_names
from turnloom.scoring import Score
from turnloom_usp.embed import normalize, tfidf_embed
from turnloom_usp.extractor import (
    ExtractorSettings,
    extraction_call,
    parse_extracted_profile,
    user_messages_block,
)
from turnloom_usp.profile import Profile, filled_facts, parse_profile
from turnloom_usp.render import facts_paragraph, traits_paragraph

LABELS = ("supported", "contradicted", "unmentioned")

FACTS_PROMPT = (
    "You check a user's messages to an AI assistant against facts about that user. For each "
    "numbered fact, write one line `N: supported`, `N: contradicted` or `N: unmentioned`: "
    "supported when the messages state or clearly imply the fact, contradicted when they "
    "state something that cannot be true together with it, unmentioned otherwise. Write one "
    "line per fact, in order, and nothing else."
)

_FACT_SENTENCES = {
    "name": "The user's name is {}.", "age": "The user is {} years old.",
    "gender": "The user's gender: {}.", "occupation": "The user's occupation: {}.",
    "education": "The user's education: {}.", "location": "The user lives in {}.",
    "family": "The user's family: {}.", "hobbies": "The user's hobbies: {}.",
    "goal": "What the user wants from this conversation: {}.",
    "task_details": "Details of the user's task: {}.",
}
_VERDICT = re.compile(r"^[ \t*`]*(\d+)[ \t]*[:.)\-][ \t*`]*(supported|contradicted|unmentioned)"
                      r"[ \t*`.]*$", re.IGNORECASE | re.MULTILINE)


def fact_sentences(profile: Profile) -> list[str]:
    """The profile's objective facts, one sentence each (the facts judged)."""
    return [_FACT_SENTENCES[field].format(str(value).strip().rstrip("."))
            for field, value in filled_facts(profile).items()]


def facts_call(facts: Sequence[str], texts: Sequence[str]) -> JudgeCall:
    listed = "\n".join(f"{i}. {fact}" for i, fact in enumerate(facts, 1))
    return JudgeCall(key="facts", messages=(
        ("system", FACTS_PROMPT),
        ("user", f"Facts:\n{listed}\n\nThe user's messages:\n\n{user_messages_block(texts)}"),
    ), meta={"facts": len(facts)})


def parse_fact_verdicts(text: str, n: int) -> list[str]:
    """One label per fact, in order; `Unparseable` unless every fact 1..n has
    exactly one line and nothing else does."""
    found: dict[int, str] = {}
    for number, label in _VERDICT.findall(text):
        i = int(number)
        if not 1 <= i <= n or i in found:
            raise Unparseable(f"fact {i} is unknown or judged twice")
        found[i] = label.lower()
    missing = [i for i in range(1, n + 1) if i not in found]
    if missing:
        raise Unparseable(f"no verdict for fact {missing[0]} in {text[:80]!r}")
    return [found[i] for i in range(1, n + 1)]


Embedder = Callable[[Sequence[str]], Any]


@functools.cache
def embedder(name: str) -> Embedder:
    """`tfidf`: hashed TF-IDF (lexical, no model); anything else: a local model
    spec embedded by mean-pooling its hidden states (needs turnloom-scorers and
    the `hf` extra)."""
    if name == "tfidf":
        return tfidf_embed
    try:
        from turnloom_scorers.embedding import mean_pool_embedder  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ValueError(f"usp-consistency: embedder {name!r} needs turnloom-scorers and the "
                         f"hf extra ({exc}); or set embedder = \"tfidf\"") from None
    return mean_pool_embedder(name)  # type: ignore[no-any-return]


def paragraph_similarity(target: Profile, extracted: Profile, embed: Embedder) -> dict[str, float]:
    """Cosine of the facts paragraphs and of the traits paragraphs (each where the
    target has one; an empty extracted paragraph scores 0)."""
    import numpy as np

    out: dict[str, float] = {}
    for name, render in (("facts_similarity", facts_paragraph),
                         ("traits_similarity", traits_paragraph)):
        want, got = render(target), render(extracted)
        if not want:
            continue
        if not got:
            out[name] = 0.0
            continue
        raw = embed([want, got])
        rows = normalize(np.asarray(raw.detach().cpu() if hasattr(raw, "detach") else raw,
                                    dtype=np.float64))
        out[name] = float(rows[0] @ rows[1])
    return out


class JudgedConsistencySettings(ExtractorSettings, frozen=True, kw_only=True,
                                forbid_unknown_fields=True):
    embedder: str = "smollm2-135m-instruct"  # a local model spec (mean-pooled), or "tfidf"


class JudgedConsistency:
    """`usp-consistency`: facts judged against the dialogue, and the embedding
    similarity of the re-extracted profile to the target."""

    name = "usp-consistency"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), JudgedConsistencySettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid {self.name} settings: {exc}") from None
        if self.s.embedder != "tfidf":  # a missing model fails here, not after the run
            from turnloom.models import resolve_model

            try:
                resolve_model(self.s.embedder)
            except Exception as exc:
                raise ValueError(f"invalid {self.name} settings: embedder: {exc}") from None

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.s.participant)

    def _texts(self, conversation: ConversationState) -> list[str]:
        texts = [t.text for t in conversation.turns_of(self.s.participant) if t.text.strip()]
        return texts if self.s.max_messages is None else texts[: self.s.max_messages]

    def _target(self, conversation: ConversationState) -> Profile:
        return parse_profile(conversation.profiles[self.s.participant],
                             where=f"profile of {self.s.participant!r}")

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        if self.s.participant not in conversation.profiles:
            return []
        texts = self._texts(conversation)
        if not texts:
            return []
        facts = fact_sentences(self._target(conversation))
        return ([facts_call(facts, texts)] if facts else []) + [extraction_call(texts)]

    def parse(self, call: JudgeCall, text: str) -> Any:
        if call.key == "facts":
            return parse_fact_verdicts(text, int(call.meta["facts"]))
        return parse_extracted_profile(text)

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        if not verdicts:
            return None
        out: dict[str, Any] = {}
        labels = verdicts.get("facts")
        if labels:
            out["facts_supported"] = labels.count("supported") / len(labels)
            out["facts_contradicted"] = labels.count("contradicted") / len(labels)
            out["facts_judged"] = len(labels)
        extracted = verdicts.get("profile")
        out["extracted"] = int(extracted is not None)
        if extracted is not None:
            sims = paragraph_similarity(self._target(conversation), parse_profile(extracted),
                                        embedder(self.s.embedder))
            out.update(sims)
            if sims:
                out["profile_similarity"] = sum(sims.values()) / len(sims)
        return out
