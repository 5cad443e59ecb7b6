"""The TreeInstruct state machine and where its state lives.

The state of one conversation is a `TutorState` kept as JSON in
``conversation.meta["socratic"]``: the knowledge-state attributes (one per bug,
conceptual ones first), which attribute is the target, the position in the
question tree (depth, failures on the current level), the student's current
code and what the sandbox said about it. It is written back as a new dict on
every change, never mutated in place, so branches of one conversation (which
share the meta dict's values) never see each other's state, and a resumed run
reads exactly what the log recorded.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from turnloom.records import ConversationState
from turnloom_socratic.dataset import BugKind, Problem, Variant, load_problems

META_KEY = "socratic"
ASSIGNMENT_KEY = "socratic_problem"  # marks the profile that holds the problem

Action = Literal["question", "child", "sibling", "explain", "request_fix", "stop"]
Judgement = Literal["none", "correct", "wrong"]


class Attribute(msgspec.Struct, kw_only=True):
    """Something the student must come to understand: one bug's concept or syntax."""

    bug: int
    kind: BugKind
    description: str
    key_terms: tuple[str, ...]
    resolved: bool = False
    questions: int = 0  # instructions issued while this was the target
    correct: int = 0
    wrong: int = 0


class TutorState(msgspec.Struct, kw_only=True):
    problem_id: str
    n_bugs: int
    dataset: str | None = None  # problem file (None: the packaged one)
    code: str  # the student's current code
    code_turn: int = -1  # turn at which the student last changed it (-1: never)
    attributes: list[Attribute]
    target: int | None = 0  # index into attributes; None once all are resolved
    depth: int = 0  # level of the question tree (0: nothing asked on this target yet)
    level_failures: int = 0  # wrong answers on the current level
    fixed: list[bool] = []  # per bug, judged by the sandbox
    checked_code: str | None = None  # the code `fixed` and the test fields describe
    tests_passed: int = 0
    tests_total: int = 0
    test_status: str = ""
    tutor_turns: int = 0
    history: list[str] = []  # one action per verifier turn
    stopped: str | None = None


class MachineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_failures: int = 3  # wrong answers on one level before an explanation
    max_depth: int = 7  # a question at this depth is replaced by an explanation
    fix_after: int = 2  # correct answers on a target before the student is asked to fix it
    # Turn budget. None (the default): none, as in TreeInstruct's protocol, where the
    # dialogue goes on until every attribute is resolved; the run's max_turns still
    # bounds it.
    max_tutor_turns: int | None = None


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    action: Action
    judgement: Judgement
    target: int | None  # attribute index the instruction is about
    depth: int
    level_failures: int
    stop: str | None = None


def order_attributes(variant: Variant) -> list[Attribute]:
    """One attribute per bug, conceptual ones before syntactical ones (stable)."""
    attrs = [Attribute(bug=i, kind=b.kind, description=b.description, key_terms=b.key_terms)
             for i, b in enumerate(variant.bugs)]
    return sorted(attrs, key=lambda a: (a.kind != "conceptual", a.bug))


def step(state: TutorState, correct: bool | None, settings: MachineSettings) -> Decision:
    """Advance the question tree after the student's latest message.

    `state.fixed` must already describe the student's current code and
    `state.tutor_turns` the tutor's turns so far; `correct` is the verdict on
    the student's answer (None when no question was pending). Mutates `state`.
    """
    previous = state.target
    for attr in state.attributes:  # every attribute, from the target onward included
        attr.resolved = state.fixed[attr.bug]
    if all(state.fixed):
        return _stop(state, "bugs_fixed", correct)
    if settings.max_tutor_turns is not None and state.tutor_turns >= settings.max_tutor_turns:
        return _stop(state, "turn_budget", correct)
    judgement: Judgement = "none" if correct is None else ("correct" if correct else "wrong")
    target = state.target
    if target is None or state.attributes[target].resolved or state.depth == 0:
        state.target = next(i for i, a in enumerate(state.attributes) if not a.resolved)
        state.depth, state.level_failures = 1, 0
        if previous is not None and state.target != previous:
            judgement = "correct" if correct is not None else "none"
        return _issue(state, "question", judgement)
    attr = state.attributes[target]
    if correct:
        attr.correct += 1
        state.level_failures = 0
        state.depth = min(state.depth + 1, settings.max_depth)
        if state.depth >= settings.max_depth:
            return _issue(state, "explain", judgement)
        return _issue(state, "request_fix" if attr.correct >= settings.fix_after else "child",
                      judgement)
    attr.wrong += 1
    state.level_failures += 1
    if state.level_failures >= settings.max_failures or state.depth >= settings.max_depth:
        state.level_failures = 0
        return _issue(state, "explain", judgement)
    return _issue(state, "sibling", judgement)


def _issue(state: TutorState, action: Action, judgement: Judgement) -> Decision:
    assert state.target is not None
    state.attributes[state.target].questions += 1
    state.history = [*state.history, action]
    return Decision(action=action, judgement=judgement, target=state.target,
                    depth=state.depth, level_failures=state.level_failures)


def _stop(state: TutorState, reason: str, correct: bool | None) -> Decision:
    state.stopped = reason
    state.target = None if reason == "bugs_fixed" else state.target
    state.history = [*state.history, "stop"]
    judgement: Judgement = "none" if correct is None else ("correct" if correct else "wrong")
    return Decision(action="stop", judgement=judgement, target=state.target, depth=state.depth,
                    level_failures=state.level_failures, stop=reason)


# -- the problem a conversation is about, and its state in meta --------------------------


def assignment(conversation: ConversationState) -> dict[str, Any]:
    """The profile that holds this conversation's problem (drawn by `socratic-problems`)."""
    found = [p for p in conversation.profiles.values() if ASSIGNMENT_KEY in p]
    if len(found) != 1:
        raise ValueError(f"expected one participant with a `socratic-problems` profile, found "
                         f"{len(found)}; give the student `sampler = \"socratic-problems\"`")
    return found[0]


def problem_of(conversation: ConversationState) -> tuple[Problem, Variant]:
    a = assignment(conversation)
    problems = load_problems(a.get("dataset"))
    try:
        problem = problems[a[ASSIGNMENT_KEY]]
    except KeyError:
        raise ValueError(f"unknown problem {a[ASSIGNMENT_KEY]!r}") from None
    return problem, problem.variant(int(a["n_bugs"]))


def load_state(conversation: ConversationState) -> TutorState:
    """This conversation's state (a private copy), created from its problem on first use."""
    raw = conversation.meta.get(META_KEY)
    if raw is not None:
        return msgspec.convert(raw, TutorState)
    a = assignment(conversation)
    _, variant = problem_of(conversation)
    return TutorState(problem_id=variant.problem_id, n_bugs=variant.n_bugs,
                      dataset=a.get("dataset"), code=variant.code,
                      attributes=order_attributes(variant), fixed=[False] * variant.n_bugs)


def save_state(conversation: ConversationState, state: TutorState) -> None:
    conversation.meta[META_KEY] = msgspec.to_builtins(state)
