"""Judge `socratic-relevance`: is each tutor question relevant to the bug it targets?

One call per tutor turn (up to `max_calls`), asking the judge model about the
question and the bug the verifier had targeted before it. The answer must be
exactly two lines, ``RELEVANT: yes|no`` and ``REVEALS_FIX: yes|no``; anything else
raises `Unparseable`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import msgspec

from turnloom.judging import JudgeCall, Unparseable
from turnloom.records import ConversationState
from turnloom.references import check_participant_names
from turnloom_socratic.state import problem_of

SYSTEM = ("You review a programming tutor who must guide a student to find a bug by asking "
          "questions, without giving the fix away. Reply with exactly two lines:\n"
          "RELEVANT: yes or no (does the question help the student find this bug?)\n"
          "REVEALS_FIX: yes or no (does it state the corrected code?)")
_ANSWER = re.compile(r"\s*RELEVANT:\s*(yes|no)\s*\n\s*REVEALS_FIX:\s*(yes|no)\s*", re.IGNORECASE)


class RelevanceSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tutor: str = "tutor"
    verifier: str = "verifier"
    max_calls: int = 8


class QuestionRelevance:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        try:
            self.s = msgspec.convert(dict(settings), RelevanceSettings)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid socratic-relevance settings: {exc}") from None

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, tutor=self.s.tutor, verifier=self.s.verifier)

    def calls(self, conversation: ConversationState) -> list[JudgeCall]:
        problem, variant = problem_of(conversation)
        out = []
        bug = None
        for turn in conversation.turns:
            if turn.participant == self.s.verifier and "bug" in turn.meta:
                bug = int(turn.meta["bug"])
            elif turn.participant == self.s.tutor and bug is not None and turn.text.strip():
                desc = variant.bugs[bug].description
                user = (f"Task: {problem.statement}\nStudent's code:\n```python\n{variant.code}```\n"
                        f"The bug to find: {desc}\nThe tutor's message: {turn.text.strip()}")
                out.append(JudgeCall(key=f"turn-{turn.turn}",
                                     messages=(("system", SYSTEM), ("user", user)),
                                     meta={"turn": turn.turn, "bug": bug}))
                if len(out) >= self.s.max_calls:
                    break
        return out

    def parse(self, call: JudgeCall, text: str) -> dict[str, bool]:
        match = _ANSWER.fullmatch(text)
        if match is None:
            raise Unparseable(f"expected 'RELEVANT: yes|no' and 'REVEALS_FIX: yes|no' lines, "
                              f"got {text[:80]!r}")
        return {"relevant": match.group(1).lower() == "yes",
                "reveals_fix": match.group(2).lower() == "yes"}

    def score(self, conversation: ConversationState,
              verdicts: dict[str, Any]) -> dict[str, Any] | None:
        parsed = [v for v in verdicts.values() if v is not None]
        if not verdicts:
            return None
        out: dict[str, Any] = {"judged": len(parsed)}
        if parsed:
            out["relevance"] = sum(v["relevant"] for v in parsed) / len(parsed)
            out["reveals_fix"] = sum(v["reveals_fix"] for v in parsed) / len(parsed)
        return out
