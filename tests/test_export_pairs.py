"""Preference pairs (DPO) and REFUEL pairs from sibling branches, checked against
the run's own records; and bounded memory of streaming exports."""

from __future__ import annotations

import collections
import itertools
import json
import tracemalloc
from fractions import Fraction
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import turnloom
from turnloom import Scenario
from turnloom.exporters import export_run
from turnloom.plugins import get_plugin_manager

LINES = ["Start with a small test case.", "Yes, with one caveat about edge cases.",
         "I would split the problem in two and solve each half separately.",
         "Could you share the exact error message?", "A loop with an accumulator."]


def scenario(branches: list[dict[str, int]], conversations: int = 5, tokenizer: str = "bytes",
             max_turns: int = 6) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "pairs", "conversations": conversations, "max_turns": max_turns, "seed": 3},
        "backends": {"sim": {"type": "scripted", "lines": LINES, "tokenizer": tokenizer}},
        "participants": [
            {"name": "student", "agent": "scripted-user",
             "settings": {"lines": ["How do I sum a list?", "And if it is empty?", "Show me."]}},
            {"name": "tutor", "agent": "assistant", "system_prompt": "You are a tutor.",
             "sampling": {"max_new_tokens": 48, "temperature": 1.0}}],
        "branches": branches,
        "scorers": ["length"],
    })


def run(path: Path, s: Scenario) -> Path:
    turnloom.run(s, out=path, progress=False, plugin_manager=get_plugin_manager(autoload=False))
    return path


def export(run_dir: Path, name: str, **settings: Any) -> tuple[Path, dict[str, int]]:
    r = export_run(run_dir, name, settings, plugin_manager=get_plugin_manager(autoload=False))
    assert r.path is not None
    return r.path, r.stats


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def view(messages: list[dict[str, Any]], me: str) -> list[dict[str, str]]:
    return [{"role": "assistant" if m["name"] == me else "user", "content": m["content"]}
            for m in messages]


@pytest.fixture(scope="module")
def best_of_4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("pairs") / "bo4", scenario([{"at_turn": 1, "n": 4}]))


def test_dpo_pairs_every_untied_sibling_pair(best_of_4: Path) -> None:
    path, stats = export(best_of_4, "dpo-pairs", metric="length.words")
    rows = jsonl(path)
    records = jsonl(best_of_4 / "conversations.jsonl")
    expected = []
    for index, group in itertools.groupby(records, key=lambda r: r["index"]):
        sibs = list(group)
        for a, b in itertools.combinations(sibs, 2):
            wa, wb = a["scores"]["length"]["words"], b["scores"]["length"]["words"]
            if wa != wb:
                hi, lo = (a, b) if wa > wb else (b, a)
                expected.append((index, hi["branch"], lo["branch"]))
    assert [(r["index"], r["branch_chosen"], r["branch_rejected"]) for r in rows] == expected
    assert stats["skipped: tie"] == 5 * 6 - len(expected)
    by_key = {(r["index"], r["branch"]): r for r in records}
    for row in rows:
        chosen = by_key[(row["index"], row["branch_chosen"])]
        rejected = by_key[(row["index"], row["branch_rejected"])]
        assert row["score_chosen"] > row["score_rejected"]
        assert row["prompt"] == [{"role": "system", "content": "You are a tutor."}] + \
            view(chosen["messages"][1:2], "tutor")
        assert chosen["messages"][:2] == rejected["messages"][:2]  # shared history
        assert row["chosen"] == view(chosen["messages"][2:3], "tutor")
        assert row["rejected"] == view(rejected["messages"][2:3], "tutor")


def test_multi_turn_pairs_carry_whole_continuations(best_of_4: Path) -> None:
    path, _ = export(best_of_4, "dpo-pairs", metric="length.words", span="rest",
                     pairs="best-worst", format="parquet")
    rows = pq.read_table(path).to_pylist()
    records = {(r["index"], r["branch"]): r for r in jsonl(best_of_4 / "conversations.jsonl")}
    assert len(rows) <= 5
    for row in rows:
        chosen = records[(row["index"], row["branch_chosen"])]
        assert [(m["role"], m["content"]) for m in row["chosen"]] == \
            [(m["role"], m["content"]) for m in view(chosen["messages"][2:], "tutor")]
        sibs = [r["scores"]["length"]["words"] for (i, _), r in records.items() if i == row["index"]]
        assert (row["score_chosen"], row["score_rejected"]) == (max(sibs), min(sibs))


def test_pairs_at_nested_forks_share_their_history(tmp_path: Path) -> None:
    run_dir = run(tmp_path / "nested", scenario([{"at_turn": 1, "n": 2}, {"at_turn": 3, "n": 2}]))
    records = {(r["index"], r["branch"]): r for r in jsonl(run_dir / "conversations.jsonl")}
    assert {b for _, b in records} == {0, 1, 2, 3}
    path, _ = export(run_dir, "dpo-pairs", metric="turn:length.words", fork_turn=3)
    rows = jsonl(path)
    assert rows
    for row in rows:
        a = records[(row["index"], row["branch_chosen"])]
        b = records[(row["index"], row["branch_rejected"])]
        assert {row["branch_chosen"], row["branch_rejected"]} in ({0, 2}, {1, 3})
        assert a["messages"][:4] == b["messages"][:4]
        assert a["turns"][3]["scores"]["length"]["words"] > b["turns"][3]["scores"]["length"]["words"]
    with pytest.raises(ValueError, match="no \\[\\[branches\\]\\] at turn 2"):
        export(run_dir, "dpo-pairs", metric="length.words", fork_turn=2)


def test_refuel_pairs_with_rewards_and_token_ids(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    run_dir = run(tmp_path / "refuel", scenario([{"at_turn": 3, "n": 2}], conversations=8,
                                               tokenizer="smollm2-135m-instruct"))
    path, stats = export(run_dir, "refuel-pairs", metric="length.tokens", format="parquet")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                               cache_dir=str(tmp_path / "hf"))
    records = {(r["index"], r["branch"]): r for r in jsonl(run_dir / "conversations.jsonl")}
    from turnloom.models import load_chat_format

    fmt = load_chat_format("smollm2-135m-instruct")
    assert ds.num_rows + stats.get("skipped: same response", 0) == 8
    assert ds.num_rows > 0
    for row in ds:
        a, b = records[(row["index"], 0)], records[(row["index"], 1)]
        assert (row["branch_a"], row["branch_b"]) == (0, 1)
        assert len(a["turns"]) == len(b["turns"]) == 6
        assert row["fork_turn"] == 3 and row["h"] == 1 and row["horizon"] == 3  # tutor turns
        assert a["messages"][:4] == b["messages"][:4]
        assert row["response_a"] == a["messages"][4]["content"] != row["response_b"]
        assert row["reward_a"] == a["scores"]["length"]["tokens"]
        assert row["reward_diff"] == row["reward_a"] - row["reward_b"]
        prompt = [{"role": "system", "content": "You are a tutor."}] + view(a["messages"][1:4], "tutor")
        assert row["prompt_ids"] == fmt.render_full(prompt, add_generation_prompt=True)  # type: ignore[attr-defined]
        assert fmt.tokenizer.decode(row["response_b_ids"]) == row["response_b"] + "<|im_end|>"
        assert [m["content"] for m in row["trajectory_b"]] == [m["content"] for m in b["messages"][4:]]


def test_refuel_pairs_at_a_turn_drawn_per_conversation(tmp_path: Path) -> None:
    run_dir = run(tmp_path / "drawn", scenario([{"at_turn": 1, "to_turn": 5, "n": 2}],
                                              conversations=12, max_turns=8))
    path, stats = export(run_dir, "refuel-pairs", metric="length.words")
    records = {(r["index"], r["branch"]): r for r in jsonl(run_dir / "conversations.jsonl")}
    rows = jsonl(path)
    assert rows and len(rows) + stats.get("skipped: same response", 0) == 12
    for row in rows:
        a, b = records[(row["index"], 0)], records[(row["index"], 1)]
        h = row["fork_turn"]
        # The shared history ends exactly at the conversation's own fork turn.
        assert [t["seed"] for t in a["turns"][:h]] == [t["seed"] for t in b["turns"][:h]]
        assert a["turns"][h]["seed"] != b["turns"][h]["seed"]
        assert row["response_a"] == a["messages"][h + 1]["content"]
    assert len({row["fork_turn"] for row in rows}) >= 2
    assert {row["fork_turn"] for row in rows} <= {1, 3, 5}


def test_refuel_keeps_only_rollouts_that_reach_the_horizon(tmp_path: Path) -> None:
    # max_turns 6: three student and three tutor messages; the horizon counts the
    # tutor's turns (the paper's H), not messages.
    run_dir = run(tmp_path / "h", scenario([{"at_turn": 1, "n": 2}], conversations=4))
    _, stats = export(run_dir, "refuel-pairs", metric="length.words", horizon=3)
    assert stats.get("rows", 0) + stats.get("skipped: same response", 0) == 4
    assert stats.get("rows", 0) > 0
    _, stats = export(run_dir, "refuel-pairs", metric="length.words", horizon=4, file="h4.jsonl")
    assert stats["skipped: not finished to the same horizon"] == 4 and "rows" not in stats
    with pytest.raises(ValueError, match="horizon must be at least 1"):
        export(run_dir, "refuel-pairs", metric="length.words", horizon=0)
    with pytest.raises(ValueError, match="needs a horizon"):
        export(run_dir, "refuel-pairs", metric="length.words", h_sampling="official")


@pytest.fixture(scope="module")
def five_turns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's setting: H = 5 assistant turns (10 messages), forked at one
    tutor turn drawn per conversation from 0..4."""
    return run(tmp_path_factory.mktemp("refuel") / "h5",
               scenario([{"at_turn": 1, "to_turn": 9, "n": 2}], conversations=24, max_turns=10))


def test_refuel_horizon_5_counts_assistant_turns(five_turns: Path) -> None:
    path, stats = export(five_turns, "refuel-pairs", metric="length.words", horizon=5)
    rows = jsonl(path)
    records = {(r["index"], r["branch"]): r for r in jsonl(five_turns / "conversations.jsonl")}
    assert len(rows) + stats.get("skipped: same response", 0) == 24 and len(rows) >= 12
    for row in rows:
        a = records[(row["index"], 0)]
        assert row["horizon"] == 5 and row["fork_turn"] == 2 * row["h"] + 1
        assert len(row["trajectory_a"]) == 10 - row["fork_turn"]  # to the 5th tutor message
        assert row["trajectory_a"][-1]["content"] == a["messages"][-1]["content"]
        assert row["reward_a"] == a["scores"]["length"]["words"]
    assert {row["h"] for row in rows} <= set(range(5)) and len({row["h"] for row in rows}) >= 3


def test_refuel_official_sampling_law_matches_the_released_code() -> None:
    import numpy as np

    from turnloom.exporters.pairs import official_joint, refuel_length
    from turnloom.seeds import derive

    H = 5
    joint = official_joint(H)
    assert sum(joint.values()) == 1 and joint[(0, 4)] == Fraction(1, 25)
    assert joint[(0, 0)] == Fraction(1, 5) and (3, 2) not in joint
    # The released generate.py: sampled_len = choice(H); sampled_h = randint(0, len + 1).
    rs = np.random.RandomState(0)
    n = 60_000
    lengths = rs.choice(H, size=n)
    hs = rs.randint(0, lengths + 1)
    code = collections.Counter(zip(hs.tolist(), lengths.tolist()))
    ours: collections.Counter[tuple[int, int]] = collections.Counter()
    for seed in range(n * 5 // 2):  # the engine's h is uniform over the tutor turns
        h = derive(seed, "fork") % H
        last = refuel_length(seed, h, H, "official", drawn=True)
        if last is not None:
            ours[(h, last)] += 1
    kept = sum(ours.values())
    for key, p in joint.items():
        assert abs(ours[key] / kept - float(p)) < 0.01, key
        assert abs(code[key] / n - float(p)) < 0.01, key
    assert set(ours) == set(joint)
    # Uniform (Algorithm 1): every fork kept, rewarded at the last turn.
    assert all(refuel_length(s, s % H, H, "uniform", True) == H - 1 for s in range(50))


def test_refuel_official_cuts_rollouts_and_reads_the_turn_reward(five_turns: Path) -> None:
    path, stats = export(five_turns, "refuel-pairs", metric="turn:length.words", horizon=5,
                         h_sampling="official")
    rows = jsonl(path)
    assert rows
    records = {(r["index"], r["branch"]): r for r in jsonl(five_turns / "conversations.jsonl")}
    for row in rows:
        a, b = records[(row["index"], row["branch_a"])], records[(row["index"], row["branch_b"])]
        assert row["h"] < row["horizon"] <= 5
        end = 2 * row["horizon"]  # messages through the tutor's turn L = horizon - 1
        assert len(row["trajectory_b"]) == end - row["fork_turn"]
        assert row["trajectory_b"][-1]["content"] == b["messages"][end]["content"]
        assert row["reward_a"] == a["turns"][end - 1]["scores"]["length"]["words"]
        assert row["reward_b"] == b["turns"][end - 1]["scores"]["length"]["words"]
    assert len({row["horizon"] for row in rows}) >= 2
    # A conversation metric cannot reward a cut rollout.
    _, stats = export(five_turns, "refuel-pairs", metric="length.words", horizon=5,
                      h_sampling="official", file="conv.jsonl")
    assert stats.get("skipped: no reward at the horizon (use a turn: metric)", 0) > 0


def test_pair_exporters_need_a_metric_and_branches(tmp_path: Path, best_of_4: Path) -> None:
    with pytest.raises(ValueError, match="needs a metric"):
        export(best_of_4, "refuel-pairs")
    flat = run(tmp_path / "flat", scenario([], conversations=2))
    with pytest.raises(ValueError, match="no \\[\\[branches\\]\\]"):
        export(flat, "dpo-pairs", metric="length.words")


def _peak(run_dir: Path, name: str, **settings: Any) -> int:
    pm = get_plugin_manager(autoload=False)
    tracemalloc.start()
    try:
        export_run(run_dir, name, settings, plugin_manager=pm)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def sized_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sized")
    return (run(base / "small", scenario([{"at_turn": 1, "n": 2}], conversations=150)),
            run(base / "large", scenario([{"at_turn": 1, "n": 2}], conversations=1500)))


@pytest.mark.parametrize("name, settings", [
    ("sft-tokens", {"format": "parquet", "batch_rows": 64}),
    ("sft-messages", {}),
    ("dpo-pairs", {"metric": "length.words"}),
    ("refuel-pairs", {"metric": "length.words", "format": "parquet", "batch_rows": 64}),
])
def test_export_memory_does_not_grow_with_the_run(sized_runs: tuple[Path, Path], name: str,
                                                  settings: dict[str, Any]) -> None:
    small, large = sized_runs
    _peak(small, name, **settings)  # warm caches (imports, tokenizer tables)
    p_small = _peak(small, name, **settings)
    p_large = _peak(large, name, **settings)
    assert (large / "conversations.jsonl").read_bytes().count(b"\n") == 3000
    assert p_large < p_small * 1.5 + 256 * 1024, (p_small, p_large)
