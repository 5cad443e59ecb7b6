"""WILT: find a hidden rule over three numbers (the Wason 2-4-6 task, multi-turn).

The ``wilt`` environment holds a hidden rule drawn from `data/wilt_rules.json`
(easy to very hard). Each turn the player either proposes a test case
``(x, y, z)`` and is told True or False with the tests remaining, or makes one
final guess ``lambda x, y, z: ...`` which ends the game. The guess is parsed by
`turnloom_scorers.safe_lambda` (never `eval`) and is correct when it agrees
with the rule on every evaluation triple (a grid and seeded random draws).
One badly formatted turn is forgiven with a warning; a second ends the game.

State lives in ``conversation.meta["wilt"]`` (rule id, tests, warnings, the
guess and its verdict), so a resumed run goes on where it stopped; the
``wilt`` scorer reads it.
"""

from __future__ import annotations

import itertools
import random
import re
from functools import lru_cache
from typing import Any, Literal, Mapping

from turnloom.agents import Reply
from turnloom.records import ConversationState, TurnRecord

from turnloom_scorers import safe_lambda
from turnloom_scorers.settings import Settings, decode, load_data

META_KEY = "wilt"
Difficulty = Literal["easy", "medium", "hard", "very hard"]
MAX_TEST_VALUE = 10**6

SYSTEM_PROMPT = """\
We are playing a game. I have a hidden rule that takes three numbers (x, y, z) and says \
True or False. Find the rule.
Each turn, do exactly one of these:
- Test a case: end your message with three numbers in parentheses, like (2, 4, 6). \
I answer True or False and tell you how many tests you have left.
- Make your final guess: write the rule as a Python lambda, like \
lambda x, y, z: x < y < z. Use only x, y, z, numbers, + - * / // % **, comparisons, \
and, or, not, abs, min, max. You get one guess and the game ends.
Think briefly, then give one test case or your final guess."""

_LAMBDA = re.compile(r"lambda\s+[A-Za-z_]\w*\s*,\s*[A-Za-z_]\w*\s*,\s*[A-Za-z_]\w*\s*:[^\n`]*")
_NUMBER = r"\s*([-+]?\d+(?:\.\d+)?)\s*"
_TRIPLE = re.compile(r"\(" + ",".join([_NUMBER] * 3) + r"\)")


class Rule(Settings, frozen=True):
    id: str
    difficulty: Difficulty
    rule: str


@lru_cache(maxsize=1)
def shipped_rules() -> tuple[Rule, ...]:
    return tuple(Rule(**r) for r in load_data("wilt_rules.json")["rules"])


@lru_cache(maxsize=8)
def evaluation_triples(seed: int = 0, random_count: int = 2000) -> tuple[tuple[float, ...], ...]:
    """The triples a guess is checked on: every integer triple in [-6, 6]^3, then
    seeded random integers in [-100, 100] and floats in [-20, 20]."""
    grid = list(itertools.product(range(-6, 7), repeat=3))
    rng = random.Random(seed)
    ints = [tuple(rng.randint(-100, 100) for _ in range(3)) for _ in range(random_count // 2)]
    floats = [tuple(round(rng.uniform(-20, 20), 2) for _ in range(3))
              for _ in range(random_count - random_count // 2)]
    return tuple(grid + ints + floats)


def agreement(guess: safe_lambda.SafeLambda, rule: safe_lambda.SafeLambda,
              budget_s: float = 2.0) -> float:
    """The fraction of evaluation triples on which `guess` and `rule` agree
    (0.0 when the guess runs past its time budget)."""
    triples = evaluation_triples()
    expected = _rule_values(rule.source)
    try:
        got = safe_lambda.evaluate_many(guess, triples, budget_s)
    except safe_lambda.BudgetExceeded:
        return 0.0
    return sum(a == b for a, b in zip(got, expected)) / len(triples)


@lru_cache(maxsize=64)
def _rule_values(source: str) -> tuple[bool, ...]:
    return tuple(safe_lambda.evaluate_many(safe_lambda.parse_lambda(source),
                                           evaluation_triples(), budget_s=30.0))


def parse_move(text: str) -> tuple[str, Any]:
    """What a player's message asks for: ("guess", source), ("test", (x, y, z)),
    or ("bad", reason). The last guess or test case in the message counts."""
    guesses = _LAMBDA.findall(text)
    if guesses:
        return "guess", guesses[-1].strip().rstrip(".;")
    tests = _TRIPLE.findall(text)
    if not tests:
        return "bad", "no test case like (1, 2, 3) and no final guess like lambda x, y, z: ..."
    values = []
    for item in tests[-1]:
        value = float(item) if "." in item else int(item)
        if abs(value) > MAX_TEST_VALUE:
            return "bad", f"test values must be at most {MAX_TEST_VALUE} in size"
        values.append(value)
    return "test", tuple(values)


class WiltSettings(Settings, frozen=True):
    max_tests: int = 30
    difficulties: tuple[Difficulty, ...] = ()  # draw only rules of these (default: all)
    rules: tuple[str, ...] = ()  # draw only these rule ids (default: all)


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

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        state = conversation.meta.get(META_KEY)
        if state is None:
            # The rule depends only on the conversation's seed (stable across resume).
            rule_id = self.order[random.Random(conversation.seed).randrange(len(self.order))]
            state = {"rule": rule_id, "tests": [], "warnings": 0, "guess": None,
                     "correct": None, "agreement": None, "ended": None}
            return self._reply(conversation, state,
                               f"I have a hidden rule over three numbers (x, y, z). You have "
                               f"{self.max_tests} tests. Propose a test case like (2, 4, 6), "
                               f"or make your final guess as lambda x, y, z: ...")
        last = conversation.messages[-1][2] if conversation.messages else ""
        kind, value = parse_move(last)
        rule = safe_lambda.parse_lambda(self.rules[state["rule"]].rule)
        if kind == "guess":
            try:
                guess = safe_lambda.parse_lambda(value)
            except safe_lambda.UnsafeExpression as exc:
                return self._bad(conversation, state, f"your guess is not allowed: {exc}")
            share = agreement(guess, rule)
            state = {**state, "guess": value, "agreement": share, "correct": share == 1.0,
                     "ended": "guess"}
            verdict = "correct" if share == 1.0 else "not correct"
            return self._reply(conversation, state, f"Your guess is {verdict}. The game is over.",
                               stop="wilt_guess")
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
        state = {**state, "tests": state["tests"] + [[*value, result]]}
        left = tests_left - 1
        follow = (f"{left} tests remaining." if left else
                  "No tests remaining: your next message must be your final guess.")
        return self._reply(conversation, state, f"{result}. {follow}")

    def _bad(self, conversation: ConversationState, state: dict[str, Any],
             reason: str) -> Reply:
        if state["warnings"] >= 1:
            state = {**state, "warnings": state["warnings"] + 1, "ended": "bad_format"}
            return self._reply(conversation, state, f"Invalid turn again ({reason}). The game "
                               f"is over.", stop="wilt_bad_format")
        state = {**state, "warnings": state["warnings"] + 1}
        return self._reply(conversation, state, f"Invalid turn: {reason}. This is your only "
                           f"warning; the next invalid turn ends the game.")

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
    the rule on the evaluation triples, tests used and warnings (as in the paper:
    accuracy and the number of tests)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        if settings:
            raise ValueError(f"the wilt scorer takes no settings (got {sorted(settings)})")

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> None:
        return None

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any] | None:
        state = conversation.meta.get(META_KEY)
        if state is None:
            return None
        rule = next((r for r in shipped_rules() if r.id == state["rule"]), None)
        return {
            "rule": state["rule"],
            "difficulty": rule.difficulty if rule else "",
            "guessed": int(state["guess"] is not None),
            "correct": int(bool(state["correct"])),
            "agreement": state["agreement"] if state["agreement"] is not None else 0.0,
            "tests_used": len(state["tests"]),
            "warnings": state["warnings"],
            "ended": state["ended"] or conversation.stop_reason or "",
        }
