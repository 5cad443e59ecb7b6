"""End to end on the embedded SmolLM2 model through the transformers backend."""

from __future__ import annotations

from pathlib import Path

import pytest

import turnloom
from turnloom import Scenario
from turnloom.plugins import get_plugin_manager

pytestmark = pytest.mark.model


@pytest.fixture(scope="module", autouse=True)
def model_ready(embedded_model: None) -> None:
    """Every test here needs the embedded model."""


def scenario() -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "model", "conversations": 2, "max_turns": 2, "seed": 3, "batch_size": 2,
                "max_inflight": 1},
        "backends": {"local": {"type": "transformers", "tokenizer": "smollm2-135m-instruct",
                               "device": "cpu"}},
        "participants": [
            {"name": "user", "agent": "user-simulator", "system_prompt": "You are {profile.name}.",
             "sampler": "inline", "sampler_settings": {"profiles": [{"name": "Ada"}]},
             "sampling": {"max_new_tokens": 6, "temperature": 1.0}},
            {"name": "assistant", "agent": "assistant", "system_prompt": "Be brief.",
             "sampling": {"max_new_tokens": 6, "temperature": 1.0}},
        ],
        "scorers": ["length"],
    })


def test_model_conversations_are_well_formed_and_seeded(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        result = turnloom.run(scenario(), out=tmp_path / name, progress=False,
                              plugin_manager=get_plugin_manager(autoload=False))
        runs.append(result)
        recs = result.conversations()
        assert [r["index"] for r in recs] == [0, 1]
        for r in recs:
            assert len(r["turns"]) <= 2
            assert r["stop_reason"] in ("max_turns", "user_stop")
            assert all(t["completion_tokens"] <= 6 for t in r["turns"])
            assert all(t["finish_reason"] in ("stop", "length") for t in r["turns"])
        assert result.summary["failures"] == 0
        assert result.summary["participants"]["assistant"]["completion_tokens"] > 0
    # Same seed, same scheduling, same tokens.
    assert runs[0].conversations_path.read_bytes() == runs[1].conversations_path.read_bytes()
