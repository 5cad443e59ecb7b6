"""SFT exports (messages, ShareGPT, token ids with loss masks) loaded the way a
user would load them: json, pyarrow, and Hugging Face `datasets` where installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import turnloom
from turnloom import Scenario
from turnloom.exporters import export_run
from turnloom.models import load_chat_format
from turnloom.plugins import get_plugin_manager

LINES = ["Sure, here is a short answer.", "Could you tell me more? <b>&</b>",
         "Let me think.", "Three ideas: a list, a plan and a check."]
SMOLLM2 = "smollm2-135m-instruct"


def scenario(conversations: int = 6, tokenizer: str = SMOLLM2, **over: Any) -> Scenario:
    d: dict[str, Any] = {
        "run": {"name": "sft", "conversations": conversations, "max_turns": 6, "seed": 5},
        "backends": {"sim": {"type": "scripted", "lines": LINES, "tokenizer": tokenizer}},
        "participants": [
            {"name": "user", "agent": "user-simulator", "system_prompt": "You are {profile.name}.",
             "sampler": "inline", "sampler_settings": {"profiles": [{"name": "Ada"}, {"name": "Bo"}]}},
            {"name": "assistant", "agent": "assistant", "system_prompt": "Be brief.",
             "sampling": {"max_new_tokens": 32}},
        ],
        "scorers": ["length"],
    }
    d.update(over)
    return Scenario.from_dict(d)


def run(path: Path, s: Scenario) -> Path:
    turnloom.run(s, out=path, progress=False, plugin_manager=get_plugin_manager(autoload=False))
    return path


def export(run_dir: Path, name: str, **settings: Any) -> Path:
    result = export_run(run_dir, name, settings, plugin_manager=get_plugin_manager(autoload=False))
    assert result.path is not None and result.path.is_file()
    return result.path


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sft") / "run", scenario())


def masked_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = 0
    for i, m in zip(ids, mask):
        if m and not prev:
            runs.append([])
        if m:
            runs[-1].append(i)
        prev = m
    return runs


@pytest.mark.parametrize("participant", ["assistant", "user"])
def test_token_masks_cover_exactly_the_participants_messages(smol_run: Path, participant: str) -> None:
    path = export(smol_run, "sft-tokens", participant=participant, format="parquet",
                  file=f"tokens-{participant}.parquet")
    rows = pq.read_table(path).to_pylist()
    records = jsonl(smol_run / "conversations.jsonl")
    assert [r["id"] for r in rows] == [f"{r['conversation_id']}#{r['branch']}" for r in records]
    fmt = load_chat_format(SMOLLM2)
    tok = fmt.tokenizer
    for row, rec in zip(rows, records):
        assert len(row["input_ids"]) == len(row["loss_mask"]) == row["num_tokens"]
        assert set(row["loss_mask"]) == {0, 1}
        own = [m["content"] for m in rec["messages"] if m.get("name") == participant]
        decoded = [tok.decode(r) for r in masked_runs(row["input_ids"], row["loss_mask"])]
        assert decoded == [text + "<|im_end|>" for text in own]
        # The ids are the chat template's own render of the participant's view.
        sp = rec["participants"][participant]["system_prompt"]
        view = [{"role": "system", "content": sp}] + [
            {"role": "assistant" if m.get("name") == participant else "user", "content": m["content"]}
            for m in rec["messages"][1:]]
        assert row["input_ids"] == fmt.render_full(view)  # type: ignore[attr-defined]
        assert row["num_trained"] == sum(len(tok.encode(t)) + 1 for t in own)


def test_default_participant_is_the_assistant_and_jsonl_equals_parquet(smol_run: Path) -> None:
    a = jsonl(export(smol_run, "sft-tokens"))
    b = pq.read_table(export(smol_run, "sft-tokens", format="parquet")).to_pylist()
    assert a == b
    assert {r["participant"] for r in a} == {"assistant"}


def test_messages_and_sharegpt_match_the_transcript(smol_run: Path) -> None:
    records = jsonl(smol_run / "conversations.jsonl")
    rows = jsonl(export(smol_run, "sft-messages"))
    assert [r["messages"] for r in rows] == [r["messages"] for r in records]
    assert [r["scores"] for r in rows] == [r["scores"] for r in records]
    share = pq.read_table(export(smol_run, "sharegpt", format="parquet")).to_pylist()
    for row, rec in zip(share, records):
        assert json.loads(row["scores"]) == rec["scores"]  # a JSON string in Parquet
        froms = {"system": "system", "user": "human", "assistant": "gpt"}
        assert row["conversations"] == [{"from": froms[m["role"]], "value": m["content"]}
                                        for m in rec["messages"]]


def test_user_view_flips_roles_and_leads_with_its_own_prompt(smol_run: Path) -> None:
    rows = jsonl(export(smol_run, "sft-messages", participant="user", file="user.jsonl"))
    rec = jsonl(smol_run / "conversations.jsonl")[0]
    msgs = rows[0]["messages"]
    assert msgs[0] == {"role": "system", "content": rec["participants"]["user"]["system_prompt"]}
    for m, orig in zip(msgs[1:], rec["messages"][1:]):
        assert m["role"] == ("assistant" if orig["name"] == "user" else "user")
        assert m["content"] == orig["content"]


def test_hugging_face_datasets_loads_both_formats(smol_run: Path) -> None:
    datasets = pytest.importorskip("datasets")
    parquet = export(smol_run, "sft-tokens", format="parquet")
    lines = export(smol_run, "sft-messages")
    cache = smol_run.parent / "hf-cache"
    ds = datasets.load_dataset("parquet", data_files=str(parquet), split="train", cache_dir=str(cache))
    assert ds.num_rows == 6
    assert ds.features["loss_mask"].feature.dtype == "int8"
    assert len(ds[0]["input_ids"]) == len(ds[0]["loss_mask"])
    dj = datasets.load_dataset("json", data_files=str(lines), split="train", cache_dir=str(cache))
    assert dj[0]["messages"][0]["role"] == "system"


def test_filter_by_scores(smol_run: Path) -> None:
    records = jsonl(smol_run / "conversations.jsonl")
    words = [r["scores"]["length"]["words"] for r in records]
    cut = sorted(words)[len(words) // 2]
    result = export_run(smol_run, "sft-messages",
                        {"filter": f"scores.length.words >= {cut} and stop_reason == 'max_turns'",
                         "file": "filtered.jsonl"}, plugin_manager=get_plugin_manager(autoload=False))
    kept = [r["index"] for r in jsonl(smol_run / "filtered.jsonl")]
    assert kept == [r["index"] for r, w in zip(records, words) if w >= cut]
    assert result.stats["skipped: filter"] == len(records) - len(kept) > 0


def test_exporter_in_a_scenario_writes_what_export_run_writes(tmp_path: Path) -> None:
    s = scenario(tokenizer="bytes", exporters=[
        {"name": "openai-jsonl"},
        {"name": "sft-tokens", "settings": {"file": "live.jsonl"}}])
    run_dir = run(tmp_path / "live", s)
    after = export(run_dir, "sft-tokens", file="after.jsonl")
    assert (run_dir / "live.jsonl").read_bytes() == after.read_bytes()
    assert len(jsonl(after)) == 6


@pytest.mark.parametrize("settings, message", [
    ({"participnt": "user"}, "unknown field `participnt`"),
    ({"format": "csv"}, "format"),
    ({"filter": "scores.length.words >"}, "expected a field, number or string at the end"),
])
def test_bad_settings_name_the_exporter_and_field(smol_run: Path, settings: dict[str, Any],
                                                  message: str) -> None:
    with pytest.raises(ValueError, match="sft-tokens") as info:
        export_run(smol_run, "sft-tokens", settings, plugin_manager=get_plugin_manager(autoload=False))
    assert message in str(info.value)


def test_environment_participant_cannot_be_trained(tmp_path: Path) -> None:
    s = scenario(tokenizer="bytes", participants=[
        {"name": "student", "agent": "scripted-user", "settings": {"lines": ["hi", "why?"]}},
        {"name": "tutor", "agent": "assistant"}])
    run_dir = run(tmp_path / "env", s)
    with pytest.raises(ValueError, match="'student'.*environment"):
        export(run_dir, "sft-tokens", participant="student")
    rows = jsonl(export(run_dir, "sft-tokens"))
    assert {r["participant"] for r in rows} == {"tutor"}


def test_cli_export(smol_run: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    from turnloom.cli import main

    monkeypatch.setenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    out = smol_run.parent / "cli.parquet"
    rc = main(["export", str(smol_run), "sft-tokens", "--set", "format=parquet",
               "--set", "filter=scores.length.turns >= 6", "--out", str(out)])
    assert rc == 0
    assert f"6 rows from 6 records -> {out}" in capsys.readouterr().out
    assert pq.read_table(out).num_rows == 6
    assert main(["export", str(smol_run), "no-such-format"]) == 2
    assert "no-such-format" in capsys.readouterr().err
    assert main(["export", str(smol_run), "sft-tokens", "--set", "nokey"]) == 2
