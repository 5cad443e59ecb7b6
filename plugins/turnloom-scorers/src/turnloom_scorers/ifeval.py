"""IFEval evaluation: strict and loose readings, prompt- and instruction-level accuracy.

Strict: the response as given must follow the instruction. Loose: any of eight
variants of it may: {as is, first line removed, last line removed, both} x
{as is, every '*' removed}, which forgives a leading "Sure, here it is:" line,
a trailing sign-off and markdown emphasis. An empty (or blank) response follows
nothing, in either reading (under ``reading="multi-if"`` only an empty string
does, as Multi-IF's code tests ``if response``).

``reading`` picks the reference whose checks apply: ``"ifeval"`` (Google's code) or
``"multi-if"`` (Multi-IF's multilingual counts; see `turnloom_scorers.instructions`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import msgspec

from turnloom.records import ConversationState, TurnRecord
from turnloom.references import check_participant_names

from turnloom_scorers.instructions import (READINGS, Instruction, Reading,
                                           parse_instructions)


class Evaluation(msgspec.Struct, frozen=True):
    """Which instructions one response followed, per reading (in instruction order)."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]
    # Where a check departs from the reference code for these instructions.
    notes: tuple[str, ...] = ()

    def scores(self) -> dict[str, float]:
        return accuracy([self])


def loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    first_removed = "\n".join(lines[1:]).strip()
    last_removed = "\n".join(lines[:-1]).strip()
    both_removed = "\n".join(lines[1:-1]).strip()
    plain = [response, first_removed, last_removed, both_removed]
    return plain + [v.replace("*", "") for v in plain]


def follows(instruction: Instruction, response: str, loose: bool = False,
            reading: Reading = "ifeval") -> bool:
    if not loose:
        return _strict(instruction, response, reading)
    return any(v.strip() and instruction.check(v, reading) for v in loose_variants(response))


def _strict(instruction: Instruction, response: str, reading: Reading) -> bool:
    answered = bool(response.strip()) if reading == "ifeval" else bool(response)
    return answered and instruction.check(response, reading)


def reference_notes(instructions: Sequence[Instruction]) -> tuple[str, ...]:
    notes = (f"{i.type}: {note}" for i in instructions if (note := i.reference_note()))
    return tuple(dict.fromkeys(notes))


def evaluate(instructions: Sequence[Instruction], response: str,
             reading: Reading = "ifeval") -> Evaluation:
    if reading not in READINGS:
        raise ValueError(f"unknown reading {reading!r} (known: {', '.join(READINGS)})")
    strict = tuple(_strict(i, response, reading) for i in instructions)
    loose = tuple(follows(i, response, loose=True, reading=reading) for i in instructions)
    return Evaluation(strict, loose, reference_notes(instructions))


def accuracy(evaluations: Iterable[Evaluation]) -> dict[str, float]:
    """Prompt-level (all followed) and instruction-level (followed / given) accuracy,
    strict and loose, and their mean (Multi-IF's overall score). Responses given
    no instruction are left out."""
    prompts = followed_strict = followed_loose = all_strict = all_loose = given = 0
    for ev in evaluations:
        if not ev.strict:
            continue
        prompts += 1
        given += len(ev.strict)
        followed_strict += sum(ev.strict)
        followed_loose += sum(ev.loose)
        all_strict += all(ev.strict)
        all_loose += all(ev.loose)
    if not prompts:
        return {}
    out = {
        "prompt_strict": all_strict / prompts,
        "instruction_strict": followed_strict / given,
        "prompt_loose": all_loose / prompts,
        "instruction_loose": followed_loose / given,
    }
    out["overall"] = sum(out.values()) / 4
    return out


class IfevalScorer:
    """Fixed instructions (settings ``instructions``: a list of instruction dicts)
    checked on every turn of ``participant``; per conversation, the accuracies."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        data = dict(settings)
        unknown = sorted(set(data) - {"instructions", "participant", "reading"})
        if unknown:
            raise ValueError(f"invalid ifeval settings: unknown keys {unknown} "
                             f"(allowed: instructions, participant, reading)")
        if "instructions" not in data:
            raise ValueError("invalid ifeval settings: `instructions` is required")
        self.instructions = parse_instructions(data["instructions"], "ifeval.instructions")
        self.participant = data.get("participant", "assistant")
        self.reading: Reading = data.get("reading", "ifeval")
        if self.reading not in READINGS:
            raise ValueError(f"invalid ifeval settings: `reading` {self.reading!r} is not one "
                             f"of {', '.join(READINGS)}")

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.participant)

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> dict[str, Any] | None:
        if turn.participant != self.participant or not self.instructions:
            return None
        ev = evaluate(self.instructions, turn.text, self.reading)
        out = {**ev.scores(), "followed_strict": sum(ev.strict), "followed_loose": sum(ev.loose)}
        if ev.notes:
            out["reference_notes"] = list(ev.notes)
        return out

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any] | None:
        evs = [evaluate(self.instructions, t.text, self.reading)
               for t in conversation.turns_of(self.participant)]
        out: dict[str, Any] = dict(accuracy(evs))
        if out and (notes := reference_notes(self.instructions)):
            out["reference_notes"] = list(notes)
        return out or None
