"""The TreeInstruct state machine, the verifier's judging, code edits and leakage."""

from __future__ import annotations

import random

import pytest

from turnloom.records import ConversationState, TurnRecord
from turnloom_socratic.checks import answer_is_correct, bugs_fixed, extract_code, mentions
from turnloom_socratic.dataset import load_problems
from turnloom_socratic.scorers import Leakage, fix_similarity
from turnloom_socratic.state import (
    Attribute,
    MachineSettings,
    TutorState,
    load_state,
    order_attributes,
    save_state,
    step,
)
from turnloom_socratic.verifier import Verifier

PROBLEMS = load_problems()
LOOSE = MachineSettings(fix_after=100, max_tutor_turns=100)


def make_state(kinds: tuple[str, ...] = ("conceptual", "conceptual")) -> TutorState:
    attrs = [Attribute(bug=i, kind=k, description=f"bug {i}", key_terms=("x",))  # type: ignore[arg-type]
             for i, k in enumerate(kinds)]
    return TutorState(problem_id="p", n_bugs=len(kinds), code="", attributes=attrs,
                      fixed=[False] * len(kinds))


def test_first_instruction_is_a_root_question() -> None:
    state = make_state()
    d = step(state, None, LOOSE)
    assert (d.action, d.judgement, d.target, d.depth) == ("question", "none", 0, 1)


def test_child_after_correct_and_sibling_after_wrong() -> None:
    state = make_state()
    step(state, None, LOOSE)
    child = step(state, True, LOOSE)
    assert (child.action, child.judgement, child.depth, child.level_failures) == (
        "child", "correct", 2, 0)
    sibling = step(state, False, LOOSE)
    assert (sibling.action, sibling.judgement, sibling.depth, sibling.level_failures) == (
        "sibling", "wrong", 2, 1)
    assert state.attributes[0].correct == 1 and state.attributes[0].wrong == 1
    # a correct answer after a failure goes deeper and clears the level's failures
    deeper = step(state, True, LOOSE)
    assert (deeper.action, deeper.depth, deeper.level_failures) == ("child", 3, 0)


def test_explanation_after_three_failures_on_a_level() -> None:
    state = make_state()
    step(state, None, LOOSE)
    actions = [step(state, False, LOOSE).action for _ in range(4)]
    assert actions == ["sibling", "sibling", "explain", "sibling"]
    assert state.depth == 1


def test_explanation_at_depth_seven() -> None:
    state = make_state()
    step(state, None, LOOSE)
    decisions = [step(state, True, LOOSE) for _ in range(7)]
    assert [d.action for d in decisions] == ["child"] * 5 + ["explain", "explain"]
    assert [d.depth for d in decisions] == [2, 3, 4, 5, 6, 7, 7]
    # at depth 7 a wrong answer is explained too
    assert step(state, False, LOOSE).action == "explain"


def test_request_fix_after_enough_correct_answers() -> None:
    state = make_state()
    settings = MachineSettings(fix_after=2, max_tutor_turns=100)
    step(state, None, settings)
    assert [step(state, True, settings).action for _ in range(3)] == [
        "child", "request_fix", "request_fix"]


def test_target_moves_on_when_its_bug_is_fixed() -> None:
    state = make_state()
    step(state, None, LOOSE)
    step(state, False, LOOSE)
    state.fixed = [True, False]
    d = step(state, True, LOOSE)
    assert (d.action, d.judgement, d.target, d.depth, d.level_failures) == (
        "question", "correct", 1, 1, 0)
    assert state.attributes[0].resolved and not state.attributes[1].resolved


def test_a_bug_fixed_out_of_order_resolves_its_attribute() -> None:
    state = make_state(("conceptual", "conceptual", "syntactical"))
    step(state, None, LOOSE)
    state.fixed = [False, True, False]
    d = step(state, False, LOOSE)
    assert d.target == 0 and d.action == "sibling"
    assert [a.resolved for a in state.attributes] == [False, True, False]
    state.fixed = [True, True, False]
    assert step(state, True, LOOSE).target == 2


def test_stop_when_fixed_and_on_budget() -> None:
    state = make_state()
    step(state, None, LOOSE)
    state.fixed = [True, True]
    d = step(state, True, LOOSE)
    assert (d.action, d.stop) == ("stop", "bugs_fixed")
    budget = MachineSettings(max_tutor_turns=2)
    state = make_state()
    step(state, None, budget)
    state.tutor_turns = 2
    d = step(state, False, budget)
    assert (d.action, d.stop) == ("stop", "turn_budget")


def test_conceptual_attributes_come_first() -> None:
    variant = PROBLEMS["sum_evens"].variant(3)  # bugs: conceptual, conceptual, syntactical
    kinds = [(a.kind, a.bug) for a in order_attributes(variant)]
    assert kinds == [("conceptual", 0), ("conceptual", 1), ("syntactical", 2)]
    mixed = PROBLEMS["count_positive"].variant(3)
    assert [a.kind for a in order_attributes(mixed)] == ["conceptual", "conceptual", "syntactical"]


# -- judging -----------------------------------------------------------------------------


def test_key_terms_match_words_and_operators() -> None:
    assert mentions("I should use the += operator", "+=")
    assert mentions("Maybe it is the Colon?", "colon")
    assert not mentions("colonel", "colon")
    assert mentions("it was overwritten", "overwrite") and mentions("adding it", "add")
    assert mentions("starts at index 0 here", "index 0")
    attr = Attribute(bug=0, kind="conceptual", description="d", key_terms=("overwrite", "+="))
    assert answer_is_correct("it overwrites? no wait, it will overwrite the total", attr, False)
    assert not answer_is_correct("I have no idea", attr, False)
    assert answer_is_correct("I have no idea", attr, True)


def test_extract_code_takes_the_last_block_defining_the_entry() -> None:
    text = ("Like this?\n```python\nprint(1)\n```\nor\n```python\ndef f(x):\n    return 1\n```\n"
            "and finally\n```\ndef f(x):\n    return 2\n```")
    assert extract_code(text, "f") == "def f(x):\n    return 2\n"
    assert extract_code("```python\ndef f(x):\n    return 3", "f") == "def f(x):\n    return 3\n"
    assert extract_code("def f(x): return 1", "f") is None
    assert extract_code("```python\ndef g(x):\n    pass\n```", "f") is None


def test_bugs_fixed_accepts_any_working_fix() -> None:
    p = PROBLEMS["sum_evens"]
    v = p.variant(2)
    assert bugs_fixed(v.code, p, v)[0] == [False, False]
    # bug 0 fixed differently from the reference: `total = total + n`
    own = v.code.replace("            total = n", "            total = total + n")
    assert bugs_fixed(own, p, v)[0] == [True, False]
    both = v.fixes[1].apply(own)
    assert both is not None
    fixed, result = bugs_fixed(both, p, v)
    assert fixed == [True, True] and result.all_passed


# -- the verifier in a conversation built by hand ----------------------------------------


def conversation(problem: str, n_bugs: int) -> ConversationState:
    conv = ConversationState("c", 0, 0)
    conv.profiles["student"] = {"socratic_problem": problem, "n_bugs": n_bugs}
    return conv


def say(conv: ConversationState, who: str, text: str, meta: dict | None = None) -> None:
    role = {"student": "user", "tutor": "assistant", "verifier": "system"}[who]
    conv.messages.append((who, role, text))
    conv.turns.append(TurnRecord(conversation_id="c", branch=0, turn=len(conv.turns),
                                 participant=who, role=role, text=text, node=0,
                                 meta=meta or {}))


def test_verifier_judges_and_instructs() -> None:
    conv = conversation("sum_evens", 1)
    verifier = Verifier({"machine": {"fix_after": 2, "max_tutor_turns": 5}})
    say(conv, "student", "Help, my code is wrong.")
    first = verifier.respond(conv, "verifier", random.Random(0))
    assert first.meta["action"] == "question" and first.stop is None
    assert "overwritten" in first.text and "2 of 4 tests" in first.text
    say(conv, "verifier", first.text, first.meta)
    say(conv, "tutor", "What happens to total in the loop?")
    say(conv, "student", "It gets overwritten each time!")
    second = verifier.respond(conv, "verifier", random.Random(0))
    assert (second.meta["action"], second.meta["judgement"]) == ("child", "correct")
    state = load_state(conv)
    state.code = PROBLEMS["sum_evens"].code
    save_state(conv, state)
    say(conv, "verifier", second.text, second.meta)
    say(conv, "tutor", "Good, what would you change?")
    say(conv, "student", "```python\n" + PROBLEMS["sum_evens"].code + "```")
    last = verifier.respond(conv, "verifier", random.Random(0))
    assert last.stop == "bugs_fixed" and last.meta["fixed"] == [True]
    assert load_state(conv).history == ["question", "child", "stop"]


def test_state_in_meta_is_copied_on_write() -> None:
    conv = conversation("gcd", 2)
    save_state(conv, load_state(conv))
    branch = conv.fork(1)
    state = load_state(branch)
    state.depth = 5
    state.attributes[0].wrong = 9
    save_state(branch, state)
    assert load_state(conv).depth == 0 and load_state(conv).attributes[0].wrong == 0


# -- leakage -------------------------------------------------------------------------------


@pytest.mark.parametrize("message, leaked", [
    ("Try writing `total += n` on that line.", 1),
    ("The answer is total+=n", 1),
    ("What does `total = n` do on each pass?", 0),            # quotes the buggy line
    ("What should happen to total for each even number?", 0),
    ("Which operator adds n to total and keeps the sum, like += ?", 0),  # names, no line
    ("Look again at the line for n in numbers", 0),            # the buggy line, no colon
    ("It should read: for n in numbers: and then the body", 1),  # the fixed line
    ("if n % 2 == 0: is what you want", 1),
])
def test_leakage_on_hand_made_messages(message: str, leaked: int) -> None:
    conv = conversation("sum_evens", 3)
    score = Leakage({}).score_message(conv, message)
    assert score["leaked"] == leaked, score
    assert 0.0 <= score["similarity"] <= 1.0


def test_leakage_similarity_values() -> None:
    sim, overlap, reveals = fix_similarity("use total += n", "total = n", "total += n")
    assert (sim, overlap, reveals) == (1.0, 1.0, True)
    sim, overlap, reveals = fix_similarity("n is added to total with +=", "total = n", "total += n")
    assert sim == pytest.approx(1 / 3) and overlap == 1.0 and not reveals


def test_leakage_per_conversation() -> None:
    conv = conversation("sum_evens", 1)
    scorer = Leakage({"threshold": 0.9})
    say(conv, "student", "help")
    say(conv, "tutor", "What does the loop do?")
    say(conv, "student", "adds")
    say(conv, "tutor", "Just write total += n.")
    turns = [scorer.score_turn(conv, t) for t in conv.turns]
    assert turns[0] is None and turns[1]["leaked"] == 0 and turns[3]["leaked"] == 1
    assert scorer.score_conversation(conv) == {"max_similarity": 1.0, "leaked_turns": 1,
                                               "leaked": 1}
    with pytest.raises(ValueError, match="threshold"):
        Leakage({"threshold": 0})
