"""What the sharded-run tests share (Ray actors and local processes): a scenario
with branches, stop phrases and scorers whose outputs a sharded run must
reproduce byte for byte, and checks of a run's totals and logged turns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turnloom.config import Scenario
from turnloom.wal import TurnEvent, read_events

CONVERSATIONS = 200


def scenario(**run: Any) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "ray", "conversations": CONVERSATIONS, "max_turns": 6, "seed": 5,
                "batch_size": 4, "max_inflight": 1, "wal_sync_s": 0.0, **run},
        # Latency per backend call keeps each shard running long enough to be interrupted.
        "backends": {"sim": {"type": "scripted", "latency_s": 0.006,
                             "lines": ["Sure.", "Tell me more.", "Thanks [END]", "Hmm."]}},
        "participants": [
            {"name": "user", "agent": "user-simulator", "system_prompt": "You are {profile.name}.",
             "sampler": "inline", "sampler_settings": {"profiles": [{"name": "Ada"}, {"name": "Bo"}]},
             "settings": {"stop_phrases": ["[END]"]}},
            {"name": "assistant", "agent": "assistant"},
        ],
        "branches": [{"at_turn": 2, "n": 2}],
        "scorers": [{"name": "length"}, {"name": "stop-reason"}],
    })


def assert_same_counts(expected: Path, got: dict[str, Any]) -> None:
    ref = json.loads((expected / "summary.json").read_text())
    for key in ("conversations", "records", "turns", "record_turns", "failures", "stop_reasons",
                "scores"):
        assert got[key] == ref[key], key
    for name, usage in ref["participants"].items():
        for key in ("turns", "prompt_tokens", "completion_tokens"):
            assert got["participants"][name][key] == usage[key], (name, key)


def logged_turns(shard_dir: Path) -> list[tuple[int, int, int]]:
    return [(e.index, e.branch, e.turn) for e in read_events(shard_dir / "turns.wal", truncate=False)
            if type(e) is TurnEvent]


TOML = """\
[run]
name = "ray"
conversations = 200
max_turns = 6
seed = 5
batch_size = 4
max_inflight = 1
wal_sync_s = 0.0

[backends.sim]
type = "scripted"
latency_s = 0.006
lines = ["Sure.", "Tell me more.", "Thanks [END]", "Hmm."]

[[participants]]
name = "user"
agent = "user-simulator"
system_prompt = "You are {profile.name}."
sampler = "inline"
sampler_settings.profiles = [{ name = "Ada" }, { name = "Bo" }]
settings.stop_phrases = ["[END]"]

[[participants]]
name = "assistant"
agent = "assistant"

[[branches]]
at_turn = 2
n = 2

[[scorers]]
name = "length"

[[scorers]]
name = "stop-reason"
"""
