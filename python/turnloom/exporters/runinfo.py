"""What exporters need to know about a run beyond its records: where the
conversation trees fork and which chat format each participant speaks in.
Both come from the scenario saved in the run's manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnloom import rundir
from turnloom.seeds import drawn_fork_turn
from turnloom.tokenizer import ChatFormat


@dataclass(frozen=True)
class Fork:
    """A ``[[branches]]`` entry: at message `turn` the speaker answers `n` times.
    A branch id is a mixed-radix number: its choice here is ``(branch // mult) % n``."""

    turn: int
    n: int
    mult: int

    def choice(self, branch: int) -> int:
        return (branch // self.mult) % self.n


class RunInfo:
    """The scenario of a run directory, as far as exporters use it."""

    def __init__(self, scenario: dict[str, Any], source: str = "scenario") -> None:
        self.scenario = scenario
        self.source = source
        self.participants: dict[str, dict[str, Any]] = {
            p["name"]: p for p in scenario.get("participants", [])}
        self.backends: dict[str, dict[str, Any]] = dict(scenario.get("backends", {}))
        forks = []
        mult = 1
        branches = sorted(scenario.get("branches", []), key=lambda b: b["at_turn"])
        for b in branches:
            n = int(b.get("n", 2))
            forks.append(Fork(int(b["at_turn"]), n, mult))
            mult *= n
        self.forks: tuple[Fork, ...] = tuple(forks)
        # A fork turn drawn per conversation (`to_turn`): the only [[branches]] entry.
        self._drawn = None
        if len(branches) == 1 and branches[0].get("to_turn") is not None:
            turns = scenario.get("turns", {})
            speakers = len(turns.get("order") or ()) or len(self.participants)
            self._drawn = (int(branches[0]["at_turn"]), int(branches[0]["to_turn"]), speakers)

    def forks_for(self, conversation_seed: int) -> tuple[Fork, ...]:
        """The forks of one conversation (its record's `seed`)."""
        if self._drawn is None:
            return self.forks
        first, last, step = self._drawn
        turn = drawn_fork_turn(conversation_seed, first, last, step)
        return (Fork(turn, self.forks[0].n, 1),)

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> RunInfo:
        manifest = rundir.read_manifest(run_dir)
        scenario = manifest.get("scenario")
        if not isinstance(scenario, dict):
            raise rundir.RunDirError(f"{Path(run_dir) / rundir.MANIFEST}: no scenario")
        return cls(scenario, str(Path(run_dir) / rundir.MANIFEST))

    def fork_at(self, turn: int) -> Fork:
        for f in self.forks:
            if f.turn == turn:
                return f
        turns = ", ".join(str(f.turn) for f in self.forks) or "none"
        raise ValueError(f"the scenario has no [[branches]] at turn {turn} "
                         f"(branch turns: {turns})")

    def backend_of(self, participant: str) -> str | None:
        """The backend a participant speaks through, as the scenario names it."""
        p = self.participants.get(participant, {})
        if p.get("backend"):
            return str(p["backend"])
        if len(self.backends) == 1:
            return next(iter(self.backends))
        return None

    def tokenizer_spec(self, participant: str) -> str:
        """The chat-format spec the participant's backend used: the backend's
        `tokenizer`, else a transformers backend's `model`, else "bytes"."""
        name = self.backend_of(participant)
        spec = self.backends.get(name or "", {})
        if spec.get("tokenizer"):
            return str(spec["tokenizer"])
        if spec.get("type") == "transformers":
            return str(spec.get("settings", {}).get("model", "smollm2-135m-instruct"))
        return "bytes"


def load_chat_format(spec: str) -> ChatFormat:
    from turnloom.runtime import load_chat_format as load

    return load(spec)
