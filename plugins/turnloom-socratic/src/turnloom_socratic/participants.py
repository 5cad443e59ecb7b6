"""The tutor, the students and the problem sampler."""

from __future__ import annotations

import random
import re
from typing import Any, Literal, Mapping, Sequence

import msgspec

from turnloom.agents import Reply
from turnloom.items import check_order, item_index
from turnloom.records import ConversationState
from turnloom.references import check_participant_names
from turnloom_socratic.checks import extract_code
from turnloom_socratic.dataset import MAX_BUGS, load_problems
from turnloom_socratic.state import ASSIGNMENT_KEY, load_state, problem_of, save_state

TUTOR_PROMPT = """You are a patient programming tutor who teaches by asking questions \
(the Socratic method). A beginner wrote this function for the task below, and it has bugs.
Task: {statement}
Student's code:
```python
{code}
```
Ask one short question per turn. Follow the instruction you receive before each turn. \
Never give the corrected code."""

STUDENT_PROMPT = """You are a beginner Python programmer. Your task: {statement}
Your code does not pass its tests:
```python
{code}
```
A tutor will ask you questions. Answer in one or two short sentences, as a beginner would. \
When you see what is wrong, send your whole corrected function in a ```python block."""

# Text a small model sometimes writes after its own message: another speaker's turn.
_RUNAWAY = re.compile(r"<\|im_(?:start|end)\|>|^\s*(?:student|tutor|user|assistant)\s*:",
                      re.IGNORECASE | re.MULTILINE)


def _convert(cls: type, settings: Mapping[str, Any], what: str) -> Any:
    try:
        return msgspec.convert(dict(settings), cls)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"invalid {what} settings: {exc}") from None


def _fill(template: str, conversation: ConversationState) -> str:
    # str.replace, not str.format: the code itself contains braces.
    problem, variant = problem_of(conversation)
    return template.replace("{statement}", problem.statement).replace(
        "{code}", variant.code.rstrip("\n"))


def _own_text(text: str) -> str:
    match = _RUNAWAY.search(text)
    return (text[: match.start()] if match else text).strip()


class TutorSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    system_prompt: str = TUTOR_PROMPT  # {statement} and {code} are filled in
    verifier: str = "verifier"  # whose messages are guidance
    guidance_role: Literal["system", "user"] = "system"


class Tutor:
    """Agent `socratic-tutor`: generates one question per turn; the verifier's
    instruction before each turn is in its view as a `guidance_role` message."""

    role = "assistant"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _convert(TutorSettings, settings, "socratic-tutor")
        # A scenario may have no verifier (then the default names no one): `verifier`
        # is checked only when the scenario sets it.
        self._verifier_set = "verifier" in settings

    def check_participants(self, names: Sequence[str]) -> None:
        if self._verifier_set:
            check_participant_names(names, verifier=self.s.verifier)

    def system_prompt(self, conversation: ConversationState, me: str) -> str | None:
        return _fill(self.s.system_prompt, conversation)

    def role_in_view(self, speaker: str, me: str) -> str:
        if speaker == me:
            return "assistant"
        return self.s.guidance_role if speaker == self.s.verifier else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        return Reply(_own_text(text))


def record_code(conversation: ConversationState, text: str) -> bool:
    """Take a code edit out of a student's message into the state; True if it changed."""
    state = load_state(conversation)
    problem, _ = problem_of(conversation)
    code = extract_code(text, problem.entry)
    changed = code is not None and code != state.code
    if changed:
        state.code = code  # type: ignore[assignment]
        state.code_turn = len(conversation.turns)
    save_state(conversation, state)
    return changed


class StudentSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    system_prompt: str = STUDENT_PROMPT
    verifier: str = "verifier"  # whose messages this view never sees


class Student:
    """Agent `socratic-student`: a beginner holding the buggy code. To edit it, it
    sends the whole updated function in a ```python block; that becomes its
    current code. It never sees the verifier's messages."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _convert(StudentSettings, settings, "socratic-student")
        # A scenario may have no verifier (then the default names no one): `verifier`
        # is checked only when the scenario sets it.
        self._verifier_set = "verifier" in settings

    def check_participants(self, names: Sequence[str]) -> None:
        if self._verifier_set:
            check_participant_names(names, verifier=self.s.verifier)

    def system_prompt(self, conversation: ConversationState, me: str) -> str | None:
        return _fill(self.s.system_prompt, conversation)

    def role_in_view(self, speaker: str, me: str) -> str | None:
        if speaker == me:
            return "assistant"
        return None if speaker == self.s.verifier else "user"

    def on_output(self, conversation: ConversationState, me: str, text: str,
                  finish_reason: str) -> Reply:
        text = _own_text(text)
        return Reply(text, meta={"code_changed": record_code(conversation, text)})


class ScriptStep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One scripted student turn: literal text (`say`), an answer made from the
    target's key terms ("correct") or a non-answer ("wrong"), and/or fixes
    ("target", "all" or bug indices) sent as the whole updated function."""

    say: str | None = None
    answer: Literal["correct", "wrong"] | None = None
    fix: Literal["target", "all"] | list[int] | None = None


class ScriptedStudentSettings(msgspec.Struct, frozen=True, kw_only=True,
                              forbid_unknown_fields=True):
    opening: str = "Hi! My function does not pass its tests. Can you help me?\n```python\n{code}```"
    script: tuple[ScriptStep, ...] = ()
    fallback: str = "I am not sure."  # once the script is used up


class ScriptedStudent:
    """Environment `socratic-scripted-student`: opens with its buggy code, then
    follows its script, one step per turn, whatever the problem."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.s = _convert(ScriptedStudentSettings, settings, "socratic-scripted-student")

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        state = load_state(conversation)
        said = len(conversation.turns_of(me))
        if said == 0:
            save_state(conversation, state)
            return Reply(self.s.opening.replace("{code}", state.code), meta={"step": "opening"})
        k = said - 1
        if k >= len(self.s.script):
            return Reply(self.s.fallback, meta={"step": "fallback"})
        step = self.s.script[k]
        parts = [step.say] if step.say else []
        target = state.attributes[state.target] if state.target is not None else None
        if step.answer == "correct" and target is not None:
            parts.append(f"Is it about the {target.key_terms[0]}?")
        elif step.answer == "wrong":
            parts.append("I don't know, maybe the function name?")
        if step.fix is not None:
            _, variant = problem_of(conversation)
            if step.fix == "all":
                bugs = list(range(variant.n_bugs))
            elif step.fix == "target":
                bugs = [target.bug] if target is not None else []
            else:
                bugs = [b for b in step.fix if 0 <= b < variant.n_bugs]
            code = state.code
            for b in bugs:
                code = variant.fixes[b].apply(code) or code
            parts.append(f"I changed my code:\n```python\n{code}```")
        text = "\n".join(parts) or self.s.fallback
        changed = record_code(conversation, text)
        return Reply(text, meta={"step": k, "code_changed": changed})


class ProblemSamplerSettings(msgspec.Struct, frozen=True, kw_only=True,
                             forbid_unknown_fields=True):
    problems: tuple[str, ...] = ()  # ids to draw from (empty: all)
    bugs: tuple[int, ...] = (1, 2, 3)  # bug counts to draw from
    dataset: str | None = None  # a problem file in the packaged format (default: packaged)
    order: str = "by-index"  # "by-index": each (bug count, problem) once; "random": seeded draws


class ProblemSampler:
    """Sampler `socratic-problems`: the problem and bug count of each conversation.

    The items are every (bug count, problem) pair, bug count first, as the paper
    runs its 1-, 2- and 3-bug settings over the whole problem set. `order =
    "by-index"` (the default) gives conversation i item i mod the number of
    items, so a run of len(bugs) x len(problems) conversations plays each once;
    `"random"` draws one per conversation with replacement, from its seed."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = _convert(ProblemSamplerSettings, settings, "socratic-problems")
        problems = load_problems(s.dataset)
        unknown = [p for p in s.problems if p not in problems]
        if unknown:
            raise ValueError(f"invalid socratic-problems settings: unknown problems {unknown}")
        bad = [b for b in s.bugs if not 1 <= b <= MAX_BUGS]
        if bad or not s.bugs:
            raise ValueError(f"invalid socratic-problems settings: bugs must be in 1..{MAX_BUGS}")
        self.order = check_order(s.order, "invalid socratic-problems settings: `order`")
        self.ids = list(s.problems) or sorted(problems)
        self.bugs = s.bugs
        self.dataset = s.dataset
        self.problems = problems
        self.items = [(n, pid) for n in self.bugs for pid in self.ids]

    def sample(self, rng: random.Random, index: int) -> dict[str, Any]:
        # The seed is drawn either way, so both orders leave the rng in the same state.
        seed = rng.getrandbits(64)
        n_bugs, pid = self.items[item_index(len(self.items), index, seed, self.order)]
        problem = self.problems[pid]
        profile: dict[str, Any] = {ASSIGNMENT_KEY: problem.id, "n_bugs": n_bugs,
                                   "statement": problem.statement}
        if self.dataset is not None:
            profile["dataset"] = self.dataset
        return profile
