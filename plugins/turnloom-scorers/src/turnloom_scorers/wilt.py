"""WILT: find a hidden rule over three numbers (the Wason 2-4-6 task, multi-turn).

The ``wilt`` environment holds a hidden rule from `data/wilt_rules.json` (easy
to very hard; conversation i plays rule i mod n by default, see
`turnloom.items`). Each turn the player either proposes a test case
``Test case: (x, y, z)`` and is told True or False with the tests remaining,
or makes one explicit ``Final guess: lambda x, y, z: ...``, which ends the game.
A lambda written without "Final guess:" (a hypothesis while thinking) is not a
guess. The guess is parsed by `turnloom_scorers.safe_lambda` (never `eval`)
and judged as the official WILT harness judges it: correct when it agrees with
the rule on every point of the integer grid [-20, 20]^3 and on 10,000 floats
drawn from [1, 100] (seeded here, fresh per guess there); a wrong guess earns
the harness's pity points from the grid alone. A badly formatted turn gets a
warning; a second one in a row ends the game, and a valid test resets the
allowance, as the harness does.

State lives in ``conversation.meta["wilt"]`` (rule id, tests, warnings, the
guess and its verdict), so a resumed run goes on where it stopped; the
``wilt`` scorer reads it.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Any, Literal, Mapping, NamedTuple, Sequence

from turnloom.agents import Reply
from turnloom.items import check_order, item_index
from turnloom.records import ConversationState, TurnRecord

from turnloom_scorers import safe_lambda
from turnloom_scorers.settings import Settings, decode, load_data

META_KEY = "wilt"
Difficulty = Literal["easy", "medium", "hard", "very hard"]
DIFFICULTY_LEVELS = {"easy": 1, "medium": 2, "hard": 3, "very hard": 4}
MAX_TEST_VALUE = 10**6

SYSTEM_PROMPT = """\
We are playing a game. I have a hidden rule that takes three numbers (x, y, z) and says \
True or False. Find the rule.
Each turn, do exactly one of these:
- Test a case: end your message with Test case: (2, 4, 6) with your three numbers. \
I answer True or False and tell you how many tests you have left.
- Make your final guess: end your message with Final guess: lambda x, y, z: x < y < z \
with your rule as a Python lambda. Use only x, y, z, numbers, + - * / // % **, \
comparisons, and, or, not, abs, min, max. You get one guess and the game ends.
Think briefly, then give one test case or your final guess."""

_LAMBDA = re.compile(r"lambda\s+[A-Za-z_]\w*\s*,\s*[A-Za-z_]\w*\s*,\s*[A-Za-z_]\w*\s*:[^\n`]*")
_NUMBER = r"\s*([-+]?\d+(?:\.\d+)?)\s*"
_TRIPLE = re.compile(r"\(" + ",".join([_NUMBER] * 3) + r"\)")
# The harness's action markers (it looks for them case-insensitively).
_TEST_MARK = re.compile(r"test\s+case\s*:", re.IGNORECASE)
_GUESS_MARK = re.compile(r"final\s+guess\s*:", re.IGNORECASE)
GRID = range(-20, 21)  # the harness's integer grid, per coordinate
FLOAT_POINTS = 10_000  # and its random floats in [1, 100]
CORRECT_POINTS = 1000
PITY_POINTS = 400
BONUS_POINTS = 100


class Rule(Settings, frozen=True):
    id: str
    difficulty: Difficulty
    rule: str


@lru_cache(maxsize=1)
def shipped_rules() -> tuple[Rule, ...]:
    return tuple(Rule(**r) for r in load_data("wilt_rules.json")["rules"])


@lru_cache(maxsize=1)
def grid_triples() -> tuple[tuple[int, int, int], ...]:
    """The integer grid [-20, 20]^3 (68,921 points), where pity points are counted."""
    return tuple((x, y, z) for x in GRID for y in GRID for z in GRID)


@lru_cache(maxsize=4)
def evaluation_triples(seed: int = 0) -> tuple[tuple[float, ...], ...]:
    """Every point a guess is checked on: the grid, then 10,000 float triples drawn
    uniformly from [1, 100] (seeded, so every run checks the same points)."""
    rng = random.Random(seed)
    floats = [(rng.uniform(1, 100), rng.uniform(1, 100), rng.uniform(1, 100))
              for _ in range(FLOAT_POINTS)]
    return grid_triples() + tuple(floats)


class Verdict(NamedTuple):
    correct: bool  # agrees everywhere
    agreement: float  # share of all evaluation points that agree
    grid_agreement: float  # share of grid points that agree (the harness's pity score)


def judge_guess(guess: safe_lambda.SafeLambda, rule: safe_lambda.SafeLambda,
                budget_s: float = 10.0) -> Verdict:
    """`guess` against `rule` on the evaluation points (a guess past its time budget
    agrees nowhere)."""
    triples = evaluation_triples()
    expected = _rule_values(rule.source)
    try:
        got = safe_lambda.evaluate_many(guess, triples, budget_s)
    except safe_lambda.BudgetExceeded:
        return Verdict(False, 0.0, 0.0)
    same = [a == b for a, b in zip(got, expected)]
    n_grid = len(grid_triples())
    return Verdict(all(same), sum(same) / len(same), sum(same[:n_grid]) / n_grid)


def agreement(guess: safe_lambda.SafeLambda, rule: safe_lambda.SafeLambda,
              budget_s: float = 10.0) -> float:
    """The fraction of evaluation points on which `guess` and `rule` agree."""
    return judge_guess(guess, rule, budget_s).agreement


def points(correct: bool, grid_agreement: float, tests_used: int, max_tests: int) -> float:
    """The harness's score: 1000 plus a bonus for unused tests when correct, else
    400 times the share of grid points that agree (rounded down)."""
    if correct:
        return CORRECT_POINTS + BONUS_POINTS * (1 - tests_used / max_tests)
    return int(PITY_POINTS * grid_agreement)


@lru_cache(maxsize=64)
def _rule_values(source: str) -> tuple[bool, ...]:
    return tuple(safe_lambda.evaluate_many(safe_lambda.parse_lambda(source),
                                           evaluation_triples(), budget_s=60.0))


def parse_move(text: str) -> tuple[str, Any]:
    """What a player's message asks for: ("test", (x, y, z)), ("guess", source),
    ("invalid_guess", reason) or ("bad", reason).

    As in the harness, a "Test case:" marker comes first, then "Final guess:";
    only a lambda after "Final guess:" is a guess. A message with neither marker
    is read as a test when it holds a triple like (1, 2, 3) (the last one)."""
    tests = list(_TEST_MARK.finditer(text))
    if tests:
        found = _TRIPLE.search(text, tests[-1].end())
        if found is None:
            return "bad", "after 'Test case:' give three numbers like (1, 2, 3)"
        return _test(found.groups())
    guesses = list(_GUESS_MARK.finditer(text))
    if guesses:
        found = _LAMBDA.search(text, guesses[-1].end())
        if found is None:
            return "invalid_guess", "no lambda x, y, z: ... after 'Final guess:'"
        return "guess", found.group().strip().rstrip(".;")
    bare = _TRIPLE.findall(text)
    if bare:
        return _test(bare[-1])
    if _LAMBDA.search(text):
        return "bad", ("a lambda without 'Final guess:' is not a guess; end with "
                       "'Test case: (1, 2, 3)' or 'Final guess: lambda x, y, z: ...'")
    return "bad", "no test case like (1, 2, 3) and no final guess like lambda x, y, z: ..."


def _test(items: Sequence[str]) -> tuple[str, Any]:
    values: list[float] = []
    for item in items:
        value = float(item) if "." in item else int(item)
        if abs(value) > MAX_TEST_VALUE:
            return "bad", f"test values must be at most {MAX_TEST_VALUE} in size"
        values.append(value)
    return "test", tuple(values)


class WiltSettings(Settings, frozen=True):
    max_tests: int = 30
    difficulties: tuple[Difficulty, ...] = ()  # draw only rules of these (default: all)
    rules: tuple[str, ...] = ()  # draw only these rule ids (default: all)
    order: str = "by-index"  # "by-index": rule i mod n; "random": seeded draws


class Wilt:
    """The WILT environment (a deterministic participant without a model)."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = decode(WiltSettings, settings, "wilt")
        if s.max_tests < 1:
            raise ValueError("invalid wilt settings: `max_tests` must be at least 1")
        rules = shipped_rules()
        known = {r.id for r in rules}
        unknown = [r for r in s.rules if r not in known]
        if unknown:
            raise ValueError(f"invalid wilt settings: unknown rule ids {unknown} "
                             f"(known: {', '.join(sorted(known))})")
        chosen = [r for r in rules if (not s.rules or r.id in s.rules)
                  and (not s.difficulties or r.difficulty in s.difficulties)]
        if not chosen:
            raise ValueError("invalid wilt settings: no rule matches `rules` and `difficulties`")
        self.rules = {r.id: r for r in chosen}
        self.order = [r.id for r in chosen]
        self.max_tests = s.max_tests
        self.item_order = check_order(s.order, "invalid wilt settings: order")

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        state = conversation.meta.get(META_KEY)
        if state is None:
            # The rule depends only on the conversation's index and seed (stable on resume).
            rule_id = self.order[item_index(len(self.order), conversation.index,
                                            conversation.seed, self.item_order)]
            state = {"rule": rule_id, "max_tests": self.max_tests, "tests": [], "warnings": 0,
                     "strikes": 0, "guess": None, "correct": None, "agreement": None,
                     "grid_agreement": None, "ended": None}
            return self._reply(conversation, state,
                               f"I have a hidden rule over three numbers (x, y, z). You have "
                               f"{self.max_tests} tests. Propose a test case as "
                               f"Test case: (2, 4, 6), or make your final guess as "
                               f"Final guess: lambda x, y, z: ...")
        last = conversation.messages[-1][2] if conversation.messages else ""
        kind, value = parse_move(last)
        rule = safe_lambda.parse_lambda(self.rules[state["rule"]].rule)
        if kind == "guess":
            try:
                guess = safe_lambda.parse_lambda(value)
            except safe_lambda.UnsafeExpression as exc:
                kind, value = "invalid_guess", f"your guess is not allowed: {exc}"
            else:
                verdict = judge_guess(guess, rule)
                state = {**state, "guess": value, "agreement": verdict.agreement,
                         "grid_agreement": verdict.grid_agreement, "correct": verdict.correct,
                         "ended": "guess"}
                said = "correct" if verdict.correct else "not correct"
                return self._reply(conversation, state,
                                   f"Your guess is {said}. The game is over.", stop="wilt_guess")
        if kind == "invalid_guess":
            # The harness ends the game on a final guess it cannot use (0 points).
            state = {**state, "correct": False, "agreement": 0.0, "grid_agreement": 0.0,
                     "ended": "invalid_guess"}
            return self._reply(conversation, state, f"Invalid final guess ({value}). The game "
                               "is over.", stop="wilt_invalid_guess")
        if kind == "bad":
            return self._bad(conversation, state, value)
        tests_left = self.max_tests - len(state["tests"])
        if tests_left <= 0:
            state = {**state, "ended": "no_guess"}
            return self._reply(conversation, state, "No tests were left and no final guess "
                               "was made. The game is over.", stop="wilt_no_guess")
        try:
            result = rule(*value)
        except safe_lambda.EvaluationError:
            result = False
        # A valid test restores the bad-format allowance, as in the harness.
        state = {**state, "tests": state["tests"] + [[*value, result]], "strikes": 0}
        left = tests_left - 1
        follow = (f"{left} tests remaining." if left else
                  "No tests remaining: your next message must be your final guess.")
        return self._reply(conversation, state, f"{result}. {follow}")

    def _bad(self, conversation: ConversationState, state: dict[str, Any],
             reason: str) -> Reply:
        state = {**state, "warnings": state["warnings"] + 1,
                 "strikes": state.get("strikes", state["warnings"]) + 1}
        if state["strikes"] >= 2:
            state = {**state, "ended": "bad_format"}
            return self._reply(conversation, state, f"Invalid turn again ({reason}). The game "
                               f"is over.", stop="wilt_bad_format")
        return self._reply(conversation, state, f"Invalid turn: {reason}. This is a warning; "
                           f"another invalid turn before a valid test ends the game.")

    def _reply(self, conversation: ConversationState, state: dict[str, Any], text: str,
               stop: str | None = None) -> Reply:
        conversation.meta[META_KEY] = state
        return Reply(text, stop=stop)


class PlayerSettings(Settings, frozen=True):
    system_prompt: str = SYSTEM_PROMPT


class WiltPlayer:
    """An LLM player of WILT: the built-in assistant's view with the game's rules as
    its system prompt (override with ``system_prompt``)."""

    role = "assistant"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.prompt = decode(PlayerSettings, settings, "wilt-player").system_prompt

    def system_prompt(self, conversation: ConversationState, me: str) -> str | None:
        return self.prompt

    def role_in_view(self, speaker: str, me: str) -> str:
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        return Reply(text.strip())


class WiltScorer:
    """Per conversation: the rule, whether the guess was correct, its agreement with
    the rule on the evaluation points (all, and the grid), the harness's points,
    tests used and warnings (as in the paper: accuracy and the number of tests)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        if settings:
            raise ValueError(f"the wilt scorer takes no settings (got {sorted(settings)})")

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> None:
        return None

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any] | None:
        state = conversation.meta.get(META_KEY)
        if state is None:
            return None
        rules = shipped_rules()
        index = next((i for i, r in enumerate(rules) if r.id == state["rule"]), None)
        correct = bool(state["correct"])
        grid = state.get("grid_agreement") or 0.0
        ended = state["ended"] or conversation.stop_reason or "unfinished"
        # Scores are numbers: the rule's id stays in the record's meta["wilt"]; here
        # its place in the shipped list and its difficulty level (1 easy .. 4 very hard).
        return {
            "rule_index": index,
            "difficulty_level": (DIFFICULTY_LEVELS[rules[index].difficulty]
                                 if index is not None else None),
            "guessed": int(state["guess"] is not None),
            "correct": int(correct),
            "agreement": state["agreement"] if state["agreement"] is not None else 0.0,
            "grid_agreement": grid,
            "points": (points(correct, grid, len(state["tests"]), state.get("max_tests", 30))
                       if state["guess"] is not None else 0),
            "tests_used": len(state["tests"]),
            "warnings": state["warnings"],
            "ended": {ended: 1},
        }
