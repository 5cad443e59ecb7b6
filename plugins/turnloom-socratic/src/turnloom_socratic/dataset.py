"""The debugging problems: statements, correct code, bugs as line changes, unit tests.

A bug replaces one line of the correct function; its fix is the reverse change. The
1-, 2- and 3-bug variants of a problem use its bugs [0], [0, 1] and [0, 1, 2].
"""

from __future__ import annotations

import functools
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import msgspec

BugKind = Literal["conceptual", "syntactical"]
MAX_BUGS = 3


class DatasetError(ValueError):
    """The problem file is malformed; the message names the problem and field."""


class Case(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One unit test: the function called with `args` must return `expected`."""

    args: list[Any]
    expected: Any


class Bug(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    line: int  # 1-based line of the correct code that this bug replaces
    buggy: str  # the replacement; its indentation adds to the correct line's
    kind: BugKind
    description: str
    key_terms: tuple[str, ...]


class Fix(msgspec.Struct, frozen=True):
    """Replace line `line` (1-based) reading `before` with `after` (whole lines)."""

    line: int
    before: str
    after: str

    def apply(self, code: str) -> str | None:
        """`code` with this fix applied, or None where the buggy line is not found.

        The line is looked for at its number first, then anywhere (a student's
        edits shift lines), then ignoring indentation."""
        lines = code.splitlines()
        at = self.line - 1
        if not (0 <= at < len(lines) and lines[at] == self.before):
            at = next((i for i, text in enumerate(lines) if text == self.before), -1)
        if at < 0:
            if self.before.strip() == self.after.strip():  # an indentation fix needs the exact line
                return None
            at = next((i for i, text in enumerate(lines)
                       if text.strip() == self.before.strip()), -1)
            if at < 0:
                return None
            indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
            lines[at] = indent + self.after.strip()
        else:
            lines[at] = self.after
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        return f"replace `{self.before.strip()}` with `{self.after.strip()}` on line {self.line}"


class Variant(msgspec.Struct, frozen=True, kw_only=True):
    """A problem with its first `n_bugs` bugs put in."""

    problem_id: str
    n_bugs: int
    code: str
    bugs: tuple[Bug, ...]
    fixes: tuple[Fix, ...]


class Problem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    entry: str  # the function the tests call
    statement: str
    code: str
    tests: tuple[Case, ...]
    bugs: tuple[Bug, ...]

    def fix(self, i: int) -> Fix:
        bug = self.bugs[i]
        correct = self.code.splitlines()[bug.line - 1]
        indent = correct[: len(correct) - len(correct.lstrip())]
        return Fix(line=bug.line, before=indent + bug.buggy, after=correct)

    def variant(self, n_bugs: int) -> Variant:
        if not 1 <= n_bugs <= min(MAX_BUGS, len(self.bugs)):
            raise ValueError(f"problem {self.id!r} has no {n_bugs}-bug variant")
        lines = self.code.splitlines()
        fixes = tuple(self.fix(i) for i in range(n_bugs))
        for fix in fixes:
            lines[fix.line - 1] = fix.before
        return Variant(problem_id=self.id, n_bugs=n_bugs, code="\n".join(lines) + "\n",
                       bugs=self.bugs[:n_bugs], fixes=fixes)


class _File(msgspec.Struct, forbid_unknown_fields=True):
    problems: tuple[Problem, ...]


def parse_problems(text: str, source: str = "problems") -> dict[str, Problem]:
    """Decode and check a problem file (TOML); raises DatasetError naming the place."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(f"{source}: invalid TOML: {exc}") from None
    try:
        problems = msgspec.convert(data, _File).problems
    except msgspec.ValidationError as exc:
        raise DatasetError(f"{source}: {exc}") from None
    out: dict[str, Problem] = {}
    for k, p in enumerate(problems):
        where = f"{source}: problem {p.id!r} (#{k})"
        if p.id in out:
            raise DatasetError(f"{where}: duplicate id")
        _check_problem(p, where)
        out[p.id] = p
    if not out:
        raise DatasetError(f"{source}: no problems")
    return out


def _check_problem(p: Problem, where: str) -> None:
    if not re.search(rf"^def {re.escape(p.entry)}\(", p.code, re.MULTILINE):
        raise DatasetError(f"{where}: code defines no function {p.entry!r}")
    if not p.tests:
        raise DatasetError(f"{where}: no tests")
    if len(p.bugs) < MAX_BUGS:
        raise DatasetError(f"{where}: needs {MAX_BUGS} bugs, has {len(p.bugs)}")
    lines = p.code.splitlines()
    seen: set[int] = set()
    for j, bug in enumerate(p.bugs):
        at = f"{where}, bug {j}"
        if not 1 <= bug.line <= len(lines):
            raise DatasetError(f"{at}: line {bug.line} is outside the code (1..{len(lines)})")
        if bug.line in seen:
            raise DatasetError(f"{at}: line {bug.line} already has a bug")
        seen.add(bug.line)
        if p.fix(j).before == lines[bug.line - 1]:
            raise DatasetError(f"{at}: the buggy line equals the correct one")
        if not bug.key_terms or not bug.description.strip():
            raise DatasetError(f"{at}: needs a description and key terms")


@functools.cache
def load_problems(path: str | None = None) -> dict[str, Problem]:
    """The problems shipped with the package, or those in the TOML file at `path`."""
    if path is None:
        text = resources.files("turnloom_socratic").joinpath("data/problems.toml").read_text("utf-8")
        return parse_problems(text, "turnloom_socratic/data/problems.toml")
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_problems(text, path)
