"""The `persona-questioner` environment: questions with a knowledge label.

Per conversation it plans a fixed list of questions for the persona's card:
role-specific ones from the card itself (label "in-knowledge": the persona should
answer) and contrastive ones from a character of a distant era (label
"out-of-knowledge": the persona should decline, in character). The plan depends
only on the conversation's seed and the card, so it is the same on every run and
on resume. Each question's label is kept in its turn's `meta`.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import msgspec

from turnloom.agents import Reply
from turnloom.records import ConversationState
from turnloom.references import check_participant_names
from turnloom_roleplay.cards import CharacterCard, load_cards, parse_card

IN_KNOWLEDGE = "in-knowledge"
OUT_OF_KNOWLEDGE = "out-of-knowledge"


class Question(msgspec.Struct, frozen=True):
    text: str
    label: str
    source: str  # the character whose world the question comes from


class QuestionerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    persona: str = "persona"  # the participant whose card the questions are about
    questions: int = 4  # questions per conversation
    contrastive: float = 0.5  # share of out-of-knowledge questions
    min_year_gap: int = 40  # contrastive questions come from characters this far apart in time
    cards: str | None = None  # JSON file of cards to draw contrastive questions from
    stop_reason: str = "questions_done"


class Questioner:
    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            s = msgspec.convert(dict(settings), QuestionerSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid persona-questioner settings: {exc}") from None
        if s.questions < 1:
            raise ValueError("invalid persona-questioner settings: `questions` must be at least 1")
        if not 0 <= s.contrastive <= 1:
            raise ValueError("invalid persona-questioner settings: `contrastive` must be in [0, 1]")
        self.s = s
        self.cards = load_cards(s.cards)

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, persona=self.s.persona)

    def plan(self, card: CharacterCard, seed: int) -> list[Question]:
        rng = random.Random(f"{seed}/persona-questioner/{card.name}")
        n_out = round(self.s.questions * self.s.contrastive)
        n_in = self.s.questions - n_out
        if n_in and not card.questions:
            raise ValueError(f"card {card.name!r} has no questions for in-knowledge turns")
        own = _draw(rng, list(card.questions), n_in)
        plan = [Question(q, IN_KNOWLEDGE, card.name) for q in own]
        others = [c for c in self.cards if c.name != card.name and c.questions
                  and abs(c.year - card.year) >= self.s.min_year_gap]
        if n_out and not others:
            raise ValueError(f"no character with questions is {self.s.min_year_gap}+ years "
                             f"from {card.name!r} to draw contrastive questions from")
        pool = [(c.name, q) for c in others for q in c.questions]
        plan += [Question(q, OUT_OF_KNOWLEDGE, name) for name, q in _draw(rng, pool, n_out)]
        rng.shuffle(plan)
        return plan

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        data = conversation.profiles.get(self.s.persona)
        if data is None:
            raise ValueError(f"participant {self.s.persona!r} has no card (set `persona` to the "
                             "participant that uses the persona-cards sampler)")
        plan = self.plan(parse_card(data, where=f"card of {self.s.persona!r}"), conversation.seed)
        asked = len(conversation.turns_of(me))
        if asked >= len(plan):
            return Reply("", stop=self.s.stop_reason)
        q = plan[asked]
        return Reply(q.text, meta={"label": q.label, "source": q.source, "question": asked})


def _draw(rng: random.Random, pool: list[Any], n: int) -> list[Any]:
    """`n` items without repeats while the pool lasts, then cycling through it again."""
    out: list[Any] = []
    while len(out) < n and pool:
        out += rng.sample(pool, min(len(pool), n - len(out)))
    return out
