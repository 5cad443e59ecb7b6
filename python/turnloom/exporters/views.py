"""A finished conversation as one participant saw it: its messages with the
roles of its view, and those messages rendered with its chat format into
token ids plus a loss mask over its own turns.

Views are built by `turnloom.views`, the code the engine builds prompts with,
from the view recorded with each agent (the role each speaker had in it; a
hidden speaker's messages are absent) and its tools, so an exported view holds
exactly what the model saw. Records written before views were recorded fall
back to the built-in agents' view: own messages as "assistant", everyone
else's as "user". Token ids are the chat template's render of the recorded
messages (`ChatFormat.render_ids`, which is `apply_chat_template`'s with
contents encoded as plain text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from turnloom import views
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


def _role_of(record: ConversationRecord, participant: str) -> views.RoleOf:
    recorded = record.participants.get(participant, {}).get("view")
    if isinstance(recorded, dict):
        return recorded.get
    return views.default_roles(participant)


def view_messages(record: ConversationRecord, participant: str,
                  messages: Sequence[Message] | None = None,
                  system: bool = True) -> list[dict[str, Any]]:
    """Messages in `participant`'s view (OpenAI format); `messages` defaults to the
    whole transcript, and the participant's system prompt leads when `system`."""
    return view_with_owners(record, participant, messages, system)[0]


def view_with_owners(record: ConversationRecord, participant: str,
                     messages: Sequence[Message] | None = None,
                     system: bool = True) -> tuple[list[dict[str, Any]], list[bool]]:
    """The view's messages and, for each, whether the participant wrote it."""
    said = views.said_from_messages(transcript(record) if messages is None else messages)
    prompt = record.participants.get(participant, {}).get("system_prompt") if system else None
    role_of = _role_of(record, participant)
    out: list[dict[str, Any]] = []
    own: list[bool] = []
    if prompt is not None:
        out.append({"role": "system", "content": prompt})
        own.append(False)
    callers: dict[str, str] = {}
    for m in said:
        for call in m.tool_calls:
            callers[call.id] = m.speaker
        caller = callers.get(m.tool_call_id) if m.tool_call_id is not None else None
        shown = views.message_in_view(m, participant, role_of(m.speaker), caller)
        if shown is not None:
            out.append(shown)
            own.append(m.speaker == participant)
    return out, own


def view_tools(record: ConversationRecord, participant: str) -> list[dict[str, Any]] | None:
    tools = record.participants.get(participant, {}).get("tools")
    return tools if isinstance(tools, list) and tools else None


@dataclass
class Tokens:
    """Token ids of a rendered view and a 0/1 mask of the participant's own tokens."""

    input_ids: list[int]
    loss_mask: list[int]

    @property
    def trained(self) -> int:
        return sum(self.loss_mask)


class ViewRenderer:
    """Renders views with one chat format: the whole view as the template renders
    it, and a loss mask over the participant's own messages (what it generates:
    the text, tool calls included, and the end-of-turn token)."""

    def __init__(self, fmt: ChatFormat) -> None:
        self.fmt = fmt
        self.prefix = list(fmt.generation_prefix(OWN_ROLE))
        close = list(fmt.close_generated([], "stop"))
        if not close:
            raise ValueError("the chat format closes messages with no token: cannot find "
                             "the end-of-turn token to train")
        self.end_id = close[0]
        self.trailing = len(close) - 1  # tokens after the end-of-turn token (e.g. "\n")

    def render(self, messages: Sequence[dict[str, Any]], own: Sequence[bool] | None = None,
               tools: Sequence[dict[str, Any]] | None = None) -> Tokens:
        """The view's ids and a mask that is 1 on each own message's generated span.
        `own` defaults to the messages in the "assistant" role."""
        if own is None:
            own = [m["role"] == OWN_ROLE for m in messages]
        ids = self.fmt.render_ids(messages, tools=tools)
        mask = [0] * len(ids)
        for k, (m, mine) in enumerate(zip(messages, own)):
            if not mine:
                continue
            start, end = self._span(messages, k, m["role"], ids, tools)
            mask[start:end] = [1] * (end - start)
        return Tokens(ids, mask)

    def _span(self, messages: Sequence[dict[str, Any]], k: int, role: str, ids: Sequence[int],
              tools: Sequence[dict[str, Any]] | None) -> tuple[int, int]:
        """[start, end) of message k's generated part in the whole view's ids: after
        the prompt that opened it, through its end-of-turn token."""
        prompt = self.fmt.prompt_ids(messages[:k], role, tools)
        upto = self.fmt.render_ids(messages[:k + 1], tools=tools)
        end = len(upto) - self.trailing
        if upto[:len(prompt)] != prompt or list(ids[:len(upto)]) != upto:
            raise ValueError(f"message {k} ({role}) is rendered differently once later messages "
                             "follow (the template rewrites earlier turns): its tokens cannot be "
                             "masked in one row")
        if end <= len(prompt) or upto[end - 1] not in (self.end_id, *self.fmt.tokenizer.eos_token_ids):
            raise ValueError(f"message {k} ({role}) does not end with the end-of-turn token: this "
                             "chat format cannot be masked")
        return len(prompt), end

    def prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The context before an own message, ending with the generation prefix."""
        return self.fmt.prompt_ids(messages)

    def response_ids(self, text: str) -> list[int]:
        """An own message as generated: text and end-of-turn token."""
        ids = self.fmt.close_generated(self.fmt.tokenizer.encode_text(text), "stop")
        return ids[:len(ids) - self.trailing]
