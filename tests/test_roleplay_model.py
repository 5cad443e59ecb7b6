"""examples/roleplay.toml end to end on the embedded SmolLM2 model, scaled down: the
persona answers labelled questions and the three judges generate their verdicts; every
record carries scores or counted parse failures."""

from __future__ import annotations

from pathlib import Path

import pytest

import turnloom
from turnloom import Scenario
from turnloom.plugins import get_plugin_manager

pytestmark = pytest.mark.model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "roleplay.toml"


@pytest.fixture(scope="module", autouse=True)
def model_ready(embedded_model: None) -> None:
    pytest.importorskip("turnloom_roleplay")


def small_example() -> Scenario:
    data = Scenario.from_toml(EXAMPLE).to_dict()
    data["run"].update(conversations=2, max_turns=4)
    data["participants"][0]["settings"]["questions"] = 2
    data["participants"][1]["sampling"]["max_new_tokens"] = 12
    for judge in data["judges"]:
        judge["settings"]["samples"] = 2
    return Scenario.from_dict(data)


def test_roleplay_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    import turnloom_roleplay.plugin

    pm = get_plugin_manager(autoload=False)
    pm.register(turnloom_roleplay.plugin, name="roleplay")
    result = turnloom.run(small_example(), out=tmp_path / "rp", progress=False,
                          plugin_manager=pm)
    records = result.conversations()
    assert [r["index"] for r in records] == [0, 1]
    assert result.summary["failures"] == 0
    for r in records:
        assert [t["participant"] for t in r["turns"]] == ["questioner", "persona"] * 2
        labels = sorted(t["meta"]["label"] for t in r["turns"] if t["participant"] == "questioner")
        assert labels == ["in-knowledge", "out-of-knowledge"]
        scores = r["scores"]
        # Per turn (2 questions) and sample (2): four identity calls; knowledge on every turn.
        assert scores["identity"]["turns"] == 2 and scores["identity"]["unparseable"] <= 4
        assert scores["knowledge"]["rated"] + scores["knowledge"]["unparseable"] == 2
        rejection = scores["rejection"]
        assert rejection["judged"] + rejection["no_votes"] == 2
        assert rejection["unparseable"] <= 4
    for name in ("identity", "knowledge", "rejection"):
        assert result.summary["judges"][name]["completion_tokens"] > 0
