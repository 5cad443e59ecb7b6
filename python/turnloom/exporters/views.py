"""A finished conversation as one participant saw it: its messages with the
roles of its view, and those messages rendered with its chat format into
token ids plus a loss mask over its own turns.

Views follow the built-in agents: the participant's system prompt first, its
own messages as "assistant", everyone else's as "user". Token ids are the chat
template's rendering of the recorded text, so they equal what a trainer would
get from ``apply_chat_template`` on the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from turnloom.records import ConversationRecord, Message
from turnloom.tokenizer import ChatFormat

OWN_ROLE = "assistant"
OTHER_ROLE = "user"


def transcript(record: ConversationRecord) -> list[Message]:
    """The record's messages without the leading system prompt(s)."""
    return list(record.messages[len(record.messages) - len(record.turns):])


def speaker_of(message: Message) -> str:
    if message.name is None:
        raise ValueError(f"message {message.content[:40]!r} names no participant")
    return message.name


def default_participant(record: ConversationRecord) -> str:
    """The first participant with a backend and the assistant role, else the first
    with a backend: the party a dataset usually trains."""
    with_backend = [n for n, p in record.participants.items() if p.get("backend")]
    for name in with_backend:
        if record.participants[name].get("role") == "assistant":
            return name
    if with_backend:
        return with_backend[0]
    raise ValueError(f"{record.conversation_id}: no participant speaks through a backend")


def check_trainable(record: ConversationRecord, participant: str) -> None:
    info = record.participants.get(participant)
    if info is None:
        raise ValueError(f"unknown participant {participant!r} (participants: "
                         f"{', '.join(record.participants)})")
    if not info.get("backend"):
        raise ValueError(f"participant {participant!r} ({info.get('agent')}) has no backend: "
                         "it is an environment and has no tokens to train")


def view_messages(record: ConversationRecord, participant: str,
                  messages: Sequence[Message] | None = None,
                  system: bool = True) -> list[dict[str, str]]:
    """Messages in `participant`'s view (OpenAI format); `messages` defaults to the
    whole transcript, and the participant's system prompt leads when `system`."""
    out: list[dict[str, str]] = []
    prompt = record.participants.get(participant, {}).get("system_prompt")
    if system and prompt is not None:
        out.append({"role": "system", "content": prompt})
    for m in transcript(record) if messages is None else messages:
        role = OWN_ROLE if speaker_of(m) == participant else OTHER_ROLE
        out.append({"role": role, "content": m.content})
    return out


@dataclass
class Tokens:
    """Token ids of a rendered view and a 0/1 mask of the participant's own tokens."""

    input_ids: list[int]
    loss_mask: list[int]

    @property
    def trained(self) -> int:
        return sum(self.loss_mask)


class ViewRenderer:
    """Renders views with one chat format, message by message (append-only)."""

    def __init__(self, fmt: ChatFormat) -> None:
        self.fmt = fmt
        self.prefix = list(fmt.generation_prefix(OWN_ROLE))
        close = list(fmt.close_generated([], "stop"))
        if not close:
            raise ValueError("the chat format closes messages with no token: cannot find "
                             "the end-of-turn token to train")
        self.end_id = close[0]
        self.trailing = len(close) - 1  # tokens after the end-of-turn token (e.g. "\n")

    def segments(self, messages: Sequence[dict[str, str]]) -> list[list[int]]:
        return self.fmt.segments([m["role"] for m in messages], [m["content"] for m in messages])

    def trained_span(self, segment: Sequence[int]) -> tuple[int, int]:
        """[start, end) of what the model generates in its own message: the text
        and its end-of-turn token, without the role header or trailing newline."""
        n = len(segment)
        start = len(self.prefix)
        end = n - self.trailing
        if list(segment[:start]) != self.prefix or end <= start or segment[end - 1] != self.end_id:
            raise ValueError("an assistant message does not render as the generation prefix, "
                             "text and end-of-turn token: this chat format cannot be masked")
        return start, end

    def render(self, messages: Sequence[dict[str, str]]) -> Tokens:
        ids: list[int] = []
        mask: list[int] = []
        for m, seg in zip(messages, self.segments(messages)):
            ids.extend(seg)
            if m["role"] == OWN_ROLE:
                start, end = self.trained_span(seg)
                mask.extend([0] * start + [1] * (end - start) + [0] * (len(seg) - end))
            else:
                mask.extend([0] * len(seg))
        return Tokens(ids, mask)

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The context before an own message, ending with the generation prefix."""
        return [t for seg in self.segments(messages) for t in seg] + self.prefix

    def response_ids(self, text: str) -> list[int]:
        """An own message as generated: text and end-of-turn token."""
        seg = self.fmt.segment(OWN_ROLE, text)
        start, end = self.trained_span(seg)
        return list(seg[start:end])
