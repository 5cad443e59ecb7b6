"""Prompts and requests: what each backend is sent for a turn.

A view's prompt is its lane (grown by one segment per message, token-in/token-
out for the speaker's own messages) plus the generation prefix, wherever the
template is append-only for what the view holds. Where it is not (the template
rewrites earlier turns, the view has tools, tool calls, tool results or
reasoning) the branch's bit for that view is set and the prompt is rendered
whole from the view's messages (`turnloom.views`), as `apply_chat_template`
renders it. Message backends (chat APIs) get the view's messages and tools.
"""

from __future__ import annotations

from typing import Any, Sequence

import msgspec

from turnloom.backends.base import GenRequest
from turnloom.engine.base import EngineBase
from turnloom.engine.state import Branch, Job
from turnloom.runtime import BackendRT, ParticipantRT
from turnloom.views import Said, message_in_view, said_from_turns, view_messages

_replace = msgspec.structs.replace


class PromptsMixin(EngineBase):
    """The engine's prompt building (mixed into Engine)."""

    role_tables: dict[int, dict[str, str | None]]
    full_from_start: int
    full_used: bool

    def _init_prompts(self) -> None:
        # role_tables[v][speaker name]: the speaker's role in view v (None: hidden)
        self.role_tables = {v.index: {s.name: self.roles[v.index][s.index]  # type: ignore[attr-defined]
                                      for s in self.participants} for v in self.views}
        # Views whose template is not append-only are rendered whole from the start.
        self.full_from_start = 0
        for v in self.views:
            if not getattr(v.fmt, "append_only", True):
                self.full_from_start |= 1 << v.index
        # Set once any branch renders a view whole: until then prompts are lanes only.
        self.full_used = bool(self.full_from_start)

    def _view(self, br: Branch, p: ParticipantRT) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """`p`'s view of the branch: its messages (OpenAI format) and its tools."""
        state = br.state
        messages = view_messages(said_from_turns(state.turns), p.name, self.role_tables[p.index],
                                 state.system_prompts.get(p.name))
        return messages, state.tools.get(p.name)

    def _full_prompt(self, br: Branch, p: ParticipantRT) -> list[int]:
        messages, tools = self._view(br, p)
        own_role = self.role_tables[p.index][p.name] or "assistant"
        return p.fmt.prompt_ids(messages, own_role, tools)

    def _prompts(self, jobs: Sequence[Job]) -> list[list[int]]:
        """Each job's prompt: its speaker's lane plus the generation prefix, or the
        view rendered whole where the branch's bit for that view is set."""
        prompts = self.forest.lanes_for([j.br.node for j in jobs], [j.p.index for j in jobs],
                                        self._prefixes)  # type: ignore[attr-defined]
        if self.full_used:
            for k, job in enumerate(jobs):
                if job.br.full >> job.p.index & 1:
                    prompts[k] = self._full_prompt(job.br, job.p)
        return prompts

    def _turn_requests(self, be: BackendRT, jids: Sequence[int], jobs: Sequence[Job]) -> list[GenRequest]:
        prompts = self._prompts(jobs)
        if getattr(be.backend, "takes", "tokens") != "messages":
            return [GenRequest(rid=str(jid), input_ids=prompt,
                               params=_replace(job.p.params, seed=job.seed),
                               affinity=job.br.tree.root)
                    for jid, job, prompt in zip(jids, jobs, prompts)]
        reqs = []
        for jid, job, prompt in zip(jids, jobs, prompts):
            messages, tools = self._view(job.br, job.p)
            reqs.append(GenRequest(rid=str(jid), input_ids=prompt,
                                   params=_replace(job.p.params, seed=job.seed),
                                   affinity=job.br.tree.root, messages=messages,
                                   tools=list(tools) if tools else None))
        return reqs

    # -- segments of a new message ---------------------------------------------------------

    def _segments_one(self, br: Branch, p: ParticipantRT, said: Said,
                      output_ids: list[int] | None, finish: str,
                      full: int) -> tuple[dict[int, list[int]], int]:
        """The segment each view gets for one message, and the views' full bits after
        it. Used for every message that is not plain text going into grown views,
        and by resume for all (the same rules as the fast path in `_apply`)."""
        seg: dict[int, list[int]] = {}
        lens = br.lens
        own_role = None
        if p.is_agent:
            own_role = self.role_tables[p.index][p.name] or "assistant"
            if not said.plain:
                full |= 1 << p.index
            if output_ids is not None:
                closed = p.prefix + p.fmt.close_generated(output_ids, finish)
                if not lens[p.index] and not full >> p.index & 1:
                    extra = p.fmt.first_extra(own_role)
                    if extra is None:
                        full |= 1 << p.index
                    else:
                        closed = extra + closed
                seg[p.index] = closed
            else:  # a message the agent did not generate (prefilled history)
                seg[p.index] = p.fmt.segment(own_role, said.text, first=not lens[p.index])
        caller = None
        if said.tool_call_id is not None:
            for rec in reversed(br.state.turns):
                if any(c.id == said.tool_call_id for c in rec.tool_calls):
                    caller = rec.participant
                    break
        for v in self.views:
            if v is p:
                continue
            shown = message_in_view(said, v.name, self.role_tables[v.index][p.name], caller)
            if shown is None:
                continue
            if not said.plain:
                full |= 1 << v.index
            role = shown["role"] if shown["role"] != "tool" else "user"  # lengths only: rendered whole
            seg[v.index] = v.fmt.segment(role, shown["content"], first=not lens[v.index])
        if full:
            self.full_used = True
        return seg, full
