"""Checking and running tool calls without ever raising out of a run.

A call can be wrong in three ways: its arguments are not a JSON object
(``invalid_json``), it names a tool nobody declared (``unknown_tool``), or its
arguments fail the tool's JSON Schema (``invalid_arguments``); a tool function that
raises gives ``tool_failed``. Each becomes a `ToolError` (kind + message) that the
environment sends back to the agent as the call's ``tool`` message, the way tau-bench
answers an unknown action or a tool's exception with an "Error: ..." observation, and
that is counted on the turn.

Schemas from Python functions mark optional arguments with ``"nullable": true`` (the
OpenAPI spelling transformers uses); validation treats that as "null is allowed too".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from turnloom.messages import ToolCall
from turnloom.tools.schema import tool_from_function

if TYPE_CHECKING:
    import jsonschema

ERROR_KINDS = ("invalid_json", "unknown_tool", "invalid_arguments", "tool_failed")


class ToolError(msgspec.Struct, frozen=True):
    """What was wrong with one call; `text()` is what the agent reads back."""

    kind: str
    message: str

    def text(self) -> str:
        return f"Error: {self.message}"


class CallResult(msgspec.Struct, frozen=True):
    """The answer to one call: the tool message's text, the new state, and the error
    (None when the call succeeded; the state is then unchanged)."""

    text: str
    state: Any
    error: ToolError | None = None


def check_call(call: ToolCall, validators: Mapping[str, jsonschema.protocols.Validator]
               ) -> dict[str, Any] | ToolError:
    """The call's arguments as a dict, or the `ToolError` saying what is wrong.
    `validators` maps each known tool's name to its argument validator."""
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError as exc:
        label = f"tool {call.name!r}" if call.name else "a tool"
        return ToolError("invalid_json", f"the call to {label} is not valid JSON ({exc}): "
                                         f"{_clip(call.arguments)}")
    validator = validators.get(call.name)
    if validator is None:
        known = ", ".join(sorted(validators)) or "none"
        return ToolError("unknown_tool", f"unknown tool {call.name!r} (tools: {known})")
    if not isinstance(args, dict):
        return ToolError("invalid_arguments", f"the arguments of {call.name!r} must be a JSON "
                                              f"object, got {_clip(call.arguments)}")
    import jsonschema  # on first use: importing it takes a fifth of a second

    problem = jsonschema.exceptions.best_match(validator.iter_errors(args))
    if problem is not None:
        place = "".join(f"[{p!r}]" for p in problem.absolute_path) or "arguments"
        return ToolError("invalid_arguments", f"invalid arguments for {call.name!r}: "
                                              f"{place}: {problem.message}")
    return args


def argument_validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """A validator for one OpenAI tool schema's parameters."""
    import jsonschema

    parameters = schema["function"].get("parameters") or {"type": "object"}
    return jsonschema.Draft202012Validator(_nullable_to_null(parameters))


def _nullable_to_null(node: Any) -> Any:
    """A copy of a schema where ``nullable: true`` also admits null."""
    if isinstance(node, list):
        return [_nullable_to_null(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_null(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif isinstance(out.get("type"), list) and "null" not in out["type"]:
            out["type"] = [*out["type"], "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


Tool = Callable[..., Any]
"""A tool function: ``fn(state, **arguments) -> (result, new_state)``; `result` is
text or a JSON value (sent as JSON)."""


class ToolKit:
    """A set of tool functions over a JSON state, each described by its typed signature
    and docstring (`tool_from_function`, with the leading `state` argument left out).

    `call` checks a call and runs it; nothing it does raises for a bad call: the error
    comes back as the call's answer.
    """

    def __init__(self, functions: Iterable[Tool]) -> None:
        self.functions: dict[str, Tool] = {}
        self.schemas: list[dict[str, Any]] = []
        for fn in functions:
            schema = tool_from_function(_without_state(fn))
            name = schema["function"]["name"]
            if name in self.functions:
                raise ValueError(f"tool {name!r} is defined twice")
            self.functions[name] = fn
            self.schemas.append(schema)
        self.validators = {s["function"]["name"]: argument_validator(s) for s in self.schemas}

    def call(self, call: ToolCall, state: Any) -> CallResult:
        args = check_call(call, self.validators)
        if isinstance(args, ToolError):
            return CallResult(args.text(), state, args)
        try:
            result, new_state = self.functions[call.name](state, **args)
        except Exception as exc:  # a tool's own refusal ("order not found") or fault
            error = ToolError("tool_failed", str(exc) or type(exc).__name__)
            return CallResult(error.text(), state, error)
        text = result if isinstance(result, str) else json.dumps(result, sort_keys=True)
        return CallResult(text, new_state)


def _without_state(fn: Tool) -> Tool:
    """`fn` as its schema should see it: the first parameter (the state) removed."""
    import functools
    import inspect

    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if not params or params[0].name != "state":
        raise ValueError(f"tool {fn.__name__!r}: the first parameter must be `state`")

    @functools.wraps(fn)
    def described(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    described.__signature__ = signature.replace(parameters=params[1:])  # type: ignore[attr-defined]
    annotations = dict(getattr(fn, "__annotations__", {}))
    annotations.pop("state", None)
    annotations.pop("return", None)  # (result, new state): not what the model sees
    described.__annotations__ = annotations
    return described
