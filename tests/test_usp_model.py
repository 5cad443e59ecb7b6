"""examples/usp.toml end to end on the embedded SmolLM2 model, scaled down: the simulated
users, the assistant and the extractor judge all generate; every record carries the
profile, the metrics and a consistency score or a counted parse failure."""

from __future__ import annotations

from pathlib import Path

import pytest

import turnloom
from turnloom import Scenario
from turnloom.plugins import get_plugin_manager

pytestmark = pytest.mark.model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "usp.toml"


@pytest.fixture(scope="module", autouse=True)
def model_ready(embedded_model: None) -> None:
    pytest.importorskip("turnloom_usp")


def small_example() -> Scenario:
    data = Scenario.from_toml(EXAMPLE).to_dict()
    data["run"].update(conversations=2, max_turns=2)
    for p in data["participants"]:
        p["sampling"]["max_new_tokens"] = 12
    data["judges"][0]["sampling"]["max_new_tokens"] = 24
    return Scenario.from_dict(data)


@pytest.mark.timeout(1200)  # generation, two judge questions and the embedder on a shared 2-core CPU
def test_usp_example_runs_on_the_embedded_model(tmp_path: Path) -> None:
    import turnloom_usp.plugin
    from turnloom_usp.diversity import diversity

    pm = get_plugin_manager(autoload=False)
    pm.register(turnloom_usp.plugin, name="usp")
    result = turnloom.run(small_example(), out=tmp_path / "usp", progress=False,
                          plugin_manager=pm)
    records = result.conversations()
    assert [r["index"] for r in records] == [0, 1]
    assert result.summary["failures"] == 0
    for r in records:
        user = r["participants"]["user"]
        assert user["profile"]["facts"]["goal"] in user["system_prompt"]
        assert r["turns"][0]["participant"] == "user" and r["turns"][0]["completion_tokens"] > 0
        assert r["stop_reason"] in ("max_turns", "user_done")
        scores = r["scores"]
        assert {"loop", "user_turns"} <= set(scores["usp-loops"])
        assert 0.0 <= scores["usp-faults"]["fault_rate"] <= 1.0
        consistency = scores["consistency"]
        # two judge calls (facts, profile); each parses or is counted as unparseable
        assert consistency["unparseable"] in (0, 1, 2)
        judged = int("facts_supported" in consistency) + consistency["extracted"]
        assert judged + consistency["unparseable"] == 2
        if consistency["extracted"]:
            assert -1.0 <= consistency["profile_similarity"] <= 1.0
        if "facts_supported" in consistency:
            assert 0.0 <= consistency["facts_supported"] <= 1.0
    assert result.summary["judges"]["consistency"]["completion_tokens"] > 0
    assert diversity(records)["users"] == 2
