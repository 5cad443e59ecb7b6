"""Judged role-play metrics (Ditto): identity consistency, knowledge, rejection.

Each judge reads the question/answer pairs of a finished conversation (questions
by the questioner, with their knowledge label in the turn's meta; answers by the
persona) and asks the judge model about each pair on its own, as Ditto's
evaluation script does (one question and its reply per call, never the whole
transcript). Output is parsed strictly in the format the prompt asks for;
anything else raises `Unparseable`, the engine re-asks once (with a new seed)
and then hands the judge None, which is counted, never guessed.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, Mapping, Sequence

import msgspec

from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState
from turnloom.references import check_participant_names
from turnloom.scoring import Score
from turnloom_roleplay.cards import CharacterCard, load_cards, parse_card
from turnloom_roleplay.questioner import IN_KNOWLEDGE, OUT_OF_KNOWLEDGE

MAX_CANDIDATES = 8


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
    samples: int = 3  # calls per turn (identity, rejection): Ditto samples its judge 3 times
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

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, persona=self.s.persona, questioner=self.s.questioner)

    def card(self, conversation: ConversationState) -> CharacterCard | None:
        data = conversation.profiles.get(self.s.persona)
        return None if data is None else parse_card(data, where=f"card of {self.s.persona!r}")

    def pairs(self, conversation: ConversationState) -> list[QAPair]:
        return qa_pairs(conversation, self.s.persona, self.s.questioner)


# -- identity ---------------------------------------------------------------------------

IDENTITY_PROMPT = (
    "You are a model that excels at discerning the identities of dialogue participants. "
    "Read one exchange between a user and a character and decide which of the listed "
    "characters gave the reply. Analyse the reply step by step, then conclude with "
    "exactly: The most suitable role is [character name]")

_ROLE_CHOICE = re.compile(r"most suitable role is \[([^\]\n]*)\]", re.IGNORECASE)


def parse_choice(text: str, candidates: list[str]) -> str:
    """The character named in "The most suitable role is [name]" (Ditto's answer
    format). A name that is not a candidate is a vote for no candidate ("" ), as
    Ditto counts it wrong; output without the sentence is unparseable."""
    m = _ROLE_CHOICE.search(text)
    if m is None:
        raise Unparseable("expected 'The most suitable role is [character name]'")
    named = m.group(1).strip()
    return next((c for c in candidates if c.casefold() == named.casefold()), "")


class IdentityJudge(_PersonaJudge):
    """`persona-identity`: can a judge tell which character gave each reply? As in
    Ditto, every question/answer pair is judged on its own, `samples` times, against
    `candidates` characters (the true one and others from the card set, chosen once
    per conversation; each sample lists them in its own seeded order)."""

    name = "persona-identity"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.cards = load_cards(self.s.cards)
        if not 2 <= self.s.candidates <= min(MAX_CANDIDATES, len(self.cards)):
            raise ValueError(f"invalid {self.name} settings: `candidates` must be between 2 and "
                             f"{min(MAX_CANDIDATES, len(self.cards))}")

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        card, pairs = self.card(conversation), self.pairs(conversation)
        if card is None or not pairs:
            return []
        others = [c for c in self.cards if c.name != card.name]
        chosen = random.Random(f"{conversation.seed}/{self.name}").sample(
            others, self.s.candidates - 1) + [card]
        out = []
        for i, pair in enumerate(pairs):
            for k in range(self.s.samples):
                shown = list(chosen)
                random.Random(f"{conversation.seed}/{self.name}/{i}/{k}").shuffle(shown)
                listing = "\n".join(f"- {c.name}: {c.description}" for c in shown)
                out.append(JudgeCall(
                    key=f"identity-{i}-{k}", meta={"pair": i, "candidates": [c.name for c in shown]},
                    messages=(("system", IDENTITY_PROMPT),
                              ("user", f"[Instruction]\n{pair.question}\n\n[Response]\n"
                                       f"{pair.answer}\n\nThe possible identities:\n{listing}\n\n"
                                       "Conclude with: The most suitable role is "
                                       "[character name]"))))
        return out

    def parse(self, call: JudgeCall, text: str) -> str:
        return parse_choice(text, list(call.meta["candidates"]))

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        card = self.card(conversation)
        pairs = self.pairs(conversation)
        if card is None or not pairs:
            return {"turns": 0}
        votes = _votes_by_pair(verdicts)
        return identity_score(card.name, len(pairs), votes)


def identity_score(label: str, n_pairs: int, votes: Mapping[int, list[str]]) -> dict[str, Any]:
    """Per turn, the share of parsed votes naming `label`; `consistency` averages it
    over turns as Ditto does, a turn with no parsed vote scoring 0, and
    `consistency_voted` leaves such turns out instead."""
    per_turn: list[float | None] = []
    for i in range(n_pairs):
        got = votes.get(i, [])
        per_turn.append(sum(v == label for v in got) / len(got) if got else None)
    voted = [v for v in per_turn if v is not None]
    out: dict[str, Any] = {"turns": n_pairs, "unvoted_turns": n_pairs - len(voted),
                           "consistency": sum(v or 0.0 for v in per_turn) / n_pairs}
    if voted:
        out["consistency_voted"] = sum(voted) / len(voted)
    return out


def _votes_by_pair(verdicts: Mapping[str, Any]) -> dict[int, list[Any]]:
    """Parsed verdicts grouped by pair (keys "<kind>-<pair>-<sample>"), in sample order."""
    keyed = sorted((int(k.split("-")[1]), int(k.split("-")[2]), v)
                   for k, v in verdicts.items() if v is not None)
    out: dict[int, list[Any]] = {}
    for pair, _, verdict in keyed:
        out.setdefault(pair, []).append(verdict)
    return out


# -- knowledge --------------------------------------------------------------------------

KNOWLEDGE_PROMPT = (
    "You are an expert for checking the quality of an answer. Judge the correctness of a "
    "character's reply to a question, using what the character knows as tips. Give a short "
    "analysis on the first line. On the last line write only the score: one whole number "
    "from 1 to 10, higher being better.")

_SCORE_LINE = re.compile(r"(?:(?:score|rating)(?:\s*\(1\s*-\s*10\))?\s*:\s*)?(\d+)",
                         re.IGNORECASE)


def parse_rating(text: str, low: int = 1, high: int = 10) -> int:
    """The score on the output's last non-empty line, as Ditto reads it: the line is
    a whole number (optionally after "Score:" or "Rating:") in [low, high]."""
    lines = [line.strip().strip("*").strip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line]
    m = _SCORE_LINE.fullmatch(lines[-1]) if lines else None
    if m is None:
        raise Unparseable(f"expected the last line to hold only a score from {low} to {high}")
    value = int(m.group(1))
    if not low <= value <= high:
        raise Unparseable(f"score {value} is outside {low}-{high}")
    return value


class KnowledgeJudge(_PersonaJudge):
    """`persona-knowledge`: a 1-10 rating of every reply against the card's facts
    (Ditto rates knowledge on every turn; `knowledge_in` keeps the in-knowledge
    replies alone)."""

    name = "persona-knowledge"

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        card = self.card(conversation)
        if card is None:
            return []
        facts = "\n".join(f"- {k}" for k in card.knowledge)
        out = []
        for i, pair in enumerate(self.pairs(conversation)):
            out.append(JudgeCall(key=f"knowledge-{i}", meta={"label": pair.label}, messages=(
                ("system", KNOWLEDGE_PROMPT),
                ("user", f"The assistant plays {card.name} ({card.era}): {card.description}\n\n"
                         f"[Question]\n{pair.question}\n\n[The Start of Assistant's Answer]\n"
                         f"{pair.answer}\n[The End of Assistant's Answer]\n\n[Begin of Tips]\n"
                         f"{facts}\n[End of Tips]"))))
        return out

    def parse(self, call: JudgeCall, text: str) -> int:
        return parse_rating(text)

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        pairs = self.pairs(conversation)
        ratings = {int(k.split("-")[1]): v for k, v in verdicts.items() if v is not None}
        if not ratings:
            return {"rated": 0}
        out: dict[str, Any] = {"rated": len(ratings),
                               "knowledge": sum(ratings.values()) / len(ratings)}
        inside = [v for i, v in ratings.items() if i < len(pairs)
                  and pairs[i].label == IN_KNOWLEDGE]
        if inside:
            out["knowledge_in"] = sum(inside) / len(inside)
        return out


# -- rejection --------------------------------------------------------------------------

REJECTION_PROMPT = (
    "You are judging role-play. A character was asked a question. Determine whether the "
    "character refuses to answer it because of limited knowledge or other reasons. Reply "
    "with one word only: DECLINED if the character refuses, ANSWERED otherwise.")

_REJECTION_WORDS = {"answered": "answered", "declined": "declined", "0": "answered",
                    "1": "declined"}


def parse_rejection(text: str) -> str:
    """"declined" or "answered": the whole output must be ANSWERED or DECLINED (or
    Ditto's 0 / 1), in any case, with nothing else but surrounding punctuation."""
    word = text.strip().strip("*.!\"'` ").casefold()
    if word not in _REJECTION_WORDS:
        raise Unparseable("expected only ANSWERED or DECLINED")
    return _REJECTION_WORDS[word]


def majority(votes: list[str]) -> str | None:
    """The most common vote, or None on a tie or no votes."""
    ranked = Counter(votes).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def ditto_majority(votes: list[str]) -> str | None:
    """Ditto's reading of a vote: `Counter.most_common(1)`, so a tie goes to the vote
    cast first (in sample order); None when no vote parsed."""
    ranked = Counter(votes).most_common(1)
    return ranked[0][0] if ranked else None


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
                    ("user", f"The following is a conversation between the user and the role "
                             f"{card.name}.\n\n[Instruction]\n{pair.question}\n\n[Response]\n"
                             f"{pair.answer}\n\nANSWERED or DECLINED?"))))
        return out

    def parse(self, call: JudgeCall, text: str) -> str:
        return parse_rejection(text)

    def score(self, conversation: ConversationState, verdicts: dict[str, Any]) -> Score | None:
        return rejection_score(self.pairs(conversation), _votes_by_pair(verdicts))


def rejection_score(pairs: list[QAPair], votes: Mapping[int, list[str]]) -> dict[str, Any]:
    """Accuracy of the per-question verdicts against the labels, read two ways:
    `accuracy` (and per label `answer_accuracy`, `decline_accuracy`) as Ditto reads
    votes (a tie goes to the first vote; questions with no parsed vote, which end
    Ditto's run for that dialogue, are left out and counted as `no_votes`), and
    `accuracy_no_ties`, which also leaves ties out (`undecided`)."""
    ditto: dict[str, list[int]] = {IN_KNOWLEDGE: [], OUT_OF_KNOWLEDGE: []}
    strict: list[int] = []
    no_votes = undecided = 0
    for i, pair in enumerate(pairs):
        got = votes.get(i, [])
        expected = "declined" if pair.label == OUT_OF_KNOWLEDGE else "answered"
        first = ditto_majority(got)
        if first is None:
            no_votes += 1
            undecided += 1
            continue
        ditto[pair.label].append(int(first == expected))
        verdict = majority(got)
        if verdict is None:
            undecided += 1
        else:
            strict.append(int(verdict == expected))
    judged = ditto[IN_KNOWLEDGE] + ditto[OUT_OF_KNOWLEDGE]
    out: dict[str, Any] = {"judged": len(judged), "no_votes": no_votes, "undecided": undecided}
    if judged:
        out["accuracy"] = sum(judged) / len(judged)
    if strict:
        out["accuracy_no_ties"] = sum(strict) / len(strict)
    for label, key in ((IN_KNOWLEDGE, "answer_accuracy"), (OUT_OF_KNOWLEDGE, "decline_accuracy")):
        if ditto[label]:
            out[key] = sum(ditto[label]) / len(ditto[label])
    return out
