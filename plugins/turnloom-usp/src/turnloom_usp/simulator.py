"""The `usp-user` agent: an LLM that plays a user with an implicit profile."""

from __future__ import annotations

from typing import Annotated, Any, Mapping

import msgspec

from turnloom.agents import Reply
from turnloom.records import ConversationState
from turnloom_usp.profile import parse_profile, require_complete
from turnloom_usp.render import fill_template, render_profile

DEFAULT_END_MARKER = "[END]"

DEFAULT_PROMPT = """\
You are a person talking to an AI assistant. You are the user, not the assistant: \
never offer help and never say you are an AI. Write only your own next message, \
one to three sentences, in your own voice. You may mention anything that fits the \
person below, even details that are not written here.

{profile}

When you have what you wanted, or want to stop, end your message with {end_marker}"""


class UspUserSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    system_prompt: str = DEFAULT_PROMPT  # placeholders: {profile}, {end_marker}
    end_marker: str = DEFAULT_END_MARKER
    stop_reason: str = "user_done"
    min_turns: Annotated[int, msgspec.Meta(ge=1)] = 1  # own messages before the end marker counts
    # True: in its own view its messages are "assistant" turns and the others' "user"
    # turns, so any chat model can play the user. False: its messages stay "user" turns
    # and it generates as the user, as USP's released checkpoint was trained to.
    role_flip: bool = True


class UspUser:
    """Plays the user side. By default the roles are flipped in its own view: its
    messages are "assistant" turns and the assistant's are "user" turns, so any
    chat model can play it. With `role_flip = false` they are not: it writes the
    "user" turns of an ordinary chat, which is what USP's released checkpoint
    was trained to do. It ends the conversation by writing the end marker."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), UspUserSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid usp-user settings: {exc}") from None
        if not self.s.end_marker.strip():
            raise ValueError("invalid usp-user settings: `end_marker` must not be blank")
        # Fail on a bad template now, not in the first conversation.
        fill_template(self.s.system_prompt, {"profile": "", "end_marker": ""},
                      where="usp-user system_prompt")

    def system_prompt(self, conversation: ConversationState, me: str) -> str:
        where = f"profile of {me!r}"
        data = conversation.profiles.get(me)
        if data is None:
            raise ValueError(f"{where}: none was sampled (give the participant a sampler, "
                             "e.g. sampler = \"usp-profiles\")")
        profile = require_complete(parse_profile(data, where=where), where=where)
        return fill_template(self.s.system_prompt,
                             {"profile": render_profile(profile), "end_marker": self.s.end_marker},
                             where="usp-user system_prompt")

    def role_in_view(self, speaker: str, me: str) -> str:
        mine, theirs = ("assistant", "user") if self.s.role_flip else ("user", "assistant")
        return mine if speaker == me else theirs

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        pos = text.find(self.s.end_marker)
        if pos < 0:
            return Reply(text.strip())
        said = len(conversation.turns_of(me)) + 1
        kept = text[:pos].strip()
        if said < self.s.min_turns:
            return Reply(kept or text.replace(self.s.end_marker, "").strip())
        return Reply(kept, stop=self.s.stop_reason, meta={"end_marker": True})
