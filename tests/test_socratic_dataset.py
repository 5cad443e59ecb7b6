"""The Socratic plugin's problems: every one checked against its own unit tests."""

from __future__ import annotations

import pytest

from turnloom_socratic.dataset import DatasetError, load_problems, parse_problems
from turnloom_socratic.sandbox import run_tests

PROBLEMS = load_problems()


def test_there_are_enough_problems_of_both_kinds() -> None:
    assert len(PROBLEMS) >= 30
    kinds = {bug.kind for p in PROBLEMS.values() for bug in p.bugs}
    assert kinds == {"conceptual", "syntactical"}


@pytest.mark.parametrize("pid", sorted(PROBLEMS))
def test_problem_is_consistent(pid: str) -> None:
    p = PROBLEMS[pid]
    correct = run_tests(p.code, p.entry, p.tests)
    assert correct.all_passed, (correct.status, correct.errors)
    for n in (1, 2, 3):
        variant = p.variant(n)
        assert len(variant.fixes) == len(variant.bugs) == n
        buggy = run_tests(variant.code, p.entry, p.tests)
        assert not buggy.all_passed, f"{n}-bug variant passes its tests"
        assert buggy.status in ("ok", "crash"), buggy.status  # fails, but harmlessly
        code = variant.code
        for fix in variant.fixes:
            fixed = fix.apply(code)
            assert fixed is not None and fixed != code
            code = fixed
        assert code == p.code
        assert run_tests(code, p.entry, p.tests).all_passed


def test_fix_finds_a_shifted_line() -> None:
    p = PROBLEMS["sum_evens"]
    fix = p.variant(1).fixes[0]
    shifted = "# a comment the student added\n" + p.variant(1).code
    fixed = fix.apply(shifted)
    assert fixed == "# a comment the student added\n" + p.code
    assert fix.apply(p.code) is None  # nothing left to fix


BASE = '''
[[problems]]
id = "ident"
entry = "ident"
statement = "Return x."
code = """
def ident(x):
    y = x
    return y
"""
tests = [{ args = [1], expected = 1 }]
bugs = [
    { line = 2, buggy = "y = 0", kind = "conceptual", description = "d", key_terms = ["zero"] },
    { line = 3, buggy = "return x + 1", kind = "conceptual", description = "d", key_terms = ["one"] },
    { line = 3, buggy = "return", kind = "syntactical", description = "d", key_terms = ["value"] },
]
'''


@pytest.mark.parametrize("edit, message", [
    (("", ""), "line 3 already has a bug"),
    (('line = 2, buggy = "y = 0"', 'line = 9, buggy = "y = 0"'), "line 9 is outside the code"),
    (('entry = "ident"', 'entry = "other"'), "defines no function 'other'"),
    (('kind = "conceptual", description = "d", key_terms = ["zero"]',
      'kind = "logic", description = "d", key_terms = ["zero"]'), "kind"),
    (("tests = [", "testz = ["), "testz"),
])
def test_bad_problem_files_name_the_place(edit: tuple[str, str], message: str) -> None:
    text = BASE.replace(*edit) if edit[0] else BASE
    with pytest.raises(DatasetError, match="mine.toml") as info:
        parse_problems(text, "mine.toml")
    assert message in str(info.value)
