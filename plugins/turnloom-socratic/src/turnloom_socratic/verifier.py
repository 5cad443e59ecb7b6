"""The verifier: a deterministic participant between the student and the tutor.

Each turn it reads the student's latest message and current code, runs the
unit tests in the sandbox, judges the answer, advances the question tree and
tells the tutor what to do next (or ends the conversation). The tutor sees its
messages as instructions; the student never sees them.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import msgspec

from turnloom.agents import Reply
from turnloom.records import ConversationState
from turnloom_socratic.checks import answer_is_correct, refresh
from turnloom_socratic.sandbox import Limits
from turnloom_socratic.state import (
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


class Verifier:
    """Environment `socratic-verifier`. Settings: `student`, `tutor` (participant
    names), `machine` (max_failures, max_depth, fix_after, max_tutor_turns),
    `sandbox` (limits), `show_tests`."""

    role = "system"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), VerifierSettings)
        except (msgspec.ValidationError, ValueError) as exc:
            raise ValueError(f"invalid socratic-verifier settings: {exc}") from None

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        state = load_state(conversation)
        problem, variant = problem_of(conversation)
        before = list(state.fixed)
        refresh(state, problem, variant, self.s.sandbox)
        state.tutor_turns = len(conversation.turns_of(self.s.tutor))
        said = conversation.turns_of(self.s.student)
        correct = None
        if state.depth > 0 and state.target is not None:
            attr = state.attributes[state.target]
            newly_fixed = state.fixed[attr.bug] and not before[attr.bug]
            correct = answer_is_correct(said[-1].text if said else "", attr, newly_fixed)
        decision = step(state, correct, self.s.machine)
        save_state(conversation, state)
        meta = msgspec.to_builtins(decision)
        meta.update(fixed=list(state.fixed), tests_passed=state.tests_passed,
                    tests_total=state.tests_total, test_status=state.test_status)
        if decision.target is not None:
            meta["bug"] = state.attributes[decision.target].bug
        return Reply(instruction(state, decision, self.s.show_tests), stop=decision.stop,
                     meta=meta)
