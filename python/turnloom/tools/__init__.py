"""Tools for agents: schemas, parsing tool calls out of generated text, validating them.

- `schema`: OpenAI tool schemas from a scenario's dicts or from typed Python functions.
- `parsers`: generated text -> (content, tool calls) in a model family's own format.
- `validate`: a call checked against its tool's schema; what is wrong becomes a
  structured error that the environment answers to the agent instead of raising.
"""

from __future__ import annotations

from turnloom.tools.parsers import (
    ParsedOutput,
    ToolParser,
    builtin_parser,
    parse_tool_calls,
)
from turnloom.tools.schema import (
    ToolSchemaError,
    tool_from_dict,
    tool_from_function,
    tools_by_name,
)
from turnloom.tools.validate import CallResult, ToolError, ToolKit, check_call

__all__ = [
    "CallResult", "ParsedOutput", "ToolError", "ToolKit", "ToolParser", "ToolSchemaError",
    "builtin_parser", "check_call", "parse_tool_calls", "tool_from_dict", "tool_from_function",
    "tools_by_name",
]
