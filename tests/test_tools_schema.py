"""Tool schemas: from typed functions (same output as transformers' get_json_schema), from
scenario dicts (errors name the place), and argument validation with optional values."""

from __future__ import annotations

import enum
from typing import Any, Literal, Optional, Union

import pytest

from turnloom.messages import ToolCall
from turnloom.tools.schema import ToolSchemaError, tool_from_dict, tool_from_function, tools_by_name
from turnloom.tools.validate import ToolError, ToolKit, argument_validator, check_call


class Cabin(enum.Enum):
    ECONOMY = "economy"
    BUSINESS = "business"


def search_flights(origin: str, destination: str, date: str, passengers: int = 1,
                   cabin: Cabin = Cabin.ECONOMY, max_price: Optional[float] = None,
                   airlines: list[str] | None = None) -> list[dict[str, Any]]:
    """Find direct flights between two airports on a date.

    Only flights with seats left are listed.

    Args:
        origin: IATA code of the departure airport,
            for example "JFK".
        destination: IATA code of the arrival airport.
        date (str): Day of departure, YYYY-MM-DD.
        passengers: How many seats are needed.
        cabin: Cabin class.
        max_price: Highest fare per seat in dollars.
        airlines: Only these carriers.

    Returns:
        The matching flights, cheapest first.
    """
    return []


def set_mode(mode: Literal["auto", "manual", 3], weights: dict[str, float],
             pair: tuple[int, str], flag: Union[int, str], anything: Any,
             shape: Union[list[int], str]) -> None:
    """Configure the controller.

    Args:
        mode: Operating mode.
        weights: Weight per channel.
        pair: A number and a label.
        flag: Either form.
        anything: Free value.
        shape: Sizes or a name.
    """


def drink(beverage: str, size: str = "m"):
    """Order a drink

    Args:
        beverage: What to drink (choices: ["tea", "coffee"])
        size: Cup size
    """


class Account:
    def deposit(self, amount: float, note: str | None = None) -> bool:
        """Put money in.

        Args:
            amount: Dollars to add.
            note: Shown on the statement.

        Returns:
            Whether it worked.
        """
        return True


HAND_MADE = [search_flights, set_mode, drink, Account().deposit]


@pytest.mark.parametrize("fn", HAND_MADE, ids=lambda f: f.__name__)
def test_same_schema_as_transformers(fn):
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    assert tool_from_function(fn) == utils.get_json_schema(fn)


def test_function_schema_on_a_hand_made_case():
    schema = tool_from_function(search_flights)["function"]
    assert schema["name"] == "search_flights"
    assert schema["description"] == ("Find direct flights between two airports on a date.\n\n"
                                     "Only flights with seats left are listed.")
    params = schema["parameters"]
    assert params["required"] == ["origin", "destination", "date"]
    assert params["properties"]["origin"] == {
        "type": "string", "description": 'IATA code of the departure airport, for example "JFK".'}
    assert params["properties"]["cabin"] == {"type": "string", "enum": ["economy", "business"],
                                             "description": "Cabin class."}
    assert params["properties"]["max_price"] == {"type": "number", "nullable": True,
                                                 "description": "Highest fare per seat in dollars."}
    assert params["properties"]["airlines"] == {"type": "array", "items": {"type": "string"},
                                                "nullable": True,
                                                "description": "Only these carriers."}
    assert schema["return"]["description"] == "The matching flights, cheapest first."


def test_undescribed_argument_or_missing_hint_is_an_error_naming_it():
    def f(a: int, b: int) -> None:
        """Adds.

        Args:
            a: First.
        """

    with pytest.raises(ToolSchemaError, match="does not describe argument 'b'"):
        tool_from_function(f)

    def g(a) -> None:  # type: ignore[no-untyped-def]
        """G.

        Args:
            a: A.
        """

    with pytest.raises(ToolSchemaError, match="argument 'a' has no type hint"):
        tool_from_function(g)

    def h(a: object) -> None:
        """H.

        Args:
            a: A.
        """

    with pytest.raises(ToolSchemaError, match="tool 'h', argument 'a': cannot describe"):
        tool_from_function(h)

    def nodoc(a: int) -> None:
        pass

    with pytest.raises(ToolSchemaError, match="no docstring"):
        tool_from_function(nodoc)


# --- from a scenario ------------------------------------------------------------------

GET_ORDER = {"name": "get_order", "description": "Look up an order.",
             "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                            "required": ["order_id"]}}


def test_bare_and_openai_forms_give_the_same_schema():
    openai_form = {"type": "function", "function": GET_ORDER}
    assert tool_from_dict(GET_ORDER) == tool_from_dict(openai_form) == openai_form


@pytest.mark.parametrize("spec, message", [
    ("get_order", r"participants\.agent\.tools\[0\]: a tool must be a table/dict"),
    ({**GET_ORDER, "name": "get order"}, r"tools\[0\].name: must be 1-64 letters"),
    ({**GET_ORDER, "params": {}}, r"unknown keys \['params'\]"),
    ({**GET_ORDER, "parameters": {"type": "array"}}, r"parameters: must be a JSON Schema with type"),
    ({**GET_ORDER, "parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}},
     r"parameters\['properties'\]\['x'\]\['type'\]: not a valid JSON Schema"),
    ({"type": "function", "function": "x"}, r"expected \{type = \"function\""),
])
def test_bad_scenario_tools_name_the_place(spec, message):
    with pytest.raises(ToolSchemaError, match=message):
        tool_from_dict(spec, "participants.agent.tools[0]")


def test_duplicate_tool_names():
    with pytest.raises(ToolSchemaError, match=r"tools\[1\]: tool name 'get_order' is used twice"):
        tools_by_name([GET_ORDER, GET_ORDER])


# --- validation -----------------------------------------------------------------------

def test_nullable_arguments_accept_null_and_their_type_only():
    validators = {"search_flights": argument_validator(tool_from_function(search_flights))}
    ok = '{"origin": "JFK", "destination": "SFO", "date": "2025-01-02", "max_price": null}'
    assert check_call(ToolCall("c", "search_flights", ok), validators)["max_price"] is None
    bad = '{"origin": "JFK", "destination": "SFO", "date": "d", "cabin": "first"}'
    error = check_call(ToolCall("c", "search_flights", bad), validators)
    assert isinstance(error, ToolError) and error.kind == "invalid_arguments"
    assert "['cabin']" in error.message
    error = check_call(ToolCall("c", "search_flights", '[1, 2]'), validators)
    assert isinstance(error, ToolError) and "must be a JSON object" in error.message


def add_note(state: dict[str, Any], text: str, pinned: bool = False) -> tuple[str, dict[str, Any]]:
    """Add a note.

    Args:
        text: The note.
        pinned: Keep it on top.
    """
    if not text.strip():
        raise ValueError("a note cannot be empty")
    notes = [*state.get("notes", []), {"text": text, "pinned": pinned}]
    return f"note {len(notes)} added", {**state, "notes": notes}


def test_toolkit_runs_calls_and_answers_every_failure():
    kit = ToolKit([add_note])
    assert kit.schemas[0]["function"]["parameters"] == {
        "type": "object", "required": ["text"],
        "properties": {"text": {"type": "string", "description": "The note."},
                       "pinned": {"type": "boolean", "description": "Keep it on top."}}}
    state: dict[str, Any] = {}
    done = kit.call(ToolCall("c1", "add_note", '{"text": "hi"}'), state)
    assert (done.text, done.error) == ("note 1 added", None)
    assert done.state == {"notes": [{"text": "hi", "pinned": False}]} and state == {}
    for arguments, kind, words in [('{"text": " "}', "tool_failed", "a note cannot be empty"),
                                   ('{"text": 1}', "invalid_arguments", "is not of type"),
                                   ('{"text": ', "invalid_json", "not valid JSON")]:
        out = kit.call(ToolCall("c", "add_note", arguments), done.state)
        assert out.error is not None and out.error.kind == kind, arguments
        assert out.text == f"Error: {out.error.message}" and words in out.text
        assert out.state is done.state
    out = kit.call(ToolCall("c", "delete_note", "{}"), state)
    assert out.error is not None and out.error.kind == "unknown_tool"


def test_toolkit_requires_state_first():
    def bad(text: str) -> tuple[str, Any]:
        """Bad.

        Args:
            text: T.
        """
        return text, None

    with pytest.raises(ValueError, match="first parameter must be `state`"):
        ToolKit([bad])
