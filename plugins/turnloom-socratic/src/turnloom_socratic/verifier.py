"""The verifier: the participant between the student and the tutor.

Each turn it reads the student's latest message and current code, runs the
unit tests in the sandbox, judges the answer, advances the question tree and
tells the tutor what to do next (or ends the conversation). The tutor sees its
messages as instructions; the student never sees them.

Whether the student's answer is right is decided as TreeInstruct does it: a
verifier LLM reads the problem, the correct code, the bug fixes, the
instructor's question and the student's answer, and says whether the answer
addresses the question and whether it is free of mistakes; the answer is
correct when both hold (`socratic-verifier`, an agent). Key words are the
fallback where its output does not follow the format, and the whole rule of
`socratic-keyword-verifier` (an environment that needs no model).
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Mapping, Sequence

import msgspec

from turnloom.agents import Reply
from turnloom.judging import Unparseable
from turnloom.records import ConversationState
from turnloom.references import check_participant_names
from turnloom_socratic.checks import answer_is_correct, refresh
from turnloom_socratic.sandbox import Limits
from turnloom_socratic.state import (
    Attribute,
    Decision,
    MachineSettings,
    TutorState,
    load_state,
    problem_of,
    save_state,
    step,
)

_ACTIONS = {
    "question": ("Ask the student one short question that leads them towards this issue "
                 "without naming it: {issue}"),
    "child": ("The student's answer was right. Go one level deeper: ask one follow-up question "
              "that builds on their answer and brings them closer to this issue: {issue}"),
    "sibling": ("The student's answer missed the point. Ask one different, simpler question at "
                "the same level, aimed at their misunderstanding of this issue: {issue}"),
    "explain": ("The student is stuck. Explain the issue in one sentence, in your own words, "
                "then ask them to try again: {issue}"),
    "request_fix": ("The student understands the issue ({issue}). Ask them to change their code "
                    "and send the whole corrected function in a ```python block."),
}
_RULE = "Never write the corrected line or the corrected code yourself."


class VerifierSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    student: str = "student"  # participant names
    tutor: str = "tutor"
    machine: MachineSettings = MachineSettings()
    sandbox: Limits = Limits()
    show_tests: bool = True  # tell the tutor how many tests pass


def instruction(state: TutorState, decision: Decision, show_tests: bool) -> str:
    """The tutor's guidance for its next turn."""
    if decision.stop == "bugs_fixed":
        return f"All {state.tests_total} tests pass: every bug is fixed."
    if decision.stop is not None:
        return "The tutoring budget is spent."
    assert decision.target is not None
    attr = state.attributes[decision.target]
    issue = f"{attr.description} ({attr.kind})"
    parts = [_ACTIONS[decision.action].format(issue=issue), _RULE]
    if show_tests:
        parts.append(f"The student's code passes {state.tests_passed} of {state.tests_total} tests.")
    return " ".join(parts)


# How an answer was judged: by the verifier model, by key words (no model, or its
# output broke the format), or by the tests (the answer fixed the target's bug).
JudgedBy = str
AnswerJudge = Callable[[str, Attribute], tuple[bool, JudgedBy]]


def keyword_judge(text: str, attribute: Attribute) -> tuple[bool, JudgedBy]:
    return answer_is_correct(text, attribute, False), "keywords"


def advance(conversation: ConversationState, s: VerifierSettings, judge: AnswerJudge,
            extra_meta: Mapping[str, Any] | None = None) -> Reply:
    """One verifier turn: sandbox verdicts, the answer's judgement, the state
    machine's step, and the tutor's instruction as the reply."""
    state = load_state(conversation)
    problem, variant = problem_of(conversation)
    before = list(state.fixed)
    refresh(state, problem, variant, s.sandbox)
    state.tutor_turns = len(conversation.turns_of(s.tutor))
    said = conversation.turns_of(s.student)
    correct, judged_by = None, None
    if state.depth > 0 and state.target is not None:
        attr = state.attributes[state.target]
        if state.fixed[attr.bug] and not before[attr.bug]:
            correct, judged_by = True, "tests"
        else:
            correct, judged_by = judge(said[-1].text if said else "", attr)
    decision = step(state, correct, s.machine)
    save_state(conversation, state)
    meta = msgspec.to_builtins(decision)
    meta.update(fixed=list(state.fixed), tests_passed=state.tests_passed,
                tests_total=state.tests_total, test_status=state.test_status,
                judged_by=judged_by, **(extra_meta or {}))
    if decision.target is not None:
        meta["bug"] = state.attributes[decision.target].bug
    return Reply(instruction(state, decision, s.show_tests), stop=decision.stop, meta=meta)


class Verifier:
    """Environment `socratic-keyword-verifier`: the verifier without a model; an
    answer is correct when it fixed the target's bug or uses one of its key
    terms. Settings: `student`, `tutor` (participant names), `machine`
    (max_failures, max_depth, fix_after, max_tutor_turns), `sandbox` (limits),
    `show_tests`."""

    role = "system"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), VerifierSettings)
        except (msgspec.ValidationError, ValueError) as exc:
            raise ValueError(f"invalid socratic-keyword-verifier settings: {exc}") from None

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, student=self.s.student, tutor=self.s.tutor)

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        return advance(conversation, self.s, keyword_judge)


# -- the verifier model, as TreeInstruct's ------------------------------------------------

VERIFIER_PROMPT = """You help an Instructor who teaches a beginner Student to debug their \
own code by asking questions. Your job is to judge the Student's understanding.
Problem: {statement}
Correct code:
```python
{correct_code}```
Bug fixes (the changes that turn the Student's original code into the correct code):
{bug_fixes}
You see the Student's and the Instructor's messages as they come, both as user messages: the \
Student opens with their code, then the Instructor asks and the Student answers, in turn. \
Each time it is your turn, judge the Student's latest message as an answer to the \
Instructor's latest question. If the Student suggests a fix, it has no mistakes only when it \
is equivalent to one of the bug fixes. Reply with exactly these three lines:
answer_addresses_question: True or False (does the answer address the question?)
answer_has_no_mistakes: True or False (is the answer free of logical errors and mistakes?)
explanation: one sentence"""

_KEYS = ("answer_addresses_question", "answer_has_no_mistakes")
_VERDICT_LINE = re.compile(
    r"^[ \t*_`\"']*(answer_addresses_question|answer_has_no_mistakes)[ \t*_`\"']*:[ \t*_`\"']*"
    r"(true|false)[ \t*_`\"'.]*$", re.IGNORECASE | re.MULTILINE)


def parse_verdict(text: str) -> bool:
    """The verifier model's verdict: correct when the answer addresses the question
    and has no mistakes (both `True`), as TreeInstruct's verifier decides. Each
    key must appear once on its own line with True or False; anything else
    raises `Unparseable`."""
    found: dict[str, bool] = {}
    for key, value in _VERDICT_LINE.findall(text):
        key = key.lower()
        if key in found:
            raise Unparseable(f"{key} is given more than once")
        found[key] = value.lower() == "true"
    missing = [k for k in _KEYS if k not in found]
    if missing:
        raise Unparseable(f"no '{missing[0]}: True|False' line in {text[:80]!r}")
    return found[_KEYS[0]] and found[_KEYS[1]]


class JudgeVerifierSettings(VerifierSettings, frozen=True, kw_only=True,
                            forbid_unknown_fields=True):
    # {statement}, {correct_code} and {bug_fixes} are filled in
    system_prompt: str = VERIFIER_PROMPT


class JudgeVerifier:
    """Agent `socratic-verifier`: the verifier with TreeInstruct's verifier model.

    Each turn the model judges the student's latest answer (its own view keeps
    what it generated); `on_output` parses the verdict, falls back to key words
    when it does not parse, runs the sandbox and the state machine, and replies
    with the tutor's instruction, which is what the tutor's view receives.
    Settings: those of `socratic-keyword-verifier` and `system_prompt`."""

    role = "system"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), JudgeVerifierSettings)
        except (msgspec.ValidationError, ValueError) as exc:
            raise ValueError(f"invalid socratic-verifier settings: {exc}") from None

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, student=self.s.student, tutor=self.s.tutor)

    def system_prompt(self, conversation: ConversationState, me: str) -> str | None:
        problem, variant = problem_of(conversation)
        fixes = "\n".join(f"- {fix.describe()}" for fix in variant.fixes)
        # str.replace, not str.format: code holds braces.
        return (self.s.system_prompt.replace("{statement}", problem.statement)
                .replace("{correct_code}", problem.code.lstrip("\n"))
                .replace("{bug_fixes}", fixes))

    def role_in_view(self, speaker: str, me: str) -> str:
        return "assistant" if speaker == me else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        problems: list[str] = []

        def judge(answer: str, attribute: Attribute) -> tuple[bool, JudgedBy]:
            try:
                return parse_verdict(text), "verifier"
            except Unparseable as exc:
                problems.append(str(exc))
                return keyword_judge(answer, attribute)

        reply = advance(conversation, self.s, judge, {"verdict": text.strip()[:500]})
        if problems:
            reply.meta["verdict_unparseable"] = problems[0][:200]
        return reply
