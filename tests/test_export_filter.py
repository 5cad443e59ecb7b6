"""The record filter language: parsing, precedence, missing fields, and errors
that point at the offending column."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from turnloom.exporters.filter import FilterError, parse_filter
from turnloom.records import ConversationRecord, Message

RECORD: dict[str, Any] = {
    "index": 7, "branch": 2, "stop_reason": "max_turns",
    "scores": {"length": {"turns": 6, "words": 40.5}, "stop-reason": {"early": 0},
               "judge": {"ok": True, "label": "good"}},
    "tokens": {"assistant": {"completion": 120}},
}


@pytest.mark.parametrize("expr, expected", [
    ("scores.length.turns >= 4", True),
    ("scores.length.turns > 6", False),
    ("scores.length.words == 40.5", True),
    ("scores.stop-reason.early == 0", True),
    ("stop_reason == 'max_turns'", True),
    ('stop_reason != "max_turns"', False),
    ("index < 10 and branch == 2", True),
    ("index < 5 or branch == 2", True),
    ("not index < 5", True),
    ("not (index < 10 and branch == 2)", False),
    ("index > 100 or branch > 5 and index < 0", False),  # and binds tighter than or
    ("(index > 100 or branch > 1) and index < 10", True),
    ("scores.judge.ok", True),
    ("scores.judge.ok == true", True),
    ("scores.missing.metric >= 0", False),  # a missing field is null
    ("scores.missing.metric == null", True),
    ("scores.judge.label > 3", False),  # string against number: false, not an error
    ("tokens.assistant.completion >= 1e2", True),
    ("scores.length.turns >= -1", True),
])
def test_expressions(expr: str, expected: bool) -> None:
    assert parse_filter(expr)(RECORD) is expected


def test_reads_record_structs_directly() -> None:
    record = ConversationRecord(
        conversation_id="c", index=3, branch=0, seed=1,
        messages=[Message(role="user", content="hi", name="u")], participants={}, turns=[],
        tokens={}, stop_reason="user_stop", scores={"length": {"turns": 1}})
    keep = parse_filter("scores.length.turns == 1 and stop_reason == 'user_stop' and index == 3")
    assert keep(record)
    assert keep(msgspec.to_builtins(record))


@pytest.mark.parametrize("expr, message", [
    ("scores.length.turns >", "expected a field, number or string at the end"),
    ("index == 1 branch", "expected the end, found 'branch' at column 12"),
    ("(index == 1", "expected ')' at the end"),
    ("index === 1", "cannot read '= 1' at column 9"),
    ("index == 1; import os", "cannot read '; import os' at column 11"),
    ("(index == 1) == true", "expected a field, not a parenthesised condition"),
    ("__import__('os')", "expected the end, found '(' at column 11"),
])
def test_errors_name_the_column(expr: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(expr)
    assert message in str(info.value)
