"""The parts of a sharded run that need no Ray: the shard plan, replica dealing,
progress read from a growing log, merging shard outputs and summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import turnloom
from turnloom.config import Scenario
from turnloom.distributed.merge import combine_summaries, merge_outputs
from turnloom.distributed.plan import deal, fill_node_ip, plan_shards
from turnloom.distributed.walcount import WalCounter
from turnloom.wal import EndEvent, TurnEvent, read_events


@pytest.fixture(autouse=True)
def builtin_plugins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")


def scenario(conversations: int = 10, first_index: int = 0, **backend: object) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "plan", "conversations": conversations, "first_index": first_index,
                "max_turns": 4, "seed": 3},
        "backends": {"sim": {"type": "scripted", **backend}},
        "participants": [{"name": "user", "agent": "user-simulator"},
                         {"name": "assistant", "agent": "assistant"}],
        "branches": [{"at_turn": 1, "n": 2}],
        "scorers": [{"name": "length"}],
    })


@pytest.mark.parametrize("conversations,shards,sizes", [
    (10, 3, [4, 3, 3]), (10, 1, [10]), (2, 5, [1, 1]), (7, 7, [1] * 7)])
def test_shards_are_contiguous_and_cover_the_run(conversations: int, shards: int,
                                                 sizes: list[int]) -> None:
    plan = plan_shards(scenario(conversations, first_index=5), shards)
    assert [s.conversations for s in plan] == sizes
    assert plan[0].first_index == 5
    for a, b in zip(plan, plan[1:]):
        assert b.first_index == a.first_index + a.conversations
    assert [s.dir for s in plan] == [f"shards/{i:04d}" for i in range(len(plan))]


def test_replicas_are_dealt_to_shards() -> None:
    urls = [f"http://r{i}:30000" for i in range(5)]
    assert [deal(urls, i, 2) for i in range(2)] == [urls[0::2], urls[1::2]]
    assert [deal(urls[:2], i, 4) for i in range(4)] == [[urls[0]], [urls[1]], [urls[0]], [urls[1]]]
    plan = plan_shards(scenario(8), 2, urls={"sim": urls[:4]})
    assert [s.urls for s in plan] == [{"sim": [urls[0], urls[2]]}, {"sim": [urls[1], urls[3]]}]
    # A single-endpoint backend is left as it is.
    assert all(s.urls == {} for s in plan_shards(scenario(8), 2))
    # Each node's own replicas are not dealt out: every shard keeps them all.
    local = ["http://{node_ip}:30000", "http://{node_ip}:30001"]
    assert all(s.urls == {} for s in plan_shards(scenario(8, urls=local), 2))
    shard = plan_shards(scenario(8, urls=local), 2)[1]
    assert shard.scenario(scenario(8, urls=local)).backends["sim"].settings["urls"] == local
    with pytest.raises(ValueError, match="no backend named 'gpu'"):
        plan_shards(scenario(8), 2, urls={"gpu": urls})
    with pytest.raises(ValueError, match="shards: must be at least 1"):
        plan_shards(scenario(8), 0)


def test_node_ip_placeholder_is_filled() -> None:
    data = {"backends": {"a": {"settings": {"urls": ["http://{node_ip}:30000"]}},
                         "b": {"settings": {"urls": "http://{node_ip}:8000"}},
                         "c": {"settings": {}}}}
    filled = fill_node_ip(data, "10.0.0.7")
    assert filled["backends"]["a"]["settings"]["urls"] == ["http://10.0.0.7:30000"]
    assert filled["backends"]["b"]["settings"]["urls"] == "http://10.0.0.7:8000"


def test_wal_counter_reads_only_new_records(tmp_path: Path) -> None:
    run = turnloom.run(scenario(6), out=tmp_path / "run", progress=False)
    wal = (run.run_dir / "turns.wal").read_bytes()
    events = list(read_events(run.run_dir / "turns.wal", truncate=False))
    growing = tmp_path / "growing.wal"
    counter = WalCounter(growing)
    assert counter.poll().turns == 0  # not there yet
    cut = len(wal) // 2 + 3  # mid-record: the torn tail waits for the next poll
    growing.write_bytes(wal[:cut])
    partial = counter.poll().turns
    assert 0 < partial < run.summary["turns"]
    growing.write_bytes(wal)
    counts = counter.poll()
    assert counts.turns == sum(type(e) is TurnEvent for e in events) == run.summary["turns"]
    assert counts.conversations == sum(type(e) is EndEvent and e.tree_done for e in events) == 6
    assert counts.tokens == sum(p["completion_tokens"] for p in run.summary["participants"].values())


def test_merged_shards_equal_one_process_run(tmp_path: Path) -> None:
    """Shards run one after another in this process, merged: the single run's files."""
    full = scenario(9)
    single = turnloom.run(full, out=tmp_path / "single", progress=False)
    dirs, summaries = [], []
    for shard in plan_shards(full, 3):
        part = turnloom.run(shard.scenario(full), out=tmp_path / shard.dir, progress=False)
        (part.run_dir / "table.csv").write_text(f"index\n{shard.first_index}\n")
        (part.run_dir / "blob.bin").write_bytes(b"\x00")
        dirs.append(part.run_dir)
        summaries.append(part.summary)
    merged, left = merge_outputs(tmp_path, dirs)
    assert sorted(merged) == ["conversations.jsonl", "scores.jsonl", "table.csv"]
    assert left == ["blob.bin"] and not (tmp_path / "blob.bin").exists()
    for name in ("conversations.jsonl", "scores.jsonl"):
        assert (tmp_path / name).read_bytes() == (single.run_dir / name).read_bytes()
    assert (tmp_path / "table.csv").read_text() == "index\n0\n3\n6\n"
    summary = combine_summaries("plan", summaries, tmp_path / "scores.jsonl", wall_s=1.0)
    ref = single.summary
    for key in ("conversations", "records", "turns", "record_turns", "failures",
                "stop_reasons", "scores", "participants", "cache"):
        got, want = summary[key], ref[key]
        if key == "participants":  # latencies are timings, not totals of the run
            got = {n: {k: v for k, v in u.items() if "latency" not in k} for n, u in got.items()}
            want = {n: {k: v for k, v in u.items() if "latency" not in k} for n, u in want.items()}
        assert got == want, key
    assert json.dumps(summary)  # plain data
