"""Scorers for simulated users: early-stop loops and simulator faults.

Both look only at one participant's messages (settings: `participant`, default
"user"). Per turn they flag what went wrong; per conversation they count and rate it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Mapping, Sequence

import msgspec

from turnloom.records import ConversationState, TurnRecord
from turnloom.references import check_participant_names
from turnloom.scoring import Score

_WORD = re.compile(r"[a-z0-9']+")

# A closing message: thanks or goodbye with no new request in it.
_THANKS = re.compile(
    r"\b(thanks?|thank you|thx|cheers|appreciate it|much appreciated|grateful|bye|goodbye|"
    r"have a (nice|good|great) (day|one)|that'?s all|that helps|you'?ve been (very |so )?helpful)\b")
_REQUEST = re.compile(r"\?|\b(can|could|would|how|what|why|where|when|which|should|please|help me|tell me)\b")

# The simulated user talking like the assistant it is talking to.
_AS_ASSISTANT = re.compile(
    r"\b(as an ai|i'?m an ai|i am an ai|as a language model|i am a language model|"
    r"i'?m (just )?an? (ai|virtual|digital) assistant|i'?m here to (help|assist)|"
    r"how (can|may) i (help|assist) you|is there anything else i can (help|assist|do)|"
    r"i'?d be (happy|glad) to help( you)?|feel free to ask)\b")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def is_thanks(text: str) -> bool:
    """A thank-you or goodbye message that asks for nothing new."""
    lowered = text.lower()
    return bool(_THANKS.search(lowered)) and not _REQUEST.search(lowered) and len(tokens(text)) <= 25


def is_repeat(text: str, earlier: list[str], threshold: float) -> bool:
    words = tokens(text)
    return bool(words) and any(jaccard(words, tokens(e)) >= threshold for e in earlier)


def parrots(text: str, previous: str, threshold: float) -> bool:
    """Whether `text` mostly copies `previous`: the share of its word trigrams (or, for
    short texts, its words) that also occur in `previous`."""
    mine, theirs = tokens(text), tokens(previous)
    if not mine or not theirs:
        return False
    if len(mine) < 4:
        return mine == theirs
    grams = [tuple(mine[i:i + 3]) for i in range(len(mine) - 2)]
    source = {tuple(theirs[i:i + 3]) for i in range(len(theirs) - 2)}
    return sum(g in source for g in grams) / len(grams) >= threshold


def speaks_as_assistant(text: str) -> bool:
    return bool(_AS_ASSISTANT.search(text.lower()))


Share = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]


class _Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    participant: str = "user"
    repeat_threshold: Share = 0.8  # word Jaccard at which a message repeats an earlier one
    parrot_threshold: Share = 0.6  # share of word trigrams copied from the previous message
    loop_length: Annotated[int, msgspec.Meta(ge=1)] = 2  # repeat/thank-you messages in a row


def _settings(settings: Mapping[str, Any], what: str) -> _Settings:
    try:
        return msgspec.convert(dict(settings), _Settings)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {what} settings: {exc}") from None


class LoopScorer:
    """`usp-loops`: a conversation is in an early-stop loop when the user, instead of
    ending it, sends `loop_length` messages in a row that repeat an earlier message
    of theirs or only say thanks/goodbye. `loop` averaged over conversations is the
    early-stop loop rate."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _settings(settings, "usp-loops")

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.s.participant)

    def _flags(self, texts: list[str]) -> list[tuple[bool, bool]]:
        return [(is_repeat(t, texts[:i], self.s.repeat_threshold), is_thanks(t))
                for i, t in enumerate(texts)]

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> Score | None:
        if turn.participant != self.s.participant:
            return None
        earlier = [t.text for t in conversation.turns[:turn.turn] if t.participant == turn.participant]
        return {"repeat": int(is_repeat(turn.text, earlier, self.s.repeat_threshold)),
                "thanks": int(is_thanks(turn.text))}

    def score_conversation(self, conversation: ConversationState) -> Score | None:
        texts = [t.text for t in conversation.turns_of(self.s.participant)]
        if not texts:
            return None
        flags = self._flags(texts)
        run, loop_at = 0, -1
        for i, (repeat, thanks) in enumerate(flags):
            run = run + 1 if repeat or thanks else 0
            if run >= self.s.loop_length and loop_at < 0:
                loop_at = i - self.s.loop_length + 1
        score = {"loop": int(loop_at >= 0), "repeats": sum(r for r, _ in flags),
                 "thanks": sum(t for _, t in flags), "user_turns": len(texts)}
        if loop_at >= 0:
            score["loop_at"] = loop_at  # left out otherwise, so its mean is over loops only
        return score


class FaultScorer:
    """`usp-faults`: user messages that are empty, parrot the previous message, or
    speak as the assistant ("As an AI...", "How can I help you?")."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _settings(settings, "usp-faults")

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.s.participant)

    def faults(self, conversation: ConversationState, turn: TurnRecord) -> dict[str, int]:
        before = conversation.turns[turn.turn - 1].text if turn.turn > 0 else ""
        empty = not turn.text.strip()
        return {"empty": int(empty),
                "parrot": int(not empty and parrots(turn.text, before, self.s.parrot_threshold)),
                "as_assistant": int(not empty and speaks_as_assistant(turn.text))}

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> Score | None:
        if turn.participant != self.s.participant:
            return None
        return self.faults(conversation, turn)

    def score_conversation(self, conversation: ConversationState) -> Score | None:
        turns = conversation.turns_of(self.s.participant)
        if not turns:
            return None
        per_turn = [self.faults(conversation, t) for t in turns]
        counts = {k: sum(f[k] for f in per_turn) for k in ("empty", "parrot", "as_assistant")}
        faulty = sum(any(f.values()) for f in per_turn)
        return {**counts, "faulty_turns": faulty, "fault_rate": faulty / len(turns)}
