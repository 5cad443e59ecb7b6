"""Tool schemas in OpenAI's format: ``{"type": "function", "function": {name, description,
parameters}}`` with JSON-Schema parameters.

A schema comes from a scenario (a dict, checked here so a typo is reported with its
place) or from a typed Python function (`tool_from_function`). The function form gives
the same schema as transformers' ``get_json_schema``, so a tool defined once renders the
same way through a chat template's ``tools=`` and a chat API's ``tools`` field:

- each parameter's type hint becomes its JSON type (int, float, str, bool, None, Any,
  list[...], tuple[...], dict[str, ...], Literal[...], Enum classes, unions; an optional
  type adds ``"nullable": true``);
- parameters without a default are ``required``;
- the docstring (Google style) gives the description, each argument's description
  (``Args:``, an optional ``(choices: [...])`` at the end becomes an ``enum``), and the
  ``Returns:`` text, kept under ``"return"`` with the return type as transformers does.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# OpenAI's rule for function names; chat templates and APIs reject others.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SECTION = re.compile(r"^\s*(Args|Returns|Raises):\s*$")
_ARG_HEAD = re.compile(r"^(\w+)(?:\s*\([^()\n]*\))?:\s*(.*)$")
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)
_SCALARS: dict[Any, str] = {int: "integer", float: "number", str: "string", bool: "boolean",
                            type(None): "null"}
_BARE: dict[Any, dict[str, Any]] = {
    **{t: {"type": name} for t, name in _SCALARS.items()},
    list: {"type": "array"}, tuple: {"type": "array"}, dict: {"type": "object"}, Any: {},
}


class ToolSchemaError(ValueError):
    """A tool cannot be described: the message names the tool or the place in the scenario."""


# --- from a function ------------------------------------------------------------------

def tool_from_function(fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI tool schema of a typed, documented function (see the module docstring)."""
    name = getattr(fn, "__name__", "operation")
    doc = inspect.getdoc(fn)
    if not doc or not doc.strip():
        raise ToolSchemaError(f"tool {name!r}: the function has no docstring to describe it")
    description, arg_docs, returns = parse_docstring(doc.strip())
    hints = typing.get_type_hints(fn)
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    # An unannotated self/cls is the receiver of a method, not an argument.
    if params and params[0].name in ("self", "cls") and params[0].annotation is inspect.Parameter.empty:
        params = params[1:]
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in params:
        if param.annotation is inspect.Parameter.empty:
            raise ToolSchemaError(f"tool {name!r}: argument {param.name!r} has no type hint")
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        prop = _type_schema(hints[param.name], f"tool {name!r}, argument {param.name!r}")
        if param.name not in arg_docs:
            raise ToolSchemaError(f"tool {name!r}: the docstring's Args: section does not "
                                  f"describe argument {param.name!r}")
        text = arg_docs[param.name]
        choices = _CHOICES.search(text)
        if choices:
            prop["enum"] = [c.strip() if isinstance(c, str) else c
                            for c in json.loads(choices.group(1))]
            text = text[:choices.start()].strip()
        prop["description"] = text
        properties[param.name] = prop
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    function: dict[str, Any] = {"name": name, "description": description,
                                "parameters": parameters}
    if "return" in hints:
        try:
            ret = _type_schema(hints["return"], "")
        except ToolSchemaError:
            ret = None  # the model never writes the return value: leave an odd one out
        if ret is not None:
            if returns is not None:
                ret["description"] = returns
            function["return"] = ret
    return {"type": "function", "function": function}


def parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """(description, argument descriptions, returns text) of a Google-style docstring."""
    lines = doc.splitlines()
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in lines:
        head = _SECTION.match(line)
        if head:
            current = head.group(1)
            sections[current] = []
        else:
            sections[current].append(line)
    description = "\n".join(sections[""]).strip()
    args = _parse_args(sections.get("Args", []))
    returns = "\n".join(sections["Returns"]).strip() if "Returns" in sections else None
    return description, args, returns


def _parse_args(lines: list[str]) -> dict[str, str]:
    """Argument name -> description; an argument's lines are those indented deeper than
    its name, joined with single spaces."""
    lines = [line for line in lines if line.strip()]
    if not lines:
        return {}
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    out: dict[str, list[str]] = {}
    name: str | None = None
    for line in lines:
        depth = len(line) - len(line.lstrip())
        head = _ARG_HEAD.match(line.strip()) if depth == indent else None
        if head:
            name = head.group(1)
            out[name] = [head.group(2)]
        elif name is not None:
            out[name].append(line.strip())
    return {k: " ".join(part for part in v if part).strip() for k, v in out.items()}


def _type_schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of one type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None:
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return _enum([member.value for member in hint], where)
        if hint in _BARE:
            return dict(_BARE[hint])
        raise ToolSchemaError(f"{where}: cannot describe type {hint!r} in JSON Schema "
                              "(use int, float, str, bool, list, tuple, dict, Literal, Enum "
                              "or unions of them)")
    if origin is typing.Union or origin is types.UnionType:
        parts = [_type_schema(a, where) for a in args if a is not type(None)]
        if len(parts) == 1:
            out = parts[0]
        elif all(set(p) == {"type"} and isinstance(p["type"], str) for p in parts):
            names = sorted({p["type"] for p in parts})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": parts}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is typing.Literal:
        return _enum(list(args), where)
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], where)} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or ... in args:
            raise ToolSchemaError(f"{where}: use list[...] for a variable-length or "
                                  f"one-element tuple, not {hint!r}")
        return {"type": "array", "prefixItems": [_type_schema(a, where) for a in args]}
    if origin is dict:
        out = {"type": "object"}
        if len(args) == 2:
            out["additionalProperties"] = _type_schema(args[1], where)
        return out
    raise ToolSchemaError(f"{where}: cannot describe type {hint!r} in JSON Schema")


def _enum(values: list[Any], where: str) -> dict[str, Any]:
    if not values:
        raise ToolSchemaError(f"{where}: an enumeration with no values matches nothing")
    if any(type(v) not in _SCALARS for v in values):
        raise ToolSchemaError(f"{where}: enumeration values must be JSON scalars, got {values!r}")
    kinds = list(dict.fromkeys(_SCALARS[type(v)] for v in values))
    return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}


# --- from a scenario ------------------------------------------------------------------

def tool_from_dict(spec: Any, where: str = "tool") -> dict[str, Any]:
    """A scenario's tool as an OpenAI schema. Accepts the OpenAI form or the bare
    ``{name, description, parameters}``; `where` names the place for error messages."""
    if not isinstance(spec, Mapping):
        raise ToolSchemaError(f"{where}: a tool must be a table/dict, got {type(spec).__name__}")
    if "function" in spec or "type" in spec:
        if spec.get("type") != "function" or not isinstance(spec.get("function"), Mapping):
            raise ToolSchemaError(f"{where}: expected {{type = \"function\", function = {{...}}}}")
        extra = set(spec) - {"type", "function"}
        if extra:
            raise ToolSchemaError(f"{where}: unknown keys {sorted(extra)}")
        spec, where = spec["function"], f"{where}.function"
    unknown = set(spec) - {"name", "description", "parameters", "strict", "return"}
    if unknown:
        raise ToolSchemaError(f"{where}: unknown keys {sorted(unknown)} "
                              "(expected name, description, parameters)")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ToolSchemaError(f"{where}.name: must be 1-64 letters, digits, '_' or '-', "
                              f"got {name!r}")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise ToolSchemaError(f"{where}.description: must be a string")
    parameters = spec.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        raise ToolSchemaError(f"{where}.parameters: must be a JSON Schema with type \"object\"")
    import jsonschema  # on first use: importing it takes a fifth of a second

    try:
        jsonschema.Draft202012Validator.check_schema(dict(parameters))
    except jsonschema.SchemaError as exc:
        path = "".join(f"[{p!r}]" for p in exc.path)
        raise ToolSchemaError(f"{where}.parameters{path}: not a valid JSON Schema: "
                              f"{exc.message}") from None
    function = {k: v for k, v in spec.items()}
    function.update(name=name, description=description, parameters=dict(parameters))
    return {"type": "function", "function": function}


def tools_by_name(tools: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Name -> schema for a list of OpenAI tool schemas; a name used twice is an error."""
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        schema = tool_from_dict(tool, f"tools[{i}]")
        name = schema["function"]["name"]
        if name in out:
            raise ToolSchemaError(f"tools[{i}]: tool name {name!r} is used twice")
        out[name] = schema
    return out
