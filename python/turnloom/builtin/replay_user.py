"""The ``replay-user`` environment: plays the user turns of a dataset file, one
record per conversation, by index (conversation i plays record i).

Each record's user messages are spoken in order, one per user turn, whatever
the model answered; after the last one the conversation ends with
`stop_reason` (default "replay_end"). A record's gold history (earlier turns
the model under test did not write) is handled by `history`:

- "prefill" (default): offered as gold history through `prefill` (see
  `turnloom.prefill`), to enter the conversation as real messages before the
  first generated turn. An engine that does not place it raises an error at
  the first turn rather than play the record without its context.
- "replay": its user messages are replayed first and the model answers them
  itself (the gold answers are dropped).
- "drop": ignored.

The record's id and meta are kept in the conversation's meta under "replay".
File shapes and the public formats are described in `turnloom.replay_data`.
"""

from __future__ import annotations

import random
from typing import Any, Literal, Mapping

import msgspec

from turnloom.agents import Reply
from turnloom.hookspecs import Register, hookimpl
from turnloom.prefill import is_prefilled
from turnloom.records import ConversationState
from turnloom.replay_data import FORMATS, ReplayDataError, ReplayItem, load_replay


class ReplayUserSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str  # JSON lines or .parquet; relative paths from the working directory
    format: str = "turnloom"  # turnloom, multi-if, mt-eval or mt-bench-101
    history: Literal["prefill", "replay", "drop"] = "prefill"
    wrap: bool = False  # conversation i plays record i % n instead of failing past the end
    stop_reason: str = "replay_end"


class ReplayUser:
    """A dataset's user turns, replayed by conversation index."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), ReplayUserSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid replay-user settings: {exc}") from None
        if self.s.format not in FORMATS:
            raise ValueError(f"invalid replay-user settings: format {self.s.format!r} is not "
                             f"one of {', '.join(FORMATS)}")
        try:
            self.items = load_replay(self.s.path, self.s.format)
        except (ReplayDataError, OSError) as exc:
            raise ValueError(f"replay-user: {exc}") from None

    def item(self, index: int) -> ReplayItem:
        n = len(self.items)
        if index >= n and not self.s.wrap:
            raise IndexError(f"conversation {index} has no record: {self.s.path} holds {n} "
                             f"(run at most {n} conversations, or set wrap = true)")
        return self.items[index % n]

    def prefill(self, conversation: ConversationState, me: str) -> list[tuple[str, str]]:
        if self.s.history != "prefill":
            return []
        return list(self.item(conversation.index).history)

    def script(self, item: ReplayItem) -> tuple[str, ...]:
        if self.s.history == "replay":
            return tuple(text for role, text in item.history if role == "user") + item.turns
        return item.turns

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        item = self.item(conversation.index)
        gold = len(item.history) if self.s.history == "prefill" else 0
        if gold and not (len(conversation.turns) >= gold
                         and all(is_prefilled(conversation, t) for t in range(gold))):
            raise RuntimeError(f"record {item.id!r} has {gold} gold-history messages, which the "
                               "engine did not prefill; set history = \"replay\" or \"drop\"")
        said = sum(1 for t in range(gold, len(conversation.messages))
                   if conversation.messages[t][0] == me)
        script = self.script(item)
        if said == 0:
            conversation.meta["replay"] = {"id": item.id, "meta": item.meta}
        if said >= len(script):
            return Reply("", stop=self.s.stop_reason)
        return Reply(script[said])


@hookimpl
def register_environments(register: Register) -> None:
    register("replay-user", ReplayUser)
