"""Character cards: who a persona is, when it lives, what it knows and how it talks."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Mapping

import msgspec

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class CharacterCard(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                    omit_defaults=True):
    name: Text
    description: Text
    era: Text  # when and where the character lives, in words
    year: int  # roughly when (negative: BC); contrastive questions come from distant years
    category: Text  # genre or field, e.g. "detective fiction"
    knowledge: Annotated[tuple[Text, ...], msgspec.Meta(min_length=1)]  # facts it knows
    speaking_style: Text
    questions: tuple[Text, ...] = ()  # role-specific questions it can answer


class CardError(ValueError):
    """A card does not match the schema; the message names the card and field."""


def parse_card(data: Any, *, where: str = "card") -> CharacterCard:
    if isinstance(data, CharacterCard):
        return data
    if not isinstance(data, Mapping):
        raise CardError(f"{where}: expected an object, got {type(data).__name__}")
    try:
        return msgspec.convert(dict(data), CharacterCard)
    except msgspec.ValidationError as exc:
        raise CardError(f"{where}: {exc}") from None


def load_cards(path: str | Path | None = None) -> list[CharacterCard]:
    """Cards from a JSON list (default: the shipped set); names must be unique."""
    if path is None:
        source = "turnloom_roleplay/data/cards.json"
        text = resources.files("turnloom_roleplay").joinpath("data/cards.json").read_text("utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CardError(f"{source}: cannot read cards: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CardError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, list) or not data:
        raise CardError(f"{source}: expected a non-empty JSON list of cards")
    cards = [parse_card(item, where=f"{source}[{i}]") for i, item in enumerate(data)]
    names = [c.name for c in cards]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CardError(f"{source}: duplicate card name(s): {', '.join(dupes)}")
    return cards


def to_dict(card: CharacterCard) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(card)
    return data


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def fill_template(template: str, values: Mapping[str, str], *, where: str = "template") -> str:
    """Replace each ``{name}`` in one pass; substituted text is never scanned again,
    so card text cannot act as a placeholder. Unknown placeholders are errors."""
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(values))
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {', '.join('{%s}' % u for u in unknown)}"
                         f"; allowed: {', '.join('{%s}' % k for k in sorted(values))}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


PROMPT_FIELDS = ("name", "description", "era", "speaking_style", "category", "knowledge")


def card_fields(card: CharacterCard) -> dict[str, str]:
    """The values a persona prompt template can use."""
    return {"name": card.name, "description": card.description, "era": card.era,
            "speaking_style": card.speaking_style, "category": card.category,
            "knowledge": "\n".join(f"- {k}" for k in card.knowledge)}
