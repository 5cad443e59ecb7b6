"""Dataset replay: the replay-user environment end to end on the scripted
backend (examples/replay.toml), the loaders of the public formats on records
written in their documented shapes, and the gold-history (prefill) contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom.plugins import get_plugin_manager
from turnloom.prefill import PrefilledMessage, prefill_messages
from turnloom.records import ConversationState
from turnloom.replay_data import ReplayDataError, load_replay

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "data" / "replay_sample.jsonl"


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def run(s: turnloom.Scenario, out: Path) -> list[dict[str, Any]]:
    turnloom.run(s, out=out, progress=False, plugin_manager=get_plugin_manager(autoload=False))
    return jsonl(out / "conversations.jsonl")


def scenario(settings: dict[str, Any], conversations: int = 4) -> turnloom.Scenario:
    return turnloom.Scenario.from_dict({
        "run": {"name": "replay", "conversations": conversations, "max_turns": 12, "seed": 1},
        "backends": {"sim": {"type": "scripted", "lines": ["Answer one.", "Answer two."]}},
        "participants": [{"name": "user", "agent": "replay-user", "settings": settings},
                         {"name": "assistant", "agent": "assistant"}],
        "scorers": ["length"]})


def test_example_replays_each_record_by_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the example's data path is relative to the repository root
    records = run(turnloom.load_scenario(ROOT / "examples" / "replay.toml"), tmp_path / "run")
    data = jsonl(SAMPLE)
    assert [r["index"] for r in records] == list(range(len(data)))
    for r, item in zip(records, data):
        said = [m["content"] for m in r["messages"] if m.get("name") == "user"]
        assert said == item["turns"]  # every user turn, in order, none invented
        assert len([m for m in r["messages"] if m.get("name") == "assistant"]) == len(said)
        assert r["stop_reason"] == "replay_end"
        assert r["meta"]["replay"] == {"id": item["id"], "meta": item["meta"]}


def test_more_conversations_than_records_fail_naming_the_file(tmp_path: Path) -> None:
    records = run(scenario({"path": str(SAMPLE)}, conversations=5), tmp_path / "run")
    assert records[4]["stop_reason"] == "error"
    assert "conversation 4 has no record" in records[4]["errors"][0]
    assert "holds 4" in records[4]["errors"][0]
    wrapped = run(scenario({"path": str(SAMPLE), "wrap": True}, conversations=5), tmp_path / "w")
    assert wrapped[4]["messages"][0]["content"] == jsonl(SAMPLE)[0]["turns"][0]


def test_bad_settings_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(turnloom.ScenarioError, match="does not exist"):
        run(scenario({"path": str(tmp_path / "none.jsonl")}), tmp_path / "r")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "turns": []}\n', encoding="utf-8")
    with pytest.raises(ReplayDataError, match=r"bad.jsonl:1: `turns` must be a non-empty list"):
        load_replay(bad)
    bad.write_text('{"turns": ["a"], "history": [{"role": "assistant", "content": "b"}]}\n')
    with pytest.raises(ReplayDataError, match=r"history\[0\] has role 'assistant'"):
        load_replay(bad)
    with pytest.raises(ReplayDataError, match="unknown replay format"):
        load_replay(bad, "sharegpt")


def test_gold_history_is_replayed_or_prefilled(tmp_path: Path) -> None:
    data = tmp_path / "gold.jsonl"
    data.write_text(json.dumps({"id": "g", "turns": ["Now the real question?"], "history": [
        {"role": "user", "content": "Earlier question."},
        {"role": "assistant", "content": "A gold answer."}]}) + "\n", encoding="utf-8")
    replayed = run(scenario({"path": str(data), "history": "replay"}, 1), tmp_path / "replay")
    said = [m["content"] for m in replayed[0]["messages"] if m.get("name") == "user"]
    assert said == ["Earlier question.", "Now the real question?"]
    assert "A gold answer." not in json.dumps(replayed[0]["messages"])
    prefilled = run(scenario({"path": str(data)}, 1), tmp_path / "prefill")
    # The engine places gold history: the gold messages are the conversation's first turns.
    assert prefilled[0]["stop_reason"] != "error", prefilled[0]["errors"]
    msgs = [m for m in prefilled[0]["messages"] if m["role"] != "system"]
    assert [m["content"] for m in msgs[:3]] == ["Earlier question.", "A gold answer.",
                                                "Now the real question?"]
    assert msgs[1]["name"] == "assistant"
    assert [t["meta"].get("prefilled") for t in prefilled[0]["turns"][:3]] == [True, True, None]


def test_prefill_messages_follow_the_speaking_order() -> None:
    class Gold:
        def __init__(self, pairs: list[tuple[str, str]]) -> None:
            self.pairs = pairs

        def prefill(self, conversation: ConversationState, me: str) -> list[tuple[str, str]]:
            return self.pairs

    state = ConversationState("c", 0, 1)
    pairs = [("user", "q1"), ("assistant", "a1")]
    got = prefill_messages(state, [("user", Gold(pairs)), ("assistant", object())],
                           ["user", "assistant"])
    assert got == [PrefilledMessage("user", "user", "q1"),
                   PrefilledMessage("assistant", "assistant", "a1")]
    with pytest.raises(ValueError, match="turn 0 belongs to 'assistant'"):
        prefill_messages(state, [("user", Gold(pairs)), ("assistant", object())],
                         ["assistant", "user"])
    assert prefill_messages(state, [("user", Gold([]))], ["user", "assistant"]) == []


# -- public formats, records written in their documented shapes --------------------------


def test_multi_if_rows(tmp_path: Path) -> None:
    row = {"key": "1001:1:en", "language": "English",
           "turn_1_prompt": json.dumps({"role": "user", "content": "Write a poem."}),
           "turn_1_instruction_id_list": json.dumps(["punctuation:no_comma"]),
           "turn_1_kwargs": json.dumps(["{}"]),
           "turn_2_prompt": json.dumps({"role": "user", "content": "Now in 50 words."}),
           "turn_2_instruction_id_list": json.dumps(["length_constraints:number_words"]),
           "turn_2_kwargs": json.dumps([json.dumps({"relation": "less than", "num_words": 50})]),
           "turn_3_prompt": "", "turn_3_instruction_id_list": "[]", "turn_3_kwargs": "[]"}
    path = tmp_path / "multi_if.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [item] = load_replay(path, "multi-if")
    assert item.id == "1001:1:en" and item.turns == ("Write a poem.", "Now in 50 words.")
    assert item.meta["instruction_id_list"] == [["punctuation:no_comma"],
                                                ["length_constraints:number_words"]]
    assert item.meta["kwargs"][1] == [{"relation": "less than", "num_words": 50}]


def test_mt_eval_leading_gold_turns_become_history(tmp_path: Path) -> None:
    row = {"id": "7", "conv": [
        {"user": "Remember: answer in French.", "sys": "OK", "id": "instruction",
         "do_inference": False},
        {"user": "Doc one.", "sys": "sport", "id": "a", "do_inference": True},
        {"user": "Doc two.", "sys": "politics", "id": "b", "do_inference": True}]}
    path = tmp_path / "mt_eval.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [item] = load_replay(path, "mt-eval")
    assert item.history == (("user", "Remember: answer in French."), ("assistant", "OK"))
    assert item.turns == ("Doc one.", "Doc two.")
    assert item.meta == {"turn_ids": ["a", "b"], "reference": ["sport", "politics"]}
    row["conv"].append({"user": "x", "sys": "y", "do_inference": False})
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ReplayDataError, match=r"conv\[3\] is a gold turn after a replayed one"):
        load_replay(path, "mt-eval")


def test_mt_bench_101_golden_context_per_turn(tmp_path: Path) -> None:
    hist = [{"user": f"u{i}", "bot": f"b{i}"} for i in range(1, 4)]
    path = tmp_path / "mtbench101.jsonl"
    path.write_text(json.dumps({"task": "GR", "id": 3, "history": hist}) + "\n"
                    + json.dumps({"task": "CM", "id": 4, "history": hist}) + "\n", encoding="utf-8")
    items = load_replay(path, "mt-bench-101")
    # GR: every turn evaluated (3 items); CM: its first turn is context only (2 items).
    assert [i.id for i in items] == ["3#1", "3#2", "3#3", "4#2", "4#3"]
    third = items[2]
    assert third.turns == ("u3",) and third.meta["reference"] == "b3"
    assert third.history == (("user", "u1"), ("assistant", "b1"), ("user", "u2"),
                             ("assistant", "b2"))
    assert items[0].history == () and items[3].history == (("user", "u1"), ("assistant", "b1"))


def test_parquet_rows(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"id": ["p1"], "turns": [["Hi.", "Bye."]],
                      "history": [json.dumps([{"role": "user", "content": "Q"},
                                              {"role": "assistant", "content": "A"}])]})
    pq.write_table(table, tmp_path / "r.parquet")
    [item] = load_replay(tmp_path / "r.parquet")
    assert item.turns == ("Hi.", "Bye.") and item.history == (("user", "Q"), ("assistant", "A"))
