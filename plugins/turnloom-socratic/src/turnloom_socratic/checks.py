"""Judging the student: code edits out of messages, bugs fixed, answers right or wrong."""

from __future__ import annotations

import re

from turnloom_socratic.dataset import Problem, Variant
from turnloom_socratic.sandbox import Limits, SandboxResult, run_tests
from turnloom_socratic.state import Attribute, TutorState

_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)


def extract_code(text: str, entry: str) -> str | None:
    """The whole function in the message's last fenced block that defines `entry`
    (```python ... ```; an unclosed last block counts), or None.

    This is the students' edit protocol: to change their code they send the
    whole updated function in such a block."""
    for block in reversed(_FENCE.findall(text)):
        if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", block, re.MULTILINE):
            return block.strip("\n") + "\n"
    return None


def bugs_fixed(code: str, problem: Problem, variant: Variant,
               limits: Limits | None = None) -> tuple[list[bool], SandboxResult]:
    """Which of the variant's bugs `code` has fixed, judged by the unit tests.

    Bug i counts as fixed when the code passes, or when applying the ground-truth
    fixes of all the *other* bugs (those whose buggy line is still there) makes
    it pass: so a fix that differs from the reference but works is accepted."""
    result = run_tests(code, problem.entry, problem.tests, limits)
    if result.all_passed:
        return [True] * variant.n_bugs, result
    fixed = []
    for i in range(variant.n_bugs):
        patched: str = code
        for j, fix in enumerate(variant.fixes):
            if j != i:
                patched = fix.apply(patched) or patched
        fixed.append(patched != code and run_tests(patched, problem.entry, problem.tests,
                                                   limits).all_passed)
    return fixed, result


def refresh(state: TutorState, problem: Problem, variant: Variant,
            limits: Limits | None = None) -> None:
    """Bring the state's sandbox verdicts up to date with its code (cached by code)."""
    if state.checked_code == state.code:
        return
    fixed, result = bugs_fixed(state.code, problem, variant, limits)
    state.fixed = fixed
    state.tests_passed, state.tests_total = result.passed, result.total
    state.test_status = result.status
    state.checked_code = state.code


_SUFFIXES = ("ation", "ing", "ten", "ed", "es", "en", "s", "e")


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("`", " ").split())


def _stem(word: str) -> str:
    """A crude stem, so that "overwritten", "overwrites" and "overwrite" meet."""
    for suffix in _SUFFIXES:
        if len(word) - len(suffix) >= 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _stems(text: str) -> list[str]:
    return [_stem(w) for w in re.findall(r"\w+", text)]


def mentions(text: str, term: str) -> bool:
    """Whether `text` uses `term`: word by word (stemmed) when it is made of word
    characters, as a substring when it is an operator such as `+=`."""
    hay, needle = _normalise(text), _normalise(term)
    if not needle:
        return False
    if not re.fullmatch(r"[\w ]+", needle):
        return needle in hay
    words, want = _stems(hay), _stems(needle)
    return any(words[i:i + len(want)] == want for i in range(len(words) - len(want) + 1))


def answer_is_correct(text: str, attribute: Attribute, newly_fixed: bool) -> bool:
    """A student's answer is right when it fixed the target's bug or names one of
    the bug's key terms."""
    return newly_fixed or any(mentions(text, term) for term in attribute.key_terms)
