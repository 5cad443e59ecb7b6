"""The `persona` agent and the `persona-cards` sampler."""

from __future__ import annotations

import random
from typing import Any, Mapping

import msgspec

from turnloom.agents import Reply
from turnloom.items import check_order, item_index
from turnloom.records import ConversationState
from turnloom_roleplay.cards import (PROMPT_FIELDS, card_fields, fill_template, load_cards,
                                     parse_card, to_dict)

DEFAULT_PROMPT = """\
You are {name}. {description}
You live in {era}. Stay in character: speak in the first person as {name} would \
({speaking_style}), and never say that you are an AI or a language model.
What you know:
{knowledge}
If you are asked about people, places, inventions or events that {name} could not know, \
do not answer: say, in character, that you know nothing of such things.
Reply in two or three sentences."""


class PersonaSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # placeholders: {name} {description} {era} {speaking_style} {category} {knowledge}
    system_prompt: str = DEFAULT_PROMPT


class Persona:
    """Plays the character on its card (`conversation.profiles[me]`, drawn by the
    `persona-cards` sampler). Its messages are assistant turns."""

    role = "assistant"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), PersonaSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid persona settings: {exc}") from None
        fill_template(self.s.system_prompt, dict.fromkeys(PROMPT_FIELDS, ""),
                      where="persona system_prompt")

    def system_prompt(self, conversation: ConversationState, me: str) -> str:
        data = conversation.profiles.get(me)
        if data is None:
            raise ValueError(f"no card for {me!r}: give the participant a sampler "
                             "(sampler = \"persona-cards\")")
        card = parse_card(data, where=f"card of {me!r}")
        return fill_template(self.s.system_prompt, card_fields(card), where="persona system_prompt")

    def role_in_view(self, speaker: str, me: str) -> str:
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        return Reply(text.strip())


class CardSamplerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cards: str | None = None  # JSON file of cards (default: the shipped set)
    names: tuple[str, ...] = ()  # only these characters (default: all)
    order: str = "by-index"  # "by-index": card i mod n; "random": seeded draws


class CardSampler:
    """`persona-cards`: one character card per conversation: conversation i plays
    card i mod n (``order = "by-index"``, the default), or a seeded uniform draw
    (``order = "random"``)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            s = msgspec.convert(dict(settings), CardSamplerSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid persona-cards settings: {exc}") from None
        cards = load_cards(s.cards)
        if s.names:
            known = {c.name for c in cards}
            missing = [n for n in s.names if n not in known]
            if missing:
                raise ValueError(f"invalid persona-cards settings: `names`: unknown character(s) "
                                 f"{missing}; known: {sorted(known)}")
            cards = [c for c in cards if c.name in s.names]
        self.cards = cards
        self.order = check_order(s.order, "invalid persona-cards settings: order")

    def sample(self, rng: random.Random, index: int) -> dict[str, Any]:
        # `rng` is seeded from the conversation: its first draw is the random order's seed.
        seed = rng.getrandbits(63) if self.order == "random" else 0
        return to_dict(self.cards[item_index(len(self.cards), index, seed, self.order)])
