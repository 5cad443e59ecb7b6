"""Judged role-play metrics (Ditto): identity consistency, knowledge, rejection.

Each judge reads the question/answer pairs of a finished conversation (questions
by the questioner, with their knowledge label in the turn's meta; answers by the
persona) and asks the judge model about them. Malformed judge output raises
`Unparseable`; the engine retries once and then hands the judge None, which is
counted, never guessed.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, Mapping

import msgspec

from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState
from turnloom.scoring import Score
from turnloom_roleplay.cards import CharacterCard, load_cards, parse_card
from turnloom_roleplay.questioner import IN_KNOWLEDGE, OUT_OF_KNOWLEDGE

LETTERS = "ABCDEFGH"


class QAPair(msgspec.Struct, frozen=True):
    question: str
    answer: str
    label: str  # IN_KNOWLEDGE or OUT_OF_KNOWLEDGE


def qa_pairs(conversation: ConversationState, persona: str, questioner: str) -> list[QAPair]:
    """Each labelled question with the persona's reply that follows it."""
    pairs = []
    turns = conversation.turns
    for i, turn in enumerate(turns):
        label = turn.meta.get("label")
        if turn.participant != questioner or label not in (IN_KNOWLEDGE, OUT_OF_KNOWLEDGE):
            continue
        answer = next((t.text for t in turns[i + 1:] if t.participant == persona), None)
        if answer is not None:
            pairs.append(QAPair(turn.text, answer, label))
    return pairs


def transcript(pairs: list[QAPair]) -> str:
    return "\n\n".join(f"Question: {p.question}\nReply: {p.answer}" for p in pairs)


class JudgeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    persona: str = "persona"
    questioner: str = "questioner"
    samples: int = 3  # calls per item (identity, rejection): Ditto samples its judge 3 times
    candidates: int = 4  # identity: roles to choose among, the true one included
    cards: str | None = None  # identity: where the other candidates come from


class _PersonaJudge:
    name = "persona judge"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), JudgeSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid {self.name} settings: {exc}") from None
        if self.s.samples < 1:
            raise ValueError(f"invalid {self.name} settings: `samples` must be at least 1")

    def card(self, conversation: ConversationState) -> CharacterCard | None:
        data = conversation.profiles.get(self.s.persona)
        return None if data is None else parse_card(data, where=f"card of {self.s.persona!r}")

    def pairs(self, conversation: ConversationState) -> list[QAPair]:
        return qa_pairs(conversation, self.s.persona, self.s.questioner)


# -- identity ---------------------------------------------------------------------------

IDENTITY_PROMPT = (
    "You are judging role-play. Read a character's replies and decide which of the listed "
    "characters gave them. Answer with the letter of one candidate and nothing else.")


def parse_choice(text: str, candidates: list[str]) -> str:
    """The candidate a judge picked: a leading letter ("B", "B.", "(B)", "Answer: B")
    or exactly one candidate's name."""
    letters = LETTERS[: len(candidates)]
    # Capital letters only: a lowercase "a" is usually the article.
    m = re.match(rf"\W*(?:(?i:the\s+)?(?i:answer|option|candidate)(?i:\s+is)?\W*)?"
                 rf"([{letters}])(?![A-Za-z])", text)
    if m:
        return candidates[letters.index(m.group(1))]
    named = [c for c in candidates if c.lower() in text.lower()]
    if len(named) == 1:
        return named[0]
    raise Unparseable(f"expected one letter of {', '.join(letters)} or one candidate's name")


class IdentityJudge(_PersonaJudge):
    """`persona-identity`: can a judge tell which character spoke? Each of `samples`
    calls shows the persona's replies and `candidates` characters (the true one
    and others from the card set) in its own shuffled order."""

    name = "persona-identity"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.cards = load_cards(self.s.cards)
        if not 2 <= self.s.candidates <= min(len(LETTERS), len(self.cards)):
            raise ValueError(f"invalid {self.name} settings: `candidates` must be between 2 and "
                             f"{min(len(LETTERS), len(self.cards))}")

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        card, pairs = self.card(conversation), self.pairs(conversation)
        if card is None or not pairs:
            return []
        others = [c for c in self.cards if c.name != card.name]
        out = []
        for k in range(self.s.samples):
            rng = random.Random(f"{conversation.seed}/{self.name}/{k}")
            shown = rng.sample(others, self.s.candidates - 1) + [card]
            rng.shuffle(shown)
            listing = "\n".join(f"{LETTERS[i]}. {c.name}: {c.description}"
                                for i, c in enumerate(shown))
            out.append(JudgeCall(key=f"identity-{k}", meta={"candidates": [c.name for c in shown]},
                                 messages=(("system", IDENTITY_PROMPT),
                                           ("user", f"Replies:\n\n{transcript(pairs)}\n\n"
                                                    f"Candidates:\n{listing}\n\nWhich one spoke?"))))
        return out

    def parse(self, call: JudgeCall, text: str) -> str:
        return parse_choice(text, list(call.meta["candidates"]))

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        card = self.card(conversation)
        votes = [v for v in verdicts.values() if v is not None]
        if card is None or not votes:
            return {"votes": 0}
        right = sum(v == card.name for v in votes)
        return {"votes": len(votes), "accuracy": right / len(votes),
                "majority": int(2 * right > len(votes))}


# -- knowledge --------------------------------------------------------------------------

KNOWLEDGE_PROMPT = (
    "You are judging role-play. Given what a character knows, rate how accurate and "
    "knowledgeable the character's reply to a question is, from 1 (wrong or empty) to "
    "10 (correct, detailed, and true to the character). Reply with the number only.")


def parse_rating(text: str, low: int = 1, high: int = 10) -> int:
    """The first whole number in the output, which must lie in [low, high]."""
    m = re.search(r"(?<![\d.])-?\d+(?![\d.]\d)", text)
    if m is None:
        raise Unparseable(f"expected a number from {low} to {high}")
    value = int(m.group())
    if not low <= value <= high:
        raise Unparseable(f"rating {value} is outside {low}-{high}")
    return value


class KnowledgeJudge(_PersonaJudge):
    """`persona-knowledge`: a 1-10 rating of each in-knowledge reply against the card."""

    name = "persona-knowledge"

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        card = self.card(conversation)
        if card is None:
            return []
        facts = "\n".join(f"- {k}" for k in card.knowledge)
        out = []
        for i, pair in enumerate(self.pairs(conversation)):
            if pair.label != IN_KNOWLEDGE:
                continue
            out.append(JudgeCall(key=f"knowledge-{i}", messages=(
                ("system", KNOWLEDGE_PROMPT),
                ("user", f"Character: {card.name} ({card.era})\nWhat the character knows:\n{facts}"
                         f"\n\nQuestion: {pair.question}\nReply: {pair.answer}\n\nRating (1-10):"))))
        return out

    def parse(self, call: JudgeCall, text: str) -> int:
        return parse_rating(text)

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        ratings = [v for v in verdicts.values() if v is not None]
        if not ratings:
            return {"rated": 0}
        return {"rated": len(ratings), "knowledge": sum(ratings) / len(ratings)}


# -- rejection --------------------------------------------------------------------------

REJECTION_PROMPT = (
    "You are judging role-play. A character was asked a question. Did the character answer "
    "it, or decline it (saying they do not know of such things)? Reply with one word: "
    "ANSWERED or DECLINED.")

_VERDICT = re.compile(r"\b(answered|declined|refused)\b", re.IGNORECASE)


def parse_rejection(text: str) -> str:
    """"declined" or "answered": the first such word in the output."""
    m = _VERDICT.search(text)
    if m is None:
        raise Unparseable("expected ANSWERED or DECLINED")
    return "answered" if m.group(1).lower() == "answered" else "declined"


def majority(votes: list[str]) -> str | None:
    """The most common vote, or None on a tie or no votes."""
    ranked = Counter(votes).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


class RejectionJudge(_PersonaJudge):
    """`persona-rejection`: per question, the majority of `samples` judge votes must
    say "declined" for out-of-knowledge questions and "answered" for in-knowledge ones."""

    name = "persona-rejection"

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        card = self.card(conversation)
        if card is None:
            return []
        out = []
        for i, pair in enumerate(self.pairs(conversation)):
            for k in range(self.s.samples):
                out.append(JudgeCall(key=f"rejection-{i}-{k}", meta={"pair": i}, messages=(
                    ("system", REJECTION_PROMPT),
                    ("user", f"Character: {card.name}\nQuestion: {pair.question}\n"
                             f"Reply: {pair.answer}\n\nANSWERED or DECLINED?"))))
        return out

    def parse(self, call: JudgeCall, text: str) -> str:
        return parse_rejection(text)

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        pairs = self.pairs(conversation)
        votes: dict[int, list[str]] = {}
        for key, verdict in verdicts.items():
            if verdict is not None:
                votes.setdefault(int(key.split("-")[1]), []).append(verdict)
        return rejection_score(pairs, votes)


def rejection_score(pairs: list[QAPair], votes: Mapping[int, list[str]]) -> dict[str, Any]:
    """Accuracy of the majority verdicts against the labels, overall and per label;
    pairs with no majority (no votes, or a tie) are left out and counted."""
    correct: dict[str, list[int]] = {IN_KNOWLEDGE: [], OUT_OF_KNOWLEDGE: []}
    undecided = 0
    for i, pair in enumerate(pairs):
        verdict = majority(votes.get(i, []))
        if verdict is None:
            undecided += 1
            continue
        expected = "declined" if pair.label == OUT_OF_KNOWLEDGE else "answered"
        correct[pair.label].append(int(verdict == expected))
    judged = correct[IN_KNOWLEDGE] + correct[OUT_OF_KNOWLEDGE]
    out: dict[str, Any] = {"judged": len(judged), "undecided": undecided}
    if judged:
        out["accuracy"] = sum(judged) / len(judged)
    for label, key in ((IN_KNOWLEDGE, "answer_accuracy"), (OUT_OF_KNOWLEDGE, "decline_accuracy")):
        if correct[label]:
            out[key] = sum(correct[label]) / len(correct[label])
    return out
