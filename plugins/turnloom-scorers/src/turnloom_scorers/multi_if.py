"""Multi-IF style multi-turn instruction following.

The ``multi-if-user`` environment plays the user: each of its turns sends the
next message of a three-turn task with one (or more) new verifiable
instructions appended. Instructions accumulate: the answer to turn k must
follow every instruction given in turns 1..k. The instructions are kept in
``conversation.meta["multi_if"]`` (``task`` and ``added``: one list of
instruction dicts per user turn), so a resumed run continues with the same
state, and each user turn's ``meta["multi_if"]`` records what it added.

The ``multi-if`` scorer checks each answer against the instructions in force
(strict and loose, prompt- and instruction-level) and reports per-turn curves
per conversation; `accuracy_curve` averages them over a run's records. Its checks
take Multi-IF's reading by default (``reading = "multi-if"``): word and sentence
counts follow the language of the answer, as in Multi-IF's official code.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Mapping, Sequence

from turnloom.agents import Reply
from turnloom.records import ConversationState, TurnRecord
from turnloom.references import check_participant_names

from turnloom_scorers import ifeval
from turnloom_scorers.instructions import (TYPES, Instruction, InstructionError, Reading,
                                           conflicts, parse_instruction)
from turnloom_scorers.settings import Settings, decode, load_data

META_KEY = "multi_if"
METRICS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose", "overall")


class Task(Settings, frozen=True):
    id: str
    turns: tuple[str, ...]


class UserSettings(Settings, frozen=True):
    tasks: tuple[Task, ...] | None = None  # default: the shipped tasks
    per_turn: int = 1  # new instructions per user turn
    turns: int = 3  # user turns; the conversation ends after the answer to the last
    types: tuple[str, ...] | None = None  # allowed instruction types (default: all 25)
    exclude: tuple[str, ...] = ()


def instructions_in_force(conversation: ConversationState, upto: int) -> list[Instruction]:
    """The instructions given in the first `upto` user turns."""
    state = conversation.meta.get(META_KEY) or {}
    added = state.get("added", [])[:upto]
    return [parse_instruction(d, f"conversation.meta.{META_KEY}.added[{i}]")
            for i, turn in enumerate(added) for d in turn]


class MultiIfUser:
    """A simulated user that adds verifiable instructions turn by turn (seeded)."""

    role = "user"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = decode(UserSettings, settings, "multi-if-user")
        tasks = s.tasks if s.tasks is not None else tuple(
            Task(id=t["id"], turns=tuple(t["turns"])) for t in load_data(
                "multi_if_tasks.json")["tasks"])
        if not tasks or any(not t.turns for t in tasks):
            raise ValueError("invalid multi-if-user settings: `tasks` must be non-empty lists "
                             "of turns")
        if s.per_turn < 0 or s.turns < 1:
            raise ValueError("invalid multi-if-user settings: `per_turn` must be >= 0 and "
                             "`turns` >= 1")
        for name in (s.types or ()) + s.exclude:
            if name not in TYPES:
                raise InstructionError(f"invalid multi-if-user settings: unknown instruction "
                                       f"type {name!r}")
        allowed = s.types or tuple(TYPES)
        self.types = tuple(t for t in allowed if t not in s.exclude)
        if not self.types and s.per_turn:
            raise ValueError("invalid multi-if-user settings: no instruction type is allowed")
        self.tasks = tasks
        self.per_turn = s.per_turn
        self.turns = s.turns

    def respond(self, conversation: ConversationState, me: str, rng: random.Random) -> Reply:
        state = conversation.meta.get(META_KEY)
        if state is None:
            # The task depends only on the conversation's seed: every branch and a
            # resumed run agree on it.
            task = self.tasks[random.Random(conversation.seed).randrange(len(self.tasks))]
            state = {"task": task.id, "added": []}
        k = len(state["added"])
        if k >= self.turns:
            return Reply("", stop="multi_if_done")
        task = next(t for t in self.tasks if t.id == state["task"])
        message = task.turns[min(k, len(task.turns) - 1)]
        in_force = [d["type"] for turn in state["added"] for d in turn]
        new: list[Instruction] = []
        for _ in range(self.per_turn):
            taken = in_force + [i.type for i in new]
            options = [t for t in self.types if not any(conflicts(t, u) for u in taken)]
            if not options:
                break
            new.append(TYPES[rng.choice(options)].sample(rng, message))
        text = message if not new else message + "\n\n" + "\n".join(
            i.description() for i in new)
        added = [i.to_dict() for i in new]
        # A new dict and list: branches forked from this conversation share the old ones.
        conversation.meta[META_KEY] = {"task": state["task"], "added": state["added"] + [added]}
        return Reply(text, meta={META_KEY: {"turn": k + 1, "new": added}})


class ScorerSettings(Settings, frozen=True):
    participant: str = "assistant"
    reading: Reading = "multi-if"  # or "ifeval": Google's English-only counts


class MultiIfScorer:
    """Per answer: accuracy against the instructions in force; per conversation:
    the same per user turn (``turn1.prompt_strict``, ...) and their means."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        s = decode(ScorerSettings, settings, "multi-if")
        self.participant = s.participant
        self.reading: Reading = s.reading

    def check_participants(self, names: Sequence[str]) -> None:
        check_participant_names(names, participant=self.participant)

    def _evaluate(self, conversation: ConversationState,
                  turn: TurnRecord) -> tuple[int, ifeval.Evaluation] | None:
        upto = sum(1 for t in conversation.turns[:turn.turn] if META_KEY in t.meta)
        if upto == 0:
            return None
        instructions = instructions_in_force(conversation, upto)
        if not instructions:
            return None
        return upto, ifeval.evaluate(instructions, turn.text, self.reading)

    def score_turn(self, conversation: ConversationState, turn: TurnRecord) -> dict[str, Any] | None:
        if turn.participant != self.participant:
            return None
        found = self._evaluate(conversation, turn)
        if found is None:
            return None
        upto, ev = found
        out: dict[str, Any] = {"turn": upto, "instructions": len(ev.strict), **ev.scores()}
        if ev.notes:
            out["reference_notes"] = list(ev.notes)
        return out

    def score_conversation(self, conversation: ConversationState) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        evaluations = []
        notes: dict[str, None] = {}
        for turn in conversation.turns_of(self.participant):
            found = self._evaluate(conversation, turn)
            if found is None:
                continue
            upto, ev = found
            evaluations.append(ev)
            notes.update(dict.fromkeys(ev.notes))
            for metric, value in ev.scores().items():
                out[f"turn{upto}.{metric}"] = value
        if not evaluations:
            return None
        out.update(ifeval.accuracy(evaluations))
        out["turns_scored"] = len(evaluations)
        if notes:
            out["reference_notes"] = list(notes)
        return out


def accuracy_curve(records: Iterable[Mapping[str, Any]], scorer: str = "multi-if"
                   ) -> dict[int, dict[str, float]]:
    """Mean accuracy per user turn over exported conversation records (the
    ``scores[scorer]`` of each scored answer): {turn: {metric: mean, "n": count}}."""
    sums: dict[int, dict[str, float]] = {}
    for record in records:
        for info in record.get("turns", []):
            score = (info.get("scores") or {}).get(scorer)
            if not score:
                continue
            bucket = sums.setdefault(int(score["turn"]), {m: 0.0 for m in METRICS} | {"n": 0})
            bucket["n"] += 1
            for m in METRICS:
                bucket[m] += score[m]
    return {turn: {m: (v / b["n"] if m != "n" else v) for m, v in b.items()}
            for turn, b in sorted(sums.items())}
