"""Gold history: messages placed in a conversation before its first generated
turn, which the model under test did not write (MT-Eval's leading turns,
MT-Bench-101's golden context, attack replays).

A participant offers them through an optional method::

    def prefill(self, conversation: ConversationState, me: str) -> list[tuple[str, str]]

returning (role, text) pairs, "user" for its own messages and "assistant" for
its partner's. `prefill_messages` turns every participant's offer into
(participant, role, text) triples in the scenario's speaking order, checked
against that order, so that after k prefilled messages turn k is spoken by the
participant the round-robin names (the engine's turn counter stays valid).

The engine appends each triple as a real turn before scheduling the first
generation: a node in the forest with every view's segment (the speaker's own
view included, rendered from the text since nothing was generated), a turn
record whose meta is ``{"prefilled": true}``, and the turn scorers run on it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from turnloom.records import ConversationState

PREFILLED_META = {"prefilled": True}


class PrefilledMessage(NamedTuple):
    participant: str
    role: str
    text: str


def prefill_messages(conversation: ConversationState,
                     participants: Sequence[tuple[str, Any]],
                     order: Sequence[str]) -> list[PrefilledMessage]:
    """The gold history of one conversation. `participants` are (name, plugin
    object) pairs; `order` the speaking order (participant names, one round,
    the opener first). Raises ValueError naming the participant when an offer
    does not fit the order."""
    offers = []
    for name, obj in participants:
        fn = getattr(obj, "prefill", None)
        if not callable(fn):
            continue
        pairs = fn(conversation, name)
        if pairs:
            offers.append((name, list(pairs)))
    if not offers:
        return []
    if len(offers) > 1:
        names = ", ".join(n for n, _ in offers)
        raise ValueError(f"gold history offered by several participants ({names}); one may")
    owner, pairs = offers[0]
    if len(order) != 2 or owner not in order:
        raise ValueError(f"gold history of {owner!r} needs exactly two participants taking "
                         f"turns (the speaking order is {list(order)})")
    partner = order[1] if order[0] == owner else order[0]
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"{owner!r}: gold history item {i} must be a (role, text) pair")
        role, text = pair
        if role not in ("user", "assistant") or not text:
            raise ValueError(f"{owner!r}: gold history item {i} needs role user or assistant "
                             "and a non-empty text")
        speaker = owner if role == "user" else partner
        if speaker != order[i % 2]:
            raise ValueError(f"{owner!r}: gold history item {i} is spoken by {speaker!r}, but "
                             f"turn {i} belongs to {order[i % 2]!r} in the speaking order")
        out.append(PrefilledMessage(speaker, role, text))
    return out


def is_prefilled(conversation: ConversationState, turn: int) -> bool:
    """Whether turn `turn` of the conversation came from gold history."""
    t = conversation.turns[turn] if turn < len(conversation.turns) else None
    return bool(t is not None and getattr(t, "meta", None) and t.meta.get("prefilled"))
