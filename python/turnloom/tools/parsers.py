"""Tool calls out of generated text, in the format of the model family that wrote it.

Each parser splits a completion into its text content and its tool calls, matching
what vLLM's tool parsers of the same name accept and what the models' chat templates
write:

- ``hermes`` (Hermes 2 Pro, Qwen 2.5/3): ``<tool_call>{"name": .., "arguments": {..}}</tool_call>``
  blocks; an unterminated last block runs to the end of the text;
- ``llama3_json`` (Llama 3.1-3.3): ``{"name": .., "parameters": {..}}`` objects
  (``"arguments"`` is accepted too), optionally after ``<|python_tag|>``, several
  separated by ``;``;
- ``mistral`` (Mistral 7B v0.3 and later): ``[TOOL_CALLS] [{"name": .., "arguments": {..}}]``
  and the newer ``[TOOL_CALLS]name{..}`` form; call ids are 9 letters or digits, as
  Mistral's templates require.

Where vLLM gives up on a malformed block and returns the whole text as content, these
parsers keep the block as a call whose `arguments` hold the raw text (and whose name
is the one that could be read, or ""): validation then turns it into an
``invalid_json`` error that the agent reads back, so a broken call is answered and
counted instead of silently becoming prose. Content is the text before the first call,
stripped; text after the calls is dropped, as vLLM does.

Parsers are components: plugins add more with the ``register_tool_parsers`` hook,
``register(name, factory)`` where ``factory(settings: dict) -> ToolParser``.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from turnloom.messages import ToolCall, new_call_id

_NAME_IN_JSON = re.compile(r'"name"\s*:\s*"([^"\\]*)"')
_DECODER = json.JSONDecoder()


class ParsedOutput(NamedTuple):
    """A completion split into its text content and its tool calls."""

    content: str
    calls: list[ToolCall]


@runtime_checkable
class ToolParser(Protocol):
    """Reads tool calls in one model family's format and writes them back."""

    def parse(self, text: str, rng: random.Random) -> ParsedOutput:
        """Split generated `text`; call ids are drawn from `rng`."""

    def render(self, content: str, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        """The text this model family generates for `content` followed by `calls`
        ((name, arguments) pairs), as its chat template writes an assistant turn."""


def _call(rng: random.Random, name: str, arguments: Any,
          new_id: Callable[[random.Random], str] = new_call_id) -> ToolCall:
    # Arguments already JSON-encoded as a string (some models do this) stay as written.
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(new_id(rng), name, encoded)


def _malformed(rng: random.Random, raw: str, new_id: Callable[[random.Random], str]
               = new_call_id) -> ToolCall:
    """A call that could not be read: the raw text is kept for the error message."""
    found = _NAME_IN_JSON.search(raw)
    return ToolCall(new_id(rng), found.group(1) if found else "", raw.strip())


def _from_object(rng: random.Random, obj: Any, raw: str, arg_keys: Sequence[str],
                 new_id: Callable[[random.Random], str] = new_call_id) -> ToolCall:
    """A call from a decoded ``{"name": .., <arguments key>: ..}`` object."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return _malformed(rng, raw, new_id)
    arguments: Any = {}
    for key in arg_keys:
        if key in obj:
            arguments = obj[key]
            break
    return _call(rng, obj["name"], arguments, new_id)


class HermesParser:
    """``<tool_call>`` JSON blocks (Hermes 2 Pro, Qwen 2.5 and Qwen 3 templates)."""

    START, END = "<tool_call>", "</tool_call>"

    def parse(self, text: str, rng: random.Random) -> ParsedOutput:
        first = text.find(self.START)
        if first < 0:
            return ParsedOutput(text, [])
        calls: list[ToolCall] = []
        pos = first
        while pos >= 0:
            body_start = pos + len(self.START)
            end = text.find(self.END, body_start)
            body = text[body_start:] if end < 0 else text[body_start:end]
            try:
                obj = json.loads(body)
            except ValueError:
                calls.append(_malformed(rng, body))
            else:
                calls.append(_from_object(rng, obj, body, ("arguments",)))
            if end < 0:
                break
            pos = text.find(self.START, end + len(self.END))
        return ParsedOutput(text[:first].strip(), calls)

    def render(self, content: str, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        blocks = "".join(
            f"\n{self.START}\n"
            + json.dumps({"name": name, "arguments": dict(args)}, ensure_ascii=False)
            + f"\n{self.END}" for name, args in calls)
        return (content + blocks) if content else blocks.lstrip("\n")


class Llama3JsonParser:
    """JSON tool calls of Llama 3.x's custom-tool prompt format."""

    TAG = "<|python_tag|>"
    _START = re.compile(r'\{\s*"name"\s*:')

    def parse(self, text: str, rng: random.Random) -> ParsedOutput:
        tag = text.find(self.TAG)
        if tag >= 0:
            content, rest = text[:tag], text[tag + len(self.TAG):]
            start = 0 if rest.lstrip().startswith("{") else -1
            if start < 0:  # a built-in tool's Python call: not a JSON tool call
                return ParsedOutput(content.strip(), [_malformed(rng, rest)])
            rest = rest.lstrip()
        else:
            found = self._START.search(text)
            if found is None:
                return ParsedOutput(text, [])
            content, rest = text[:found.start()], text[found.start():]
        calls: list[ToolCall] = []
        pos = 0
        while True:
            try:
                obj, end = _DECODER.raw_decode(rest, pos)
            except ValueError:
                calls.append(_malformed(rng, rest[pos:]))
                break
            calls.append(_from_object(rng, obj, rest[pos:end], ("parameters", "arguments")))
            pos = _skip_separator(rest, end, ";")
            if pos >= len(rest) or rest[pos] != "{":
                break
        return ParsedOutput(content.strip(), calls)

    def render(self, content: str, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        body = "; ".join(json.dumps({"name": name, "parameters": dict(args)}, ensure_ascii=False)
                         for name, args in calls)
        return f"{content}\n{body}" if content else body


def _skip_separator(text: str, pos: int, separator: str) -> int:
    """The position after whitespace, one optional `separator` and more whitespace."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos < len(text) and text[pos] == separator:
        pos += 1
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


_ALNUM = string.ascii_letters + string.digits


def mistral_call_id(rng: random.Random) -> str:
    """Mistral's templates accept only ids of exactly 9 letters or digits."""
    return "".join(rng.choice(_ALNUM) for _ in range(9))


class MistralParser:
    """``[TOOL_CALLS]`` followed by a JSON list of calls, or by ``name{arguments}``."""

    TAG = "[TOOL_CALLS]"
    _NAMED = re.compile(r"([A-Za-z0-9_-]+)\s*(?:\[ARGS\])?\s*(?=\{)")

    def parse(self, text: str, rng: random.Random) -> ParsedOutput:
        first = text.find(self.TAG)
        if first < 0:
            return ParsedOutput(text, [])
        calls: list[ToolCall] = []
        for segment in text[first:].split(self.TAG)[1:]:
            calls.extend(self._segment(segment.strip(), rng))
        return ParsedOutput(text[:first].strip(), calls)

    def _segment(self, seg: str, rng: random.Random) -> list[ToolCall]:
        if not seg:
            return []
        if seg.startswith("["):
            try:
                items, _ = _DECODER.raw_decode(seg)
            except ValueError:
                return [_malformed(rng, seg, mistral_call_id)]
            if not isinstance(items, list):
                items = [items]
            return [_from_object(rng, item, json.dumps(item), ("arguments",), mistral_call_id)
                    for item in items]
        calls: list[ToolCall] = []
        pos = 0
        while pos < len(seg):
            named = self._NAMED.match(seg, pos)
            if named is None:
                calls.append(_malformed(rng, seg[pos:], mistral_call_id))
                break
            try:
                args, end = _DECODER.raw_decode(seg, named.end())
            except ValueError:
                raw = seg[named.end():]
                calls.append(ToolCall(mistral_call_id(rng), named.group(1), raw.strip()))
                break
            calls.append(_from_object(rng, {"name": named.group(1), "arguments": args},
                                      seg[pos:end], ("arguments",), mistral_call_id))
            pos = _skip_separator(seg, end, ",")
        return calls

    def render(self, content: str, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
        body = json.dumps([{"name": name, "arguments": dict(args)} for name, args in calls],
                          ensure_ascii=False)
        return f"{content}{self.TAG}{body}"


BUILTIN_PARSERS: dict[str, Callable[[], ToolParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
}


def builtin_parser(name: str) -> ToolParser:
    """One of the built-in parsers by name; the error lists the names there are."""
    try:
        return BUILTIN_PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r} "
                         f"(built in: {', '.join(sorted(BUILTIN_PARSERS))})") from None


def parse_tool_calls(text: str, parser: str | ToolParser, rng: random.Random) -> ParsedOutput:
    """Split `text` with `parser` (a parser or a built-in parser's name)."""
    chosen = builtin_parser(parser) if isinstance(parser, str) else parser
    return chosen.parse(text, rng)
