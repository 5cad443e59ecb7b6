"""Record filters: a small expression language over a record's fields, parsed
once into a predicate (no `eval`).

    scores.length.turns >= 4 and stop_reason != "error"
    not (scores.judge.score < 3 or branch > 0)

Operands are dotted paths into the record (``scores.SCORER.METRIC``,
``stop_reason``, ``index``, ``branch``, ``tokens.PARTICIPANT.completion``),
numbers, quoted strings, ``true``/``false``/``null``. Operators: ``== != < <= > >=``,
``and``, ``or``, ``not`` and parentheses. A path the record lacks is null; an
ordering comparison with null, or between a number and a string, is false.
"""

from __future__ import annotations

import json
import operator
import re
from typing import Any, Callable, Mapping

Predicate = Callable[[Any], bool]  # over a mapping or a record struct
Value = Callable[[Any], Any]

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>==|!=|<=|>=|<|>|\(|\))
    | (?P<name>[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-:]+)*)
    )""", re.VERBOSE)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge}
_CONSTANTS = {"true": True, "false": False, "null": None}
_KEYWORDS = {"and", "or", "not"}


class FilterError(ValueError):
    """A filter expression that does not parse; names the position."""


def parse_filter(text: str) -> Predicate:
    """Compile `text` into a predicate over a record (a struct or a mapping)."""
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    predicate = parser.expression()
    if parser.pos != len(tokens):
        parser.fail("the end")
    return predicate


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    out = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip())
            raise FilterError(f"filter {text!r}: cannot read {text[col:col + 12]!r} "
                              f"at column {col + 1}")
        group = m.lastgroup or ""
        value = m.group(group)
        kind = value if group == "name" and value in _KEYWORDS else group
        out.append((kind, value, m.start(group) + 1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, tokens: list[tuple[str, str, int]]) -> None:
        self.text = text
        self.tokens = tokens
        self.pos = 0

    def fail(self, expected: str) -> None:
        if self.pos < len(self.tokens):
            _, value, col = self.tokens[self.pos]
            raise FilterError(f"filter {self.text!r}: expected {expected}, found {value!r} "
                              f"at column {col}")
        raise FilterError(f"filter {self.text!r}: expected {expected} at the end")

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expression(self) -> Predicate:
        terms = [self.conjunction()]
        while self.peek() == "or":
            self.take()
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else (lambda r: any(t(r) for t in terms))

    def conjunction(self) -> Predicate:
        terms = [self.negation()]
        while self.peek() == "and":
            self.take()
            terms.append(self.negation())
        return terms[0] if len(terms) == 1 else (lambda r: all(t(r) for t in terms))

    def negation(self) -> Predicate:
        if self.peek() == "not":
            self.take()
            inner = self.negation()
            return lambda r: not inner(r)
        return self.comparison()

    def comparison(self) -> Predicate:
        if self.peek() == "op" and self.tokens[self.pos][1] == "(":
            start = self.pos
            self.take()
            inner = self.expression()
            if self.peek() != "op" or self.tokens[self.pos][1] != ")":
                self.fail("')'")
            self.take()
            if self.peek() == "op" and self.tokens[self.pos][1] in _COMPARE:
                self.pos = start
                self.fail("a field, not a parenthesised condition, before a comparison")
            return inner
        left = self.operand()
        if self.peek() == "op" and self.tokens[self.pos][1] in _COMPARE:
            op = _COMPARE[self.take()[1]]
            right = self.operand()
            return lambda r: _compare(op, left(r), right(r))
        return lambda r: bool(left(r))

    def operand(self) -> Value:
        if self.peek() not in ("number", "string", "name"):
            self.fail("a field, number or string")
        kind, value, _ = self.take()
        if kind == "number":
            number = float(value) if any(c in value for c in ".eE") else int(value)
            return lambda r: number
        if kind == "string":
            text = _unquote(value)
            return lambda r: text
        if value in _CONSTANTS:
            constant = _CONSTANTS[value]
            return lambda r: constant
        path = value.split(".")
        return lambda r: _lookup(r, path)


def _unquote(token: str) -> str:
    if token[0] == "'":
        token = '"' + token[1:-1].replace('\\\'', "'").replace('"', '\\"') + '"'
    return str(json.loads(token))


def _lookup(record: Any, path: list[str]) -> Any:
    value: Any = record
    for key in path:
        if isinstance(value, Mapping):
            value = value.get(key)
        elif hasattr(value, "__struct_fields__"):  # a record struct, read without copying
            value = getattr(value, key, None)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def _compare(op: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    if op in (operator.eq, operator.ne):
        return op(a, b)
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, numbers) and isinstance(b, numbers):
        return op(a, b)
    if isinstance(a, str) and isinstance(b, str):
        return op(a, b)
    return False
