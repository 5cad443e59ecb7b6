"""Scorers: bugs fixed (by the sandbox), tutor turns, and leakage of fixes."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import msgspec

from turnloom.records import ConversationState, TurnRecord
from turnloom.references import check_participant_names
from turnloom_socratic.checks import bugs_fixed
from turnloom_socratic.sandbox import Limits
from turnloom_socratic.state import load_state, problem_of

_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d+)?|==|!=|<=|>=|\+=|-=|\*=|/=|//|\*\*|[^\s\w]")


def _convert(cls: type, settings: Mapping[str, Any], what: str) -> Any:
    try:
        return msgspec.convert(dict(settings), cls)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"invalid {what} settings: {exc}") from None


class BugsFixedSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sandbox: Limits = Limits()


class BugsFixed:
    """Scorer `socratic-bugs-fixed`: runs the student's final code in the sandbox.
    Per conversation: tests passed, bugs fixed (count, fraction, and fractions of
    the conceptual and of the syntactical bugs)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _convert(BugsFixedSettings, settings, "socratic-bugs-fixed")

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> None:
        return None

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any]:
        state = load_state(conversation)
        problem, variant = problem_of(conversation)
        fixed, result = bugs_fixed(state.code, problem, variant, self.s.sandbox)
        # Scores are numbers: the problem's id is in the student's profile, and the
        # sandbox's status is reported as whether the final code ran cleanly.
        out: dict[str, Any] = {
            "bugs": variant.n_bugs, "bugs_fixed": sum(fixed),
            "fraction_fixed": sum(fixed) / variant.n_bugs, "all_fixed": int(all(fixed)),
            "tests_passed": result.passed, "tests_total": result.total,
            "code_changed": int(state.code != variant.code),
            "sandbox_ok": int(result.status == "ok"),
        }
        for kind in ("conceptual", "syntactical"):
            mine = [f for f, bug in zip(fixed, variant.bugs) if bug.kind == kind]
            if mine:
                out[f"{kind}_fixed_fraction"] = sum(mine) / len(mine)
        return out


class TutorTurnsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tutor: str = "tutor"


class TutorTurns:
    """Scorer `socratic-tutor-turns`: how many turns the tutor took."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _convert(TutorTurnsSettings, settings, "socratic-tutor-turns")

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, tutor=self.s.tutor)

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> None:
        return None

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any]:
        return {"tutor_turns": len(conversation.turns_of(self.s.tutor))}


# -- leakage ---------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    """Code-aware tokens: names, numbers, multi-character operators, punctuation."""
    return _TOKEN.findall(text)


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest contiguous run of tokens shared by `a` and `b`."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
        prev = cur
    return best


def fix_similarity(message: str, before: str, after: str) -> tuple[float, float, bool]:
    """(similarity, overlap, reveals) of a message to one fix.

    similarity: the longest run of the fixed line's tokens found verbatim in the
    message, as a fraction of the line; overlap: the fraction of the line's tokens
    found anywhere in the message (as a multiset); reveals: the message holds
    more of the fixed line than of the buggy one, so it is not just quoting the
    student's own line."""
    msg, fixed, buggy = tokens(message), tokens(after), tokens(before)
    if not fixed:
        return 0.0, 0.0, False
    run = longest_common_run(fixed, msg)
    pool: dict[str, int] = {}
    for t in msg:
        pool[t] = pool.get(t, 0) + 1
    found = 0
    for t in fixed:
        if pool.get(t, 0) > 0:
            pool[t] -= 1
            found += 1
    return run / len(fixed), found / len(fixed), run > longest_common_run(buggy, msg)


class LeakageSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tutor: str = "tutor"
    threshold: float = 0.8  # similarity at or above which a revealing message leaks


class Leakage:
    """Scorer `socratic-leakage`: whether the tutor gave a fix away verbatim or
    nearly so. Per tutor turn: the highest similarity to any of the problem's
    fixed lines and a leaked flag; per conversation: their maximum, the number
    of leaking turns, and the flag."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _convert(LeakageSettings, settings, "socratic-leakage")
        if not 0 < self.s.threshold <= 1:
            raise ValueError("invalid socratic-leakage settings: threshold must be in (0, 1]")

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, tutor=self.s.tutor)

    def score_message(self, conversation: ConversationState, text: str) -> dict[str, Any]:
        _, variant = problem_of(conversation)
        best, best_overlap, leaked = 0.0, 0.0, False
        for fix in variant.fixes:
            sim, overlap, reveals = fix_similarity(text, fix.before, fix.after)
            best, best_overlap = max(best, sim), max(best_overlap, overlap)
            leaked = leaked or (reveals and sim >= self.s.threshold)
        return {"similarity": round(best, 4), "overlap": round(best_overlap, 4),
                "leaked": int(leaked)}

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> dict[str, Any] | None:
        if turn.participant != self.s.tutor:
            return None
        return self.score_message(conversation, turn.text)

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any]:
        scored = [self.score_message(conversation, t.text)
                  for t in conversation.turns_of(self.s.tutor)]
        return {"max_similarity": max((s["similarity"] for s in scored), default=0.0),
                "leaked_turns": sum(s["leaked"] for s in scored),
                "leaked": int(any(s["leaked"] for s in scored))}
