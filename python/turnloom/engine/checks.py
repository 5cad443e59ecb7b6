"""Checks on what plugins and backends hand the engine, so a fault is pinned on its source."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import msgspec

from turnloom import _core, errorlog
from turnloom.agents import Reply
from turnloom.backends.base import GenRequest, GenResult
from turnloom.engine.state import Branch
from turnloom.messages import ToolCall
from turnloom.records import (
    ConversationState,
)
from turnloom.runtime import (
    ParticipantRT,
)
from turnloom.seeds import (
    turn_seed,
)

_json = msgspec.json.Encoder()


def _json_encode(value: Any) -> bytes:
    """A plugin's JSON value, encoded, or TypeError saying why it is not JSON."""
    try:
        return _json.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"not JSON-serialisable: {exc}") from None


def _require_json(value: Any, what: str) -> None:
    """Plugin output goes to the log and to JSON files: check it encodes now, where
    the fault can still be pinned on the plugin."""
    try:
        _json.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None


def _turn_seeds(branches: Sequence[Branch]) -> list[int]:
    """The sampling seed of each branch's next turn (`turn_seed`, computed in bulk)."""
    seeds = [br.tree.seed for br in branches]
    ids = [br.branch for br in branches]
    turns = [br.turn for br in branches]
    try:
        return _core.turn_seeds(seeds, ids, turns)
    except OverflowError:  # an id outside 0..2**64: the exact definition copes
        return [turn_seed(*args) for args in zip(seeds, ids, turns)]


def _checked_reply(reply: Any) -> Reply:
    """A participant's reply, or an exception saying what is wrong with it."""
    if type(reply) is not Reply and not isinstance(reply, Reply):
        raise TypeError(f"returned {type(reply).__name__}, expected Reply")
    if not reply.text.isascii():
        reply.text.encode()  # a lone surrogate fails here, not in a tokenizer
    if reply.meta:
        _require_json(reply.meta, "Reply.meta")
    if reply.tool_calls:
        if not isinstance(reply.tool_calls, tuple) or not all(
                isinstance(c, ToolCall) and isinstance(c.id, str) and isinstance(c.name, str)
                and isinstance(c.arguments, str) for c in reply.tool_calls):
            raise TypeError("Reply.tool_calls must be a tuple of ToolCall(id, name, arguments: str)")
        if len({c.id for c in reply.tool_calls}) != len(reply.tool_calls):
            raise ValueError("two tool calls of one message share an id")
    for name in ("tool_call_id", "reasoning"):
        value = getattr(reply, name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"Reply.{name} must be a string or None, not {type(value).__name__}")
    if reply.state is not msgspec.UNSET:
        _require_json(reply.state, "Reply.state")
    return reply


def _structured(reply: Reply) -> bool:
    """Whether a reply is more than text: tool calls, a tool result, reasoning or a
    new environment state (checked once per reply, carried with it)."""
    return bool(reply.tool_calls) or reply.tool_call_id is not None or (
        reply.reasoning is not None) or reply.state is not msgspec.UNSET


def _fault(state: ConversationState, what: str, exc: BaseException) -> None:
    """A plugin fault: recorded with the conversation, and with its traceback in the
    run's error log (raised at once when debugging)."""
    message = f"{what}: {type(exc).__name__}: {exc}"
    state.errors.append(message)
    errorlog.record(message, exc, errorlog.conversation_of(state))


def _check_meta(state: ConversationState) -> None:
    if not state.meta:
        return
    try:
        _require_json(state.meta, "conversation.meta")
    except TypeError as exc:
        state.errors.append(f"a plugin left bad data in conversation.meta: {exc}")
        state.meta = {}


def _view_role(view: ParticipantRT, speaker: ParticipantRT) -> str | None:
    role = view.obj.role_in_view(speaker.name, view.name)
    if role is not None and not isinstance(role, str):
        raise TypeError(f"agent {view.spec.agent!r} of {view.name!r}: role_in_view returned "
                        f"{type(role).__name__}, expected str or None")
    if role is None and speaker is view:
        raise ValueError(f"agent {view.spec.agent!r} of {view.name!r}: role_in_view hides the "
                         "participant's own messages from itself")
    return role


def _impls(pm: Any, name: str) -> list[Any]:
    caller = getattr(pm.hook, name, None)
    return caller.get_hookimpls() if caller is not None else []


def _checked_results(task: asyncio.Future[Any], reqs: list[GenRequest]) -> list[GenResult]:
    """The batch's results, or one error result per request if the backend raised
    or broke the contract (so that the faults are retried like any other)."""
    problem = None
    try:
        results = task.result()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        problem = f"generate raised {type(exc).__name__}: {exc}"
    else:
        if not isinstance(results, list) or len(results) != len(reqs):
            problem = (f"generate returned {type(results).__name__} of "
                       f"{len(results) if hasattr(results, '__len__') else '?'} results "
                       f"for {len(reqs)} requests")
        elif not all(isinstance(r, GenResult) for r in results):
            problem = "generate returned something other than GenResult"
        else:
            return results
    return [GenResult(rid=r.rid, output_ids=[], text="", finish_reason="error",
                      prompt_tokens=len(r.input_ids), error=problem) for r in reqs]
