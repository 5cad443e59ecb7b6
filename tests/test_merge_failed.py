"""A sharded run's merged summary leaves failed conversations out of the score means,
as a single-process run's does, and reports them apart."""

from __future__ import annotations

import json
from pathlib import Path

from turnloom.distributed.merge import combine_summaries, mean_scores


def write_scores(path: Path) -> Path:
    rows = [{"index": 0, "stop_reason": "max_turns", "scores": {"reward": {"value": 1.0}},
             "turn_scores": []},
            {"index": 1, "stop_reason": "error", "scores": {"reward": {"value": 0.0}},
             "turn_scores": []},
            {"index": 2, "stop_reason": "max_turns", "scores": {"reward": {"value": 0.5}},
             "turn_scores": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_failed_conversations_are_out_of_the_merged_means(tmp_path: Path) -> None:
    scores = write_scores(tmp_path / "scores.jsonl")
    assert mean_scores(scores) == {"reward.value": 0.75}
    assert mean_scores(scores, True) == {"reward.value": 0.0}
    assert mean_scores(scores, None) == {"reward.value": 0.5}
    shards = [{"failures": 0, "failed": {"ids": []}}, {"failures": 1, "failed": {"ids": ["r-1"]}}]
    merged = combine_summaries("r", shards, scores, 1.0)
    assert merged["scores"] == {"reward.value": 0.75}
    assert merged["failed"] == {"conversations": 1, "ids": ["r-1"], "in_score_means": False,
                                "scores": {"reward.value": 0.0}}
    assert combine_summaries("r", shards, scores, 1.0, score_failed=True)["scores"] == {
        "reward.value": 0.5}
