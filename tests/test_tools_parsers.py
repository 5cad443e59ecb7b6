"""Tool-call parsers: each model family's format, well-formed and malformed, several calls
in one message, text before the calls; malformed calls become tool errors; the registry."""

from __future__ import annotations

import json
import random
import re

import pytest

from turnloom import hookimpl
from turnloom.messages import ToolCall, new_call_id
from turnloom.plugins import Registry, get_plugin_manager
from turnloom.tools.parsers import (
    HermesParser,
    Llama3JsonParser,
    MistralParser,
    ParsedOutput,
    builtin_parser,
    parse_tool_calls,
)
from turnloom.tools.schema import tools_by_name
from turnloom.tools.validate import ToolError, argument_validator, check_call


def rng() -> random.Random:
    return random.Random(7)


def named(out: ParsedOutput) -> list[tuple[str, object]]:
    """(name, decoded arguments) of each call; raw text where it is not JSON."""
    result = []
    for call in out.calls:
        try:
            args: object = json.loads(call.arguments)
        except ValueError:
            args = call.arguments
        result.append((call.name, args))
    return result


def test_call_ids_have_openai_shape_and_follow_the_seed():
    ids = [new_call_id(random.Random(3)) for _ in range(2)]
    assert ids[0] == ids[1] and re.fullmatch(r"call_[0-9a-f]{24}", ids[0])
    assert new_call_id(random.Random(4)) != ids[0]


# --- hermes / qwen --------------------------------------------------------------------

# Qwen 2.5's chat template writes an assistant turn with content and calls like this.
QWEN_TURN = ('I will look that up.\n<tool_call>\n{"name": "get_order", "arguments": '
             '{"order_id": "#W1"}}\n</tool_call>\n<tool_call>\n{"name": "get_user", '
             '"arguments": {"user_id": "u1", "verbose": true}}\n</tool_call>')


def test_hermes_reads_several_calls_and_the_text_before_them():
    out = HermesParser().parse(QWEN_TURN, rng())
    assert out.content == "I will look that up."
    assert named(out) == [("get_order", {"order_id": "#W1"}),
                          ("get_user", {"user_id": "u1", "verbose": True})]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in out.calls)
    assert out.calls[0].id != out.calls[1].id


def test_hermes_text_without_calls_is_content():
    assert HermesParser().parse("No tools needed.", rng()) == ParsedOutput("No tools needed.", [])


def test_hermes_unterminated_last_block_runs_to_the_end():
    out = HermesParser().parse('<tool_call>{"name": "ping", "arguments": {}}', rng())
    assert out.content == "" and named(out) == [("ping", {})]


def test_hermes_arguments_given_as_a_json_string_are_kept_as_written():
    out = HermesParser().parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>',
                               rng())
    assert out.calls[0].arguments == '{"a": 1}'


def test_hermes_malformed_block_is_kept_as_a_call_with_its_raw_text():
    text = ('ok <tool_call>{"name": "get_order", "arguments": {"order_id": }}</tool_call>'
            '<tool_call>{"name": "ping", "arguments": {}}</tool_call>')
    out = HermesParser().parse(text, rng())
    assert out.content == "ok"
    bad, good = out.calls
    assert bad.name == "get_order" and '"order_id": }' in bad.arguments
    assert (good.name, good.arguments) == ("ping", "{}")


def test_hermes_block_without_a_name_is_malformed():
    out = HermesParser().parse('<tool_call>{"arguments": {}}</tool_call>', rng())
    assert out.calls[0].name == "" and out.calls[0].arguments == '{"arguments": {}}'


def test_hermes_render_then_parse_round_trips():
    parser = HermesParser()
    calls = [("get_order", {"order_id": "#W1"}), ("get_user", {"user_id": "u1", "verbose": True})]
    text = parser.render("I will look that up.", calls)
    assert text == QWEN_TURN
    assert named(parser.parse(text, rng())) == calls
    assert parser.render("", calls[:1]).startswith("<tool_call>\n")


# --- llama 3 json ---------------------------------------------------------------------

def test_llama_reads_parameters_and_arguments_keys():
    out = Llama3JsonParser().parse(
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": {"n": 2}}}', rng())
    assert out.content == "" and named(out) == [("get_weather", {"city": "Paris", "days": {"n": 2}})]
    out = Llama3JsonParser().parse('{"name": "f", "arguments": {"x": 1}}', rng())
    assert named(out) == [("f", {"x": 1})]


def test_llama_python_tag_several_calls_and_text_before():
    text = ('Checking both.<|python_tag|>{"name": "a", "parameters": {"x": 1}}; '
            '{"name": "b", "parameters": {}}')
    out = Llama3JsonParser().parse(text, rng())
    assert out.content == "Checking both."
    assert named(out) == [("a", {"x": 1}), ("b", {})]


def test_llama_text_before_a_bare_json_call():
    out = Llama3JsonParser().parse('Sure.\n{"name": "a", "parameters": {"q": "x"}}', rng())
    assert out.content == "Sure." and named(out) == [("a", {"q": "x"})]


def test_llama_json_that_is_not_a_call_stays_text():
    text = 'The config is {"debug": true}.'
    assert Llama3JsonParser().parse(text, rng()) == ParsedOutput(text, [])


def test_llama_malformed_json_is_a_call_with_raw_text():
    out = Llama3JsonParser().parse('<|python_tag|>{"name": "a", "parameters": {"x": ', rng())
    assert out.calls[0].name == "a" and out.calls[0].arguments.endswith('{"x":')


def test_llama_builtin_python_call_after_tag_is_malformed():
    out = Llama3JsonParser().parse('<|python_tag|>brave_search.call(query="x")', rng())
    assert out.calls[0].name == "" and "brave_search" in out.calls[0].arguments


def test_llama_render_writes_the_template_form():
    text = Llama3JsonParser().render("", [("a", {"x": 1})])
    assert text == '{"name": "a", "parameters": {"x": 1}}'
    assert named(Llama3JsonParser().parse(text, rng())) == [("a", {"x": 1})]


# --- mistral --------------------------------------------------------------------------

def test_mistral_list_form_with_text_before():
    text = 'Let me check. [TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]'
    out = MistralParser().parse(text, rng())
    assert out.content == "Let me check."
    assert named(out) == [("a", {"x": 1}), ("b", {})]
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", c.id) for c in out.calls)


def test_mistral_named_form_of_newer_tokenizers():
    out = MistralParser().parse('[TOOL_CALLS]a{"x": 1}[TOOL_CALLS]b[ARGS]{"y": [1, 2]}', rng())
    assert named(out) == [("a", {"x": 1}), ("b", {"y": [1, 2]})]


def test_mistral_malformed_list_is_a_call_with_raw_text():
    out = MistralParser().parse('[TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}', rng())
    assert len(out.calls) == 1 and out.calls[0].name == "a"
    assert out.calls[0].arguments.startswith('[{"name": "a"')


def test_mistral_malformed_named_arguments():
    out = MistralParser().parse('[TOOL_CALLS]a{"x": }', rng())
    assert (out.calls[0].name, out.calls[0].arguments) == ("a", '{"x": }')


def test_mistral_render_round_trips():
    calls = [("a", {"x": 1}), ("b", {})]
    text = MistralParser().render("Hi", calls)
    assert text.startswith("Hi[TOOL_CALLS][")
    assert named(MistralParser().parse(text, rng())) == calls


# --- malformed calls become tool errors -----------------------------------------------

TOOLS = tools_by_name([{"name": "get_order", "description": "Look up an order.",
                        "parameters": {"type": "object",
                                       "properties": {"order_id": {"type": "string"}},
                                       "required": ["order_id"]}}])
VALIDATORS = {name: argument_validator(schema) for name, schema in TOOLS.items()}


@pytest.mark.parametrize("parser, text, kind", [
    ("hermes", '<tool_call>{"name": "get_order", "arguments": {"order_id": }}</tool_call>',
     "invalid_json"),
    ("hermes", '<tool_call>{"name": "cancel", "arguments": {}}</tool_call>', "unknown_tool"),
    ("hermes", '<tool_call>{"name": "get_order", "arguments": {"order_id": 5}}</tool_call>',
     "invalid_arguments"),
    ("hermes", '<tool_call>{"name": "get_order", "arguments": {}}</tool_call>',
     "invalid_arguments"),
    ("llama3_json", '{"name": "get_order", "parameters": {"order_id": "x"', "invalid_json"),
    ("mistral", '[TOOL_CALLS]get_order{"order_id": [1]}', "invalid_arguments"),
])
def test_malformed_calls_become_structured_errors(parser, text, kind):
    (call,) = parse_tool_calls(text, parser, rng()).calls
    error = check_call(call, VALIDATORS)
    assert isinstance(error, ToolError) and error.kind == kind
    assert error.text().startswith("Error: ")


def test_well_formed_call_passes_validation():
    (call,) = parse_tool_calls('<tool_call>{"name": "get_order", "arguments": {"order_id": "A"}}'
                               '</tool_call>', "hermes", rng()).calls
    assert check_call(call, VALIDATORS) == {"order_id": "A"}


def test_error_messages_name_the_problem():
    error = check_call(ToolCall("c", "get_order", '{"order_id": 5}'), VALIDATORS)
    assert isinstance(error, ToolError)
    assert "'order_id'" in error.message and "is not of type 'string'" in error.message
    error = check_call(ToolCall("c", "nope", "{}"), VALIDATORS)
    assert isinstance(error, ToolError) and "tools: get_order" in error.message


# --- registry -------------------------------------------------------------------------

def test_unknown_builtin_parser_lists_the_names():
    with pytest.raises(ValueError, match="unknown tool-call parser 'qwen9'.*hermes, llama3_json, mistral"):
        builtin_parser("qwen9")


class UpperParser:
    """A plugin's parser: CALL name {json} lines."""

    def parse(self, text: str, rng: random.Random) -> ParsedOutput:
        calls = [ToolCall(new_call_id(rng), m.group(1), m.group(2))
                 for m in re.finditer(r"CALL (\w+) (\{.*\})", text)]
        return ParsedOutput(text.split("CALL")[0].strip(), calls)

    def render(self, content, calls):
        return content + "".join(f"\nCALL {n} {json.dumps(a)}" for n, a in calls)


def test_builtin_and_plugin_parsers_come_through_register_tool_parsers():
    class Plugin:
        @hookimpl
        def register_tool_parsers(self, register):
            register("upper", lambda settings=None: UpperParser())

    pm = get_plugin_manager(autoload=False)
    pm.register(Plugin(), name="upper-plugin")
    registry = Registry.from_plugin_manager(pm)
    assert {"hermes", "llama3_json", "mistral", "upper"} <= set(registry.names("tool_parsers"))
    assert registry.owner("tool_parsers", "upper") == "upper-plugin"
    parser = registry.get("tool_parsers", "upper")({})
    out = parse_tool_calls('Hi CALL f {"a": 1}', parser, rng())
    assert out.content == "Hi" and named(out) == [("f", {"a": 1})]
    hermes = registry.get("tool_parsers", "hermes")({})
    assert isinstance(hermes, HermesParser)
    with pytest.raises(ValueError, match="takes no settings"):
        registry.get("tool_parsers", "hermes")({"strict": True})
