"""Built-in participants: LLM agents, environments and the inline profile sampler."""

from __future__ import annotations

import json
import random
import re
from typing import Any, Mapping

import msgspec

from turnloom.agents import Reply
from turnloom.hookspecs import Register, hookimpl
from turnloom.records import ConversationState

_PLACEHOLDER = re.compile(r"\{profile(?:\.([A-Za-z_][A-Za-z0-9_]*))?\}")

USER_PROMPT = (
    "You are a person chatting with an AI assistant. Write only your own next message, "
    "short and natural, as this person would.\n{profile}"
)


def render_profile(profile: Mapping[str, Any]) -> str:
    """A profile as `key: value` lines (nested values as JSON)."""
    lines = []
    for key, value in profile.items():
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def render_prompt(template: str, profile: Mapping[str, Any] | None) -> str:
    """Fill `{profile}` and `{profile.FIELD}` in one pass. Nothing else is a placeholder
    and substituted values are never expanded again, so a profile cannot inject into
    the template (unlike str.format, no attribute or index access)."""
    profile = profile or {}

    def sub(m: re.Match[str]) -> str:
        field = m.group(1)
        if field is None:
            return render_profile(profile)
        value = profile.get(field, "")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _PLACEHOLDER.sub(sub, template)


def _settings(cls: type, settings: Mapping[str, Any], what: str) -> Any:
    try:
        return msgspec.convert(dict(settings), cls)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {what} settings: {exc}") from None


# -- LLM agents -------------------------------------------------------------------------


class AssistantSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    system_prompt: str | None = None
    strip: bool = True


class Assistant:
    """A generic LLM assistant: its own messages are "assistant", all others "user"."""

    role = "assistant"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = _settings(AssistantSettings, settings, "assistant")
        self.template = s.system_prompt
        self.strip = s.strip

    def system_prompt(self, conversation: ConversationState, me: str) -> str | None:
        if self.template is None:
            return None
        return render_prompt(self.template, conversation.profiles.get(me))

    def role_in_view(self, speaker: str, me: str) -> str:
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        return Reply(text.strip() if self.strip else text)


class UserSimulatorSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    system_prompt: str = USER_PROMPT
    stop_phrases: tuple[str, ...] = ()
    stop_reason: str = "user_stop"
    strip: bool = True


class UserSimulator(Assistant):
    """A generic LLM user. In its own view the roles are flipped (the assistant's
    messages are "user" turns to it); a stop phrase in its output ends the
    conversation, with the text before the phrase kept as its last message."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = _settings(UserSimulatorSettings, settings, "user-simulator")
        self.template = s.system_prompt
        self.strip = s.strip
        self.stop_phrases = s.stop_phrases
        self.stop_reason = s.stop_reason

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        for phrase in self.stop_phrases:
            pos = text.find(phrase)
            if pos >= 0:
                return Reply(text[:pos].strip() if self.strip else text[:pos],
                             stop=self.stop_reason)
        return Reply(text.strip() if self.strip else text)


# -- environments ---------------------------------------------------------------------


class ScriptedUserSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    lines: tuple[str, ...]
    shuffle: bool = False  # seeded choice instead of cycling in order
    stop_after: int | None = None  # end the conversation after this many own lines
    stop_reason: str = "script_end"


class ScriptedUser:
    """Canned user lines, cycling in order (or drawn with the turn's seeded rng)."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = _settings(ScriptedUserSettings, settings, "scripted-user")
        if not s.lines:
            raise ValueError("invalid scripted-user settings: `lines` must not be empty")
        self.s = s

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        said = sum(1 for m in conversation.messages if m[0] == me)
        lines = self.s.lines
        text = rng.choice(lines) if self.s.shuffle else lines[said % len(lines)]
        stop = None
        if self.s.stop_after is not None and said + 1 >= self.s.stop_after:
            stop = self.s.stop_reason
        return Reply(text, stop=stop)


class EchoSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    prefix: str = ""
    opening: str = "Hello!"  # what it says when it speaks first


class Echo:
    """Repeats the previous message (a minimal deterministic environment)."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _settings(EchoSettings, settings, "echo")

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        if not conversation.messages:
            return Reply(self.s.opening)
        return Reply(self.s.prefix + conversation.messages[-1][2])


# -- samplers -------------------------------------------------------------------------


class InlineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    profiles: tuple[dict[str, Any], ...]
    weights: tuple[float, ...] | None = None


class InlineSampler:
    """Profiles listed in the scenario, one drawn per conversation (seeded)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = _settings(InlineSettings, settings, "inline sampler")
        if not s.profiles:
            raise ValueError("invalid inline sampler settings: `profiles` must not be empty")
        if s.weights is not None and len(s.weights) != len(s.profiles):
            raise ValueError("invalid inline sampler settings: one weight per profile is needed")
        self.profiles = s.profiles
        self.weights = s.weights

    def sample(self, rng: random.Random, index: int) -> dict[str, Any]:
        if self.weights is None:
            return dict(self.profiles[rng.randrange(len(self.profiles))])
        return dict(rng.choices(self.profiles, weights=self.weights)[0])


@hookimpl
def register_agents(register: Register) -> None:
    register("assistant", Assistant)
    register("user-simulator", UserSimulator)


@hookimpl
def register_environments(register: Register) -> None:
    register("scripted-user", ScriptedUser)
    register("echo", Echo)


@hookimpl
def register_samplers(register: Register) -> None:
    register("inline", InlineSampler)
