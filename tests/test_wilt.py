"""WILT: the safe lambda evaluator, the hidden-rule environment, its scorer, end to end."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

import turnloom
from turnloom.agents import Environment, Reply
from turnloom.records import ConversationState, TurnRecord
from turnloom_scorers import safe_lambda, wilt
from turnloom_scorers.safe_lambda import EvaluationError, UnsafeExpression, parse_lambda

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("source, message", [
    ("__import__('os').system('true')", "must be a lambda"),
    ("lambda x, y, z: __import__('os').system('true')", "Attribute is not allowed"),
    ("lambda x, y, z: __import__('os')", "calling '__import__' is not allowed"),
    ("lambda x, y, z: x.__class__", "Attribute is not allowed"),
    ("lambda x, y, z: ().__class__.__bases__[0].__subclasses__()", "not allowed"),
    ("lambda x, y, z: x.real", "Attribute is not allowed"),
    ("lambda x, y, z: __builtins__", "name '__builtins__' is not allowed"),
    ("lambda x, y, z: print(x)", "calling 'print' is not allowed"),
    ("lambda x, y, z: eval('1')", "calling 'eval' is not allowed"),
    ("lambda x, y, z: open('/etc/passwd')", "calling 'open' is not allowed"),
    ("lambda x, y, z: getattr(x, 'real')", "calling 'getattr' is not allowed"),
    ("lambda x, y, z: abs.__self__", "Attribute is not allowed"),
    ("lambda x, y, z: x ** 10 ** 10", "exponent 10000000000 is larger than 64"),
    ("lambda x, y, z: 9 ** 9 ** 9 > x", "exponent 387420489 is larger"),
    ("lambda x, y, z: x ** 1000", "exponent 1000 is larger"),
    ("lambda x, y, z: x < 10 ** 100", "exponent 100 is larger"),
    ("lambda x, y, z: x < 99999999999", "larger than"),
    ("lambda x, y, z: x[0]", "Subscript is not allowed"),
    ("lambda x, y, z: [i for i in (x, y)]", "ListComp is not allowed"),
    ("lambda x, y, z: any(i for i in (x,))", "calling 'any' is not allowed"),
    ("lambda x, y, z: {x: y}", "Dict is not allowed"),
    ("lambda x, y, z: (w := x) > 0", "NamedExpr is not allowed"),
    ("lambda x, y, z: (lambda: 1)()", "not allowed"),
    ("lambda x, y, z: 'a' * 9", "constant 'a' is not allowed"),
    ("lambda x, y, z: x in (1, 2)", "comparison In is not allowed"),
    ("lambda x, y, z: x is y", "comparison Is is not allowed"),
    ("lambda x, y, z: x << 100", "operator LShift is not allowed"),
    ("lambda x, y, z: x @ y", "operator MatMult is not allowed"),
    ("lambda x, y, z: ~x", "operator Invert is not allowed"),
    ("lambda x, y, z: min(*(x, y))", "plain positional arguments"),
    ("lambda x, y, z: abs(x, y)", r"abs\(\) got 2 arguments"),
    ("lambda x, y, z, w=__import__('os'): x", "exactly three plain parameters"),
    ("lambda x, y: x < y", "exactly three plain parameters"),
    ("lambda *a: 1", "exactly three plain parameters"),
    ("lambda x, y, abs: x", "distinct names"),
    ("lambda x, y, z: " + "(" * 200 + "x" + ")" * 200, "longer than"),
    ("lambda x, y, z: min(" + ",".join(["x"] * 160) + ")", "more than 150 parts"),
    ("lambda x, y, z: -(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-(-x)))))))))))))))))))))))))",
     "nested deeper"),
    ("lambda x, y, z: x <", "not a valid expression"),
    ("import os", "not a valid expression"),
])
def test_malicious_or_malformed_guesses_are_rejected(source: str, message: str) -> None:
    with pytest.raises(UnsafeExpression, match=message):
        parse_lambda(source)


def test_allowed_expressions_evaluate_like_python() -> None:
    cases = [
        "lambda x, y, z: x < y < z",
        "lambda a, b, c: a + b == c or not (c > 0)",
        "lambda x, y, z: abs(x - y) == abs(y - z)",
        "lambda x, y, z: max(x, y, z) - min(x, y, z) < 10",
        "lambda x, y, z: (x % 2 == 0) != (z // 3 > 1)",
        "lambda x, y, z: x ** 2 + y ** 2 == z ** 2",
        "lambda x, y, z: (x if x > y else y) >= z",
        "lambda x, y, z: floor(x / 2) == ceil(y / 2)",
        "lambda x, y, z: True",
    ]
    rng = random.Random(1)
    triples = [tuple(rng.randint(-9, 9) for _ in range(3)) for _ in range(300)] + [(3, 4, 5)]
    import math
    for source in cases:
        safe = parse_lambda(source)
        plain = eval(source, {"floor": math.floor, "ceil": math.ceil})  # trusted test input
        for t in triples:
            assert safe(*t) == bool(plain(*t)), (source, t)


def test_evaluation_limits_raise_and_count_as_false() -> None:
    big = parse_lambda("lambda x, y, z: x ** 60 > 0")
    with pytest.raises(EvaluationError, match="too large"):
        big(10**6, 0, 0)
    div = parse_lambda("lambda x, y, z: x / y > 0")
    with pytest.raises(EvaluationError, match="ZeroDivisionError"):
        div(1, 0, 0)
    root = parse_lambda("lambda x, y, z: sqrt(x) > 1")
    with pytest.raises(EvaluationError):
        root(-4, 0, 0)
    complex_power = parse_lambda("lambda x, y, z: x ** 0.5 > 0")
    with pytest.raises(EvaluationError, match="not a real number"):
        complex_power(-4, 0, 0)
    growth = parse_lambda("lambda x, y, z: x * x * x * x * x * x * x * x * x * x > 0")
    with pytest.raises(EvaluationError, match="larger than the limit"):
        growth(10**7, 0, 0)
    assert safe_lambda.evaluate_many(div, [(1, 0, 0), (1, 1, 0)]) == [False, True]


def test_evaluation_time_is_bounded() -> None:
    heavy = parse_lambda("lambda x, y, z: " + " and ".join(["x * y * z ** 3 < 10 ** 9"] * 9))
    start = time.perf_counter()
    with pytest.raises(safe_lambda.BudgetExceeded):
        safe_lambda.evaluate_many(heavy, [(1.5, 2.5, 3.5)] * 200_000, budget_s=0.2)
    assert time.perf_counter() - start < 2.0


def test_shipped_rules() -> None:
    rules = wilt.shipped_rules()
    assert len(rules) >= 20
    assert {r.difficulty for r in rules} == {"easy", "medium", "hard", "very hard"}
    assert len({r.id for r in rules}) == len(rules)
    for r in rules:
        fn = parse_lambda(r.rule)
        values = wilt._rule_values(r.rule)
        # Every rule is sometimes True and sometimes False on the evaluation triples.
        assert 0 < sum(values) < len(values), r.id
        assert isinstance(fn(1, 2, 3), bool)


def test_agreement_identifies_equivalent_guesses() -> None:
    rule = parse_lambda("lambda x, y, z: x < y < z")
    assert wilt.agreement(parse_lambda("lambda a, b, c: b > a and c > b"), rule) == 1.0
    assert wilt.agreement(parse_lambda("lambda x, y, z: x <= y <= z"), rule) < 1.0
    assert 0.0 < wilt.agreement(parse_lambda("lambda x, y, z: x < z"), rule) < 1.0


def test_guesses_are_judged_on_the_official_harness_points() -> None:
    points = wilt.evaluation_triples()
    grid = wilt.grid_triples()
    # The integer grid [-20, 20]^3 and then 10,000 float triples in [1, 100].
    assert len(grid) == 41 ** 3 and len(points) == 41 ** 3 + 10_000
    assert points[:len(grid)] == grid
    assert {v for t in grid for v in t} == set(range(-20, 21))
    floats = points[len(grid):]
    assert all(1 <= v <= 100 and isinstance(v, float) for t in floats for v in t)
    # A guess that differs from the rule only beyond 6 (the old grid's edge) is wrong.
    rule = parse_lambda("lambda x, y, z: x < y < z")
    near = wilt.judge_guess(parse_lambda("lambda x, y, z: x < y < z and z < 10"), rule)
    assert not near.correct
    # Differs only at x = 20 on the grid, where the harness still looks.
    edge = wilt.judge_guess(parse_lambda("lambda x, y, z: x < y < z or x == 20"), rule)
    assert not edge.correct and edge.grid_agreement == pytest.approx(1 - 41 * 41 / 41 ** 3)
    # Differs only at non-integer inputs above 1: caught by the floats, not by the grid.
    floaty = wilt.judge_guess(parse_lambda("lambda x, y, z: x < y < z and x == floor(x)"),
                              rule)
    assert not floaty.correct and floaty.grid_agreement == 1.0
    # The harness's points: 1000 plus a bonus for unused tests, else 400 x grid share.
    assert wilt.points(True, 1.0, 6, 30) == pytest.approx(1080.0)
    assert wilt.points(False, edge.grid_agreement, 6, 30) == int(400 * (1 - 1 / 41))


@pytest.mark.parametrize("text, move", [
    ("I will test (2, 4, 6).", ("test", (2, 4, 6))),
    ("First (1, 2, 3) then ( -1 ,0.5, 7 )", ("test", (-1, 0.5, 7))),
    ("Test Case: ```(1, -2.5, 3)```", ("test", (1, -2.5, 3))),
    ("Final guess: lambda x, y, z: x < y < z.", ("guess", "lambda x, y, z: x < y < z")),
    ("Final Guess: ```lambda x,y,z: x == y```", ("guess", "lambda x,y,z: x == y")),
    # A hypothesis written while thinking is not a guess: the test case counts.
    ("Maybe lambda x, y, z: x == y holds. Test case: (1, 2, 3)", ("test", (1, 2, 3))),
    ("Test (1,2,3)? No: ```lambda x, y, z: x == y```", ("test", (1, 2, 3))),
    # As in the harness, a test case marker is read before a final guess marker.
    ("Test case: (4, 4, 4)\nFinal guess: lambda x, y, z: True", ("test", (4, 4, 4))),
    ("My hypothesis: lambda x, y, z: x < y", ("bad", "a lambda without 'Final guess:' is not "
                                           "a guess; end with 'Test case: (1, 2, 3)' or "
                                           "'Final guess: lambda x, y, z: ...'")),
    ("Final guess: x is less than y", ("invalid_guess",
                                       "no lambda x, y, z: ... after 'Final guess:'")),
    ("Test case: one two three", ("bad", "after 'Test case:' give three numbers like (1, 2, 3)")),
    ("I am not sure.", ("bad", "no test case like (1, 2, 3) and no final guess like "
                                "lambda x, y, z: ...")),
    ("(1, 2, 99999999)", ("bad", "test values must be at most 1000000 in size")),
])
def test_parse_move(text: str, move: tuple) -> None:
    assert wilt.parse_move(text) == move


def _play(env: wilt.Wilt, moves: list[str], seed: int = 0) -> tuple[ConversationState, list[Reply]]:
    conv = ConversationState("w", index=0, seed=seed)
    replies: list[Reply] = []

    def add(participant: str, text: str) -> None:
        role = "user" if participant == "game" else "assistant"
        conv.messages.append((participant, role, text))
        conv.turns.append(TurnRecord(conversation_id="w", branch=0, turn=len(conv.turns),
                                     participant=participant, role=role, text=text,
                                     node=len(conv.turns)))

    for move in [None, *moves]:
        if move is not None:
            add("player", move)
        reply = env.respond(conv, "game", random.Random(0))
        replies.append(reply)
        add("game", reply.text)
        if reply.stop:
            break
    return conv, replies


def test_game_protocol_tests_guess_and_score() -> None:
    env = wilt.Wilt({"rules": ["increasing"], "max_tests": 3})
    assert isinstance(env, Environment)
    conv, replies = _play(env, ["(1, 2, 3)", "Test case: (3, 2, 1)",
                                "Final guess: lambda x, y, z: x < y < z"])
    assert "3 tests" in replies[0].text
    assert [r.text for r in replies[1:3]] == ["True. 2 tests remaining.",
                                              "False. 1 tests remaining."]
    assert replies[-1].stop == "wilt_guess" and "is correct" in replies[-1].text
    conv.stop_reason = replies[-1].stop
    score = wilt.WiltScorer({}).score_conversation(conv)
    assert conv.meta["wilt"]["rule"] == "increasing"
    assert score == {"rule_index": 0, "difficulty_level": 1, "guessed": 1, "correct": 1,
                     "agreement": 1.0, "grid_agreement": 1.0,
                     "points": pytest.approx(1000 + 100 * (1 - 2 / 3)), "tests_used": 2,
                     "warnings": 0, "ended": {"guess": 1}}


def test_one_bad_turn_is_forgiven_the_second_in_a_row_ends_the_game() -> None:
    env = wilt.Wilt({"rules": ["all-equal"]})
    # As in the harness, a valid test between two bad turns restores the allowance.
    conv, replies = _play(env, ["hello", "(1, 1, 1)", "lambda x, y, z: x == y", "(2, 2, 2)",
                                "hmm", "still thinking", "(3, 3, 3)"])
    assert "warning" in replies[1].text and not replies[1].stop
    assert replies[2].text.startswith("True.")
    assert "not a guess" in replies[3].text and not replies[3].stop
    assert replies[4].text.startswith("True.")
    assert replies[-1].stop == "wilt_bad_format" and len(replies) == 7
    score = wilt.WiltScorer({}).score_conversation(conv)
    assert (score["guessed"], score["correct"], score["warnings"], score["ended"]) == (
        0, 0, 4, {"bad_format": 1})


def test_an_unusable_final_guess_ends_the_game_with_no_points() -> None:
    env = wilt.Wilt({"rules": ["all-equal"]})
    conv, replies = _play(env, ["(1, 1, 1)", "Final guess: lambda x, y, z: x.__class__"])
    assert replies[-1].stop == "wilt_invalid_guess"
    assert "Attribute is not allowed" in replies[-1].text
    score = wilt.WiltScorer({}).score_conversation(conv)
    assert (score["guessed"], score["correct"], score["points"], score["ended"]) == (
        0, 0, 0, {"invalid_guess": 1})


def test_running_out_of_tests_needs_a_guess() -> None:
    env = wilt.Wilt({"rules": ["z-positive"], "max_tests": 1})
    _, replies = _play(env, ["(1, 1, 1)", "(1, 1, 2)"])
    assert "must be your final guess" in replies[1].text
    assert replies[-1].stop == "wilt_no_guess"


def test_rules_are_played_once_each_by_index_or_drawn_by_seed() -> None:
    def rule_of(env: wilt.Wilt, index: int, seed: int) -> str:
        conv = ConversationState("w", index=index, seed=seed)
        env.respond(conv, "game", random.Random(0))
        return conv.meta["wilt"]["rule"]

    env = wilt.Wilt({})
    order = [r.id for r in wilt.shipped_rules()]
    # 24 conversations over 24 rules: every rule once (seed draws played 14 of them).
    assert [rule_of(env, i, 1000 + i) for i in range(len(order))] == order
    assert rule_of(env, len(order), 7) == order[0]
    drawn = wilt.Wilt({"order": "random"})
    picks = [rule_of(drawn, 0, s) for s in range(40)]
    assert picks == [order[random.Random(s).randrange(len(order))] for s in range(40)]
    assert rule_of(drawn, 5, 3) == rule_of(drawn, 9, 3)
    with pytest.raises(ValueError, match="invalid wilt settings: order"):
        wilt.Wilt({"order": "shuffle"})
    with pytest.raises(ValueError, match="unknown rule ids"):
        wilt.Wilt({"rules": ["nope"]})
    with pytest.raises(ValueError, match=r"invalid wilt settings.*max_test"):
        wilt.Wilt({"max_test": 3})
    with pytest.raises(ValueError, match="difficulties"):
        wilt.Wilt({"difficulties": ["trivial"]})


def test_wilt_scenario_on_the_scripted_backend(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TURNLOOM_PLUGINS", "scorers")
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    scenario = turnloom.Scenario.from_dict({
        "run": {"name": "wilt", "conversations": 12, "max_turns": 30, "seed": 1},
        "backends": {"sim": {"type": "scripted", "lines": [
            "Let me test (1, 2, 3)", "hmm", "not sure", "I try (3, 2, 1).",
            "Final guess: lambda x, y, z: x < y < z",
            "Final guess: lambda x, y, z: __import__('os')"]}},
        "participants": [{"name": "game", "agent": "wilt", "settings": {"max_tests": 5}},
                         {"name": "player", "agent": "wilt-player"}],
        "scorers": [{"name": "wilt"}],
    })
    records = turnloom.run(scenario, out=tmp_path / "run", progress=False).conversations()
    ends = set()
    for record in records:
        assert record["errors"] == []
        score = record["scores"]["wilt"]
        (end,) = score["ended"]
        ends.add(end)
        assert record["stop_reason"] == "wilt_" + end
        assert record["messages"][0]["role"] == "system"
        assert "hidden rule" in record["messages"][0]["content"]
        tests = sum(1 for m in record["messages"] if m.get("name") == "game"
                    and m["content"].split(".")[0] in ("True", "False"))
        assert score["tests_used"] == tests
    assert {"guess", "bad_format"} <= ends


@pytest.mark.model
def test_wilt_example_runs_on_smollm2(tmp_path: Path, embedded_model: None) -> None:
    scenario = turnloom.load_scenario(EXAMPLES / "wilt.toml")
    data = scenario.to_dict()
    data["run"].update(conversations=2, max_turns=6, batch_size=2)
    data["participants"][1]["sampling"]["max_new_tokens"] = 24
    data["backends"]["local"]["settings"]["threads"] = 1
    result = turnloom.run(turnloom.Scenario.from_dict(data), out=tmp_path / "wilt",
                          progress=False)
    records = result.conversations()
    assert len(records) == 2
    for record in records:
        assert record["errors"] == []
        score = record["scores"]["wilt"]
        assert score["difficulty_level"] in (1, 2)
        assert record["stop_reason"] in ("max_turns", "wilt_guess", "wilt_bad_format",
                                         "wilt_invalid_guess", "wilt_no_guess")
        game = [m["content"] for m in record["messages"] if m.get("name") == "game"]
        # Every answer of the game is one of its protocol messages.
        assert all(t.startswith(("I have a hidden rule", "True.", "False.", "Invalid turn",
                                 "Invalid final guess", "Your guess", "No tests")) for t in game)
        assert score["tests_used"] == sum(t.startswith(("True.", "False.")) for t in game)
    assert os.path.exists(tmp_path / "wilt" / "summary.json")
