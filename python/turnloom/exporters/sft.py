"""Supervised fine-tuning datasets: one row per conversation branch.

- ``sft-messages``: OpenAI-style message lists (``messages``, tool calls and results in
  OpenAI's tool-calling form) and the participant's ``tools``.
- ``sharegpt``: ShareGPT ``conversations`` of ``{"from", "value"}``.
- ``sft-tokens``: chat-template token ids and a loss mask that trains one
  participant only (1 on its messages' text and end-of-turn token).

With `participant` set, the messages are that participant's view (its system
prompt, its turns as "assistant"); without it, the transcript as recorded.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator

import msgspec

from turnloom.exporters.base import CommonSettings, StreamingExporter
from turnloom.exporters.runinfo import load_chat_format
from turnloom.exporters.views import (
    ViewRenderer,
    check_trainable,
    default_participant,
    view_messages,
    view_tools,
    view_with_owners,
)
from turnloom.records import ConversationRecord

_SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


class MessagesSettings(CommonSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    participant: str | None = None  # whose view; default: the transcript as recorded


def _ids(record: ConversationRecord) -> dict[str, Any]:
    return {"id": f"{record.conversation_id}#{record.branch}",
            "conversation_id": record.conversation_id, "index": record.index,
            "branch": record.branch}


_ID_COLUMNS = {"id": "string", "conversation_id": "string", "index": "int", "branch": "int"}


def _messages(record: ConversationRecord, participant: str | None) -> list[dict[str, Any]]:
    if participant is None:
        return [msgspec.to_builtins(m) for m in record.messages]
    check_trainable(record, participant)
    return list(view_messages(record, participant))


class SFTMessages(StreamingExporter):
    """OpenAI-style chat messages per branch, with scores and stop reason."""

    name = "sft-messages"
    Settings = MessagesSettings
    # `tools`: the participant's tool schemas (what `apply_chat_template(tools=...)` and
    # TRL's tool-calling rows take), null without tools or a participant.
    columns: ClassVar[dict[str, str]] = {**_ID_COLUMNS, "messages": "messages",
                                         "tools": "tools", "stop_reason": "string",
                                         "scores": "json"}

    def rows(self, record: ConversationRecord) -> Iterator[dict[str, Any]]:
        s: MessagesSettings = self.settings  # type: ignore[assignment]
        tools = None if s.participant is None else view_tools(record, s.participant)
        yield {**_ids(record), "messages": _messages(record, s.participant), "tools": tools,
               "stop_reason": record.stop_reason, "scores": record.scores}


class ShareGPT(StreamingExporter):
    """ShareGPT format: ``conversations`` with ``from`` (system/human/gpt) and ``value``."""

    name = "sharegpt"
    Settings = MessagesSettings
    columns: ClassVar[dict[str, str]] = {**_ID_COLUMNS, "conversations": "sharegpt",
                                         "scores": "json"}

    def rows(self, record: ConversationRecord) -> Iterator[dict[str, Any]]:
        s: MessagesSettings = self.settings  # type: ignore[assignment]
        turns = [{"from": _SHAREGPT_FROM.get(m["role"], m["role"]), "value": m["content"]}
                 for m in _messages(record, s.participant)]
        yield {**_ids(record), "conversations": turns, "scores": record.scores}


class TokensSettings(CommonSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    participant: str | None = None  # whose turns are trained; default: the assistant
    tokenizer: str | None = None  # chat-format spec; default: the participant's backend's


class SFTTokens(StreamingExporter):
    """Token ids of one participant's view with a loss mask over its own turns."""

    name = "sft-tokens"
    Settings = TokensSettings
    columns: ClassVar[dict[str, str]] = {**_ID_COLUMNS, "participant": "string",
                                         "input_ids": "ids", "loss_mask": "mask",
                                         "num_tokens": "int", "num_trained": "int"}

    def prepare(self) -> None:
        self._renderer: ViewRenderer | None = None
        self._participant: str | None = None

    def _setup(self, record: ConversationRecord) -> tuple[str, ViewRenderer]:
        if self._renderer is None or self._participant is None:
            s: TokensSettings = self.settings  # type: ignore[assignment]
            participant = s.participant or default_participant(record)
            check_trainable(record, participant)
            spec = s.tokenizer or self.info.tokenizer_spec(participant)
            self._renderer = ViewRenderer(load_chat_format(spec))
            self._participant = participant
        return self._participant, self._renderer

    def rows(self, record: ConversationRecord) -> Iterator[dict[str, Any]]:
        participant, renderer = self._setup(record)
        messages, own = view_with_owners(record, participant)
        tokens = renderer.render(messages, own, view_tools(record, participant))
        if tokens.trained == 0:
            self.stats["skipped: no turns of the participant"] += 1
            return
        yield {**_ids(record), "participant": participant, "input_ids": tokens.input_ids,
               "loss_mask": tokens.loss_mask, "num_tokens": len(tokens.input_ids),
               "num_trained": tokens.trained}
