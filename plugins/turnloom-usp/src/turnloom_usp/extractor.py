"""The profile extractor: a model reads only a user's messages and writes a profile as JSON.

Two judges share it: `usp-extract` stores the extracted profile, and
`usp-consistency` compares it with the profile the simulated user was given
(cycle consistency, facts and traits scored separately).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Mapping, Sequence

import msgspec

from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState
from turnloom.references import check_participant_names
from turnloom.scoring import Score
from turnloom_usp.consistency import compare_profiles
from turnloom_usp.profile import BIG_FIVE, FACT_FIELDS, ProfileError, parse_profile, to_dict

EXTRACTOR_PROMPT = (
    "You read the messages one user wrote to an AI assistant and describe that user. "
    "Reply with a single JSON object and nothing else. It has two keys. \"facts\" holds "
    "what the messages show among: " + ", ".join(FACT_FIELDS) + " (short strings; age a number). "
    "\"traits\" holds \"big_five\" (any of " + ", ".join(BIG_FIVE) + ", each \"low\", "
    "\"medium\" or \"high\") and \"speaking_style\" (a short phrase). "
    "Leave out anything the messages do not show."
)

# Values an extractor writes for "not known"; they mean the field is absent.
_UNKNOWN = {"", "unknown", "n/a", "na", "none", "not mentioned", "not specified", "unspecified"}


def user_messages_block(texts: Sequence[str]) -> str:
    """The user's messages, one numbered block per turn."""
    return "\n\n".join(f"[Message {i}]\n{t.strip()}" for i, t in enumerate(texts, 1))


def extraction_call(texts: Sequence[str], key: str = "profile") -> JudgeCall:
    return JudgeCall(key=key, messages=(
        ("system", EXTRACTOR_PROMPT),
        ("user", "The user's messages:\n\n" + user_messages_block(texts)),
    ))


def extract_json_object(text: str) -> Any:
    """The first JSON object in `text` (models wrap it in prose or code fences)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    raise Unparseable("no JSON object in the output")


def parse_extracted_profile(text: str) -> dict[str, Any]:
    """The profile in an extractor's output, validated (partial profiles allowed).
    Raises `Unparseable` when there is no JSON object or it breaks the schema."""
    data = _drop_unknowns(extract_json_object(text))
    if not isinstance(data, dict):
        raise Unparseable("the JSON object is empty")
    try:
        profile = parse_profile(data, where="extracted profile")
    except ProfileError as exc:
        raise Unparseable(str(exc)) from None
    return to_dict(profile)


def _drop_unknowns(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: v for k, v in ((k, _drop_unknowns(v)) for k, v in value.items())
               if v is not None}
        return out or None
    if isinstance(value, str) and value.strip().lower() in _UNKNOWN:
        return None
    return value


class ExtractorSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    participant: str = "user"  # whose messages are read
    max_messages: Annotated[int, msgspec.Meta(ge=1)] | None = None  # read only the first N


class ProfileExtractor:
    """`usp-extract`: the profile read from a participant's messages."""

    name = "usp-extract"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), ExtractorSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid {self.name} settings: {exc}") from None

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.s.participant)

    def user_texts(self, conversation: ConversationState) -> list[str]:
        texts = [t.text for t in conversation.turns_of(self.s.participant) if t.text.strip()]
        return texts if self.s.max_messages is None else texts[: self.s.max_messages]

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        texts = self.user_texts(conversation)
        return [extraction_call(texts)] if texts else []

    def parse(self, call: JudgeCall, text: str) -> dict[str, Any]:
        return parse_extracted_profile(text)

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        extracted = verdicts.get("profile")
        if extracted is None:
            return {"extracted": 0}
        return {"extracted": 1, "profile": extracted,
                "facts_found": len(extracted.get("facts", {})),
                "traits_found": len(extracted.get("traits", {}).get("big_five", {}))}


class ProfileConsistency(ProfileExtractor):
    """`usp-consistency-lexical`: a cheap stand-in for USP's consistency. Re-extract
    the simulated user's profile and compare it with the profile it was given
    (`conversation.profiles[participant]`) field by field by word overlap: a
    faithful paraphrase scores low. `usp-consistency` is the paper's measure."""

    name = "usp-consistency-lexical"

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        if self.s.participant not in conversation.profiles:
            return []
        return super().calls(conversation)

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        extracted = verdicts.get("profile")
        if extracted is None:
            return {"extracted": 0}
        target = parse_profile(conversation.profiles[self.s.participant],
                               where=f"profile of {self.s.participant!r}")
        match = compare_profiles(target, parse_profile(extracted))
        return {"extracted": 1, **match.as_score()}
