"""Turns that follow the conversation: who speaks after a tool exchange's message.

Without tools the turn order runs round-robin over the messages. An assistant
message with tool calls goes to the environment that owns the first unanswered
call's tool (an unknown tool goes to the first tool environment, whose
validation answers with an error as tau-bench does); each result comes from
that environment, one call per turn; once every call is answered the turn goes
back to the caller; the caller's text reply ends its turn and the order resumes
with the next participant after it. Budgets: `run.max_tool_steps` tool-calling
messages in a row, `run.max_tool_calls` calls per conversation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnloom.agents import Reply
    from turnloom.engine.state import Branch
    from turnloom.runtime import ParticipantRT


def tool_name(schema: Any) -> str | None:
    """The name of a tool schema in OpenAI's form or the bare function form."""
    if isinstance(schema, dict):
        fn = schema.get("function", schema)
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
    return None


def tool_owners(engine: Any, br: Branch) -> tuple[dict[str, int], int]:
    """Tool name -> the environment that executes it, and the first tool environment
    (-1: none)."""
    owners: dict[str, int] = {}
    first = -1
    for p in engine.participants:
        if p.is_agent:
            continue
        tools = br.state.tools.get(p.name)
        if not tools:
            continue
        if first < 0:
            first = p.index
        for schema in tools:
            name = tool_name(schema)
            if name is not None:
                owners.setdefault(name, p.index)
    return owners, first


def route_after(engine: Any, br: Branch, p: ParticipantRT, reply: Reply) -> str | None:
    state = br.state
    run = engine.scenario.run
    if reply.tool_calls:
        br.tool_steps += 1
        br.tool_calls += len(reply.tool_calls)
        if br.tool_steps > run.max_tool_steps:
            return "max_tool_steps"
        if run.max_tool_calls is not None and br.tool_calls > run.max_tool_calls:
            return "max_tool_calls"
        return _to_owner(engine, br, reply.tool_calls[0].name)
    if reply.tool_call_id is not None:
        pending = state.pending_tool_calls()
        if pending:
            return _to_owner(engine, br, pending[0].name)
        caller = _caller_of(state, reply.tool_call_id)
        if caller is None:
            state.errors.append(f"{p.name!r} answered tool call {reply.tool_call_id!r}, "
                                "which no message made")
            return "error"
        br.route = engine.by_name[caller].index
        return None
    # A text message: the speaker's turn ends, the order goes on.
    br.rr += 1
    br.route = -1
    br.tool_steps = 0
    return None


def _to_owner(engine: Any, br: Branch, name: str) -> str | None:
    owners, first = tool_owners(engine, br)
    owner = owners.get(name, first)
    if owner < 0:
        br.state.errors.append(f"tool call {name!r} made, but no environment has tools "
                               "(an environment declares them with a tools() method)")
        return "error"
    br.route = owner
    return None


def _caller_of(state: Any, call_id: str) -> str | None:
    for rec in reversed(state.turns):
        if any(c.id == call_id for c in rec.tool_calls):
            return rec.participant
    return None


def replay_routing(engine: Any, br: Branch) -> None:
    """Set a rebuilt branch's routing from its messages, as the live run did."""
    from turnloom.agents import Reply

    br.rr = br.tool_steps = br.tool_calls = 0
    br.route = -1
    state = br.state
    saved = state.turns
    for k, rec in enumerate(saved):
        state.turns = saved[:k + 1]  # the messages as they stood when this one was routed
        p = engine.by_name[rec.participant]
        reply = Reply(rec.text, tool_calls=rec.tool_calls, tool_call_id=rec.tool_call_id,
                      reasoning=rec.reasoning)
        if not reply.tool_calls and reply.tool_call_id is None and br.route < 0:
            br.rr += 1
        else:
            route_after(engine, br, p, reply)
    state.turns = saved
