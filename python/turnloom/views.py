"""Each participant's view of a conversation, built in one place.

The engine (prompts for full renders and for chat APIs), resume and every
exporter call `view_messages`, so an exported view is exactly what the model
saw. A view holds, in order:

- the participant's system prompt, when it has one;
- each message whose speaker the view shows (`role_in_view` gives its role,
  None hides the speaker entirely), as OpenAI-format dicts;
- the participant's own messages with their `tool_calls` and
  `reasoning_content`; other speakers' messages as their text only (a message
  that is only tool calls is then left out: nobody else sees a call);
- tool results (`tool_call_id`) only in the view of the participant that made
  the call, as role "tool".
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from turnloom.messages import ToolCall, call_from_openai, call_to_openai


class Said(NamedTuple):
    """One message as recorded: who said it and its structure."""

    speaker: str
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    reasoning: str | None = None

    @property
    def plain(self) -> bool:
        """Text only: what every template renders as a fixed wrapping of the text."""
        return not self.tool_calls and self.tool_call_id is None and self.reasoning is None


RoleOf = Callable[[str], "str | None"]


def said_from_turns(turns: Iterable[Any]) -> list[Said]:
    """Messages from the engine's turn records."""
    return [Said(t.participant, t.text, t.tool_calls, t.tool_call_id, t.reasoning) for t in turns]


def said_from_messages(messages: Iterable[Any]) -> list[Said]:
    """Messages from a record's OpenAI-format transcript (`name` is the speaker)."""
    out = []
    for m in messages:
        if m.name is None:
            raise ValueError(f"message {m.content[:40]!r} names no participant")
        calls = tuple(call_from_openai(c) for c in m.tool_calls or ())
        out.append(Said(m.name, m.content, calls, m.tool_call_id, m.reasoning_content))
    return out


def message_in_view(said: Said, viewer: str, role: str | None,
                    caller: str | None = None) -> dict[str, Any] | None:
    """`said` as `viewer` sees it, or None when the view does not show it.
    `role` is the speaker's role in this view; `caller` the participant whose
    call a tool result answers."""
    if said.tool_call_id is not None:
        if caller != viewer:
            return None
        return {"role": "tool", "content": said.text, "tool_call_id": said.tool_call_id}
    if role is None:
        return None
    if said.speaker != viewer:
        if not said.text and said.tool_calls:
            return None
        return {"role": role, "content": said.text}
    out: dict[str, Any] = {"role": role, "content": said.text}
    if said.tool_calls:
        out["tool_calls"] = [call_to_openai(c) for c in said.tool_calls]
    if said.reasoning is not None:
        out["reasoning_content"] = said.reasoning
    return out


def view_messages(messages: Sequence[Said], viewer: str, role_of: RoleOf | Mapping[str, str | None],
                  system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The OpenAI-format messages of `viewer`'s view, system prompt first."""
    lookup: RoleOf = role_of.get if isinstance(role_of, Mapping) else role_of  # type: ignore[assignment]
    out: list[dict[str, Any]] = []
    if system_prompt is not None:
        out.append({"role": "system", "content": system_prompt})
    callers: dict[str, str] = {}
    for said in messages:
        for call in said.tool_calls:
            callers[call.id] = said.speaker
        caller = callers.get(said.tool_call_id) if said.tool_call_id is not None else None
        shown = message_in_view(said, viewer, lookup(said.speaker), caller)
        if shown is not None:
            out.append(shown)
    return out


def default_roles(viewer: str) -> RoleOf:
    """The built-in agents' view: own messages as "assistant", all others as "user"."""
    return lambda speaker: "assistant" if speaker == viewer else "user"
