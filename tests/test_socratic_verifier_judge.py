"""TreeInstruct's verifier: a model judges the student's answer; key words only as a
fallback; no turn budget unless one is set."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import turnloom
from turnloom.judging import Unparseable
from turnloom.records import ConversationState, TurnRecord
from turnloom_socratic.checks import answer_is_correct
from turnloom_socratic.state import MachineSettings, load_state, step
from turnloom_socratic.verifier import JudgeVerifier, Verifier, parse_verdict

# The issue's example: on sum_evens bug 0 ("the total is overwritten ... instead of being
# increased"), this answer contradicts the fix but contains the key term "add".
WRONG_WITH_KEY_WORD = "I don't think the code should add anything."
BOTH_TRUE = ("answer_addresses_question: True\nanswer_has_no_mistakes: True\n"
             "explanation: the student sees that the total must grow.")
ADDRESSED_BUT_WRONG = ("answer_addresses_question: True\nanswer_has_no_mistakes: False\n"
                       "explanation: the total must be increased, so something must be added.")


def conversation() -> ConversationState:
    conv = ConversationState("c", 0, 0)
    conv.profiles["student"] = {"socratic_problem": "sum_evens", "n_bugs": 1}
    return conv


def say(conv: ConversationState, who: str, text: str, meta: dict | None = None) -> None:
    role = {"student": "user", "tutor": "assistant", "verifier": "system"}[who]
    conv.messages.append((who, role, text))
    conv.turns.append(TurnRecord(conversation_id="c", branch=0, turn=len(conv.turns),
                                 participant=who, role=role, text=text, node=0,
                                 meta=meta or {}))


def answered(verifier: JudgeVerifier | Verifier, verdict: str, answer: str) -> dict:
    """The verifier's decision on `answer` to the first question."""
    conv = conversation()
    say(conv, "student", "Help, my code is wrong.")
    first = (verifier.on_output(conv, "verifier", "n/a", "stop")
             if isinstance(verifier, JudgeVerifier) else verifier.respond(conv, "verifier", None))  # type: ignore[arg-type]
    assert first.meta["action"] == "question" and first.meta["judged_by"] is None
    say(conv, "verifier", first.text, first.meta)
    say(conv, "tutor", "What should happen to total for each even number?")
    say(conv, "student", answer)
    reply = (verifier.on_output(conv, "verifier", verdict, "stop")
             if isinstance(verifier, JudgeVerifier) else verifier.respond(conv, "verifier", None))  # type: ignore[arg-type]
    return {**reply.meta, "text": reply.text}


def test_key_words_alone_accept_a_wrong_answer() -> None:
    attr = load_state_attr()
    assert answer_is_correct(WRONG_WITH_KEY_WORD, attr, False)  # the weakness the model fixes
    keyword = answered(Verifier({}), "", WRONG_WITH_KEY_WORD)
    assert (keyword["judgement"], keyword["judged_by"]) == ("correct", "keywords")


def load_state_attr():  # type: ignore[no-untyped-def]
    conv = conversation()
    return load_state(conv).attributes[0]


def test_the_verifier_model_decides_the_answer() -> None:
    verifier = JudgeVerifier({})
    wrong = answered(verifier, ADDRESSED_BUT_WRONG, WRONG_WITH_KEY_WORD)
    assert (wrong["action"], wrong["judgement"], wrong["judged_by"]) == (
        "sibling", "wrong", "verifier")
    assert wrong["verdict"] == ADDRESSED_BUT_WRONG
    # The tutor gets the instruction, not the verdict.
    assert "answer_has_no_mistakes" not in wrong["text"] and "simpler question" in wrong["text"]
    # TreeInstruct counts an answer as correct only when both parts hold.
    off_topic = ("answer_addresses_question: False\nanswer_has_no_mistakes: True\n"
                 "explanation: it does not answer.")
    assert answered(verifier, off_topic, "It should accumulate.")["judgement"] == "wrong"
    right = answered(verifier, BOTH_TRUE, "Each even number should be added to the total.")
    assert (right["judgement"], right["judged_by"], right["action"]) == (
        "correct", "verifier", "child")


def test_unparseable_verdicts_fall_back_to_key_words() -> None:
    verifier = JudgeVerifier({})
    fallback = answered(verifier, "The student is right.", "It should accumulate the numbers.")
    assert (fallback["judgement"], fallback["judged_by"]) == ("correct", "keywords")
    assert "answer_addresses_question" in fallback["verdict_unparseable"]


def test_verdict_parsing_is_strict() -> None:
    assert parse_verdict(BOTH_TRUE) is True
    assert parse_verdict(ADDRESSED_BUT_WRONG) is False
    assert parse_verdict("**answer_addresses_question:** true\nANSWER_HAS_NO_MISTAKES: True.") is True
    for bad in ("answer_addresses_question: True",  # one key missing
                "answer_addresses_question: maybe\nanswer_has_no_mistakes: True",
                "answer_addresses_question: True, I think\nanswer_has_no_mistakes: True",
                BOTH_TRUE + "\nanswer_has_no_mistakes: False"):  # given twice
        with pytest.raises(Unparseable):
            parse_verdict(bad)


def test_system_prompt_holds_the_problem_the_correct_code_and_the_fixes() -> None:
    prompt = JudgeVerifier({}).system_prompt(conversation(), "verifier")
    assert prompt is not None
    assert "sum_evens(numbers)" in prompt and "total += n" in prompt
    assert "replace `total = n` with `total += n` on line 5" in prompt
    assert "answer_addresses_question" in prompt and "{" not in prompt.replace("{}", "")
    verifier = JudgeVerifier({})
    assert verifier.role_in_view("verifier", "verifier") == "assistant"
    assert verifier.role_in_view("tutor", "verifier") == "user"


def test_no_turn_budget_by_default() -> None:
    # TreeInstruct's protocol runs until every attribute is resolved.
    assert MachineSettings().max_tutor_turns is None
    conv = conversation()
    state = load_state(conv)
    step(state, None, MachineSettings())
    state.tutor_turns = 500
    assert step(state, False, MachineSettings()).action != "stop"
    state.tutor_turns = 8
    assert step(state, False, MachineSettings(max_tutor_turns=8)).stop == "turn_budget"


@pytest.fixture
def socratic_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    importlib.metadata.distribution("turnloom-socratic")
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "socratic")


def test_a_run_with_the_verifier_model(tmp_path: Path, socratic_plugin: None) -> None:
    # The verifier speaks through its own backend, whose only line is a verdict of
    # "wrong"; the scripted student's key-word answers would pass the key words.
    scenario = turnloom.Scenario.from_dict({
        "run": {"name": "socratic-judged", "conversations": 2, "max_turns": 13, "seed": 5},
        "backends": {
            "tutor": {"type": "scripted", "lines": ["What does your loop do?"]},
            "judge": {"type": "scripted", "lines": [ADDRESSED_BUT_WRONG]},
        },
        "participants": [
            {"name": "student", "agent": "socratic-scripted-student",
             "sampler": "socratic-problems", "sampler_settings": {"bugs": [1]},
             "settings": {"script": [{"answer": "correct"}] * 4}},
            {"name": "verifier", "agent": "socratic-verifier", "backend": "judge",
             "sampling": {"max_new_tokens": 400}},
            {"name": "tutor", "agent": "socratic-tutor", "backend": "tutor"},
        ],
    })
    records = turnloom.run(scenario, out=tmp_path / "run", progress=False).conversations()
    for r in records:
        assert r["errors"] == []
        verifier_turns = [t["meta"] for t in r["turns"] if t["participant"] == "verifier"]
        assert [m["action"] for m in verifier_turns][:4] == [
            "question", "sibling", "sibling", "explain"]
        assert all(m["judged_by"] == "verifier" for m in verifier_turns[1:])
        texts = [m["content"] for m in r["messages"] if m.get("name") == "verifier"]
        assert not any("answer_has_no_mistakes" in t for t in texts)
