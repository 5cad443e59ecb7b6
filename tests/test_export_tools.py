"""Exports of a tool-use run: `sft-messages` rows in OpenAI's tool-calling form, with the
agent's tools, that transformers' `apply_chat_template(messages, tools=...)` renders with
the SmolLM2 tokenizer and a tool-aware (Qwen2.5-style) template, in JSON lines and in
Parquet; `sft-tokens` rows that extend the prompts the agent was actually sent, with the
loss mask on the agent's own tokens (tool calls included) and tool results and the
customer masked.

TRL is not installed here; its SFT trainer renders such rows through the same
`apply_chat_template(messages, tools=...)` call, which is what is checked.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import pytest

import turnloom
from turnloom import export_run, hookimpl
from turnloom.backends.base import GenRequest, GenResult
from turnloom.backends.scripted import ScriptedBackend
from turnloom.models import resolve_model
from turnloom.plugins import get_plugin_manager

transformers = pytest.importorskip("transformers")
pytest.importorskip("turnloom_tau")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests" / "data" / "templates" / "qwen25_tools.jinja"
CONVERSATIONS = 3


class Recording(ScriptedBackend):
    """The scripted backend, keeping every request it is sent."""

    requests: list[GenRequest] = []

    async def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        Recording.requests.extend(requests)
        return await super().generate(requests)


class Plugin:
    @hookimpl
    def register_backends(self, register: Any) -> None:
        register("recording", Recording.from_settings)


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer with the tool-aware template (SmolLM2's own ignores tools)."""
    if not TEMPLATE.is_file():
        pytest.skip("the Qwen2.5-style tools template is not in tests/data/templates")
    src = resolve_model("smollm2-135m-instruct")
    out = tmp_path_factory.mktemp("smollm2-tools")
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, out / name)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "chat_template.jinja").write_text(TEMPLATE.read_text())
    return out


@pytest.fixture(scope="module")
def hf_tokenizer(tool_model: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(tool_model))


@pytest.fixture(scope="module")
def run_dir(tool_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (ROOT / "examples" / "tool_use.toml").read_text()
    text = text.replace("conversations = 68", f"conversations = {CONVERSATIONS}")
    text = text.replace('type = "scripted"', f'type = "recording"\ntokenizer = "{tool_model.as_posix()}"')
    text = text.replace('scripts_file = "examples/', f'scripts_file = "{ROOT.as_posix()}/examples/')
    scenario = tool_model.parent / "tool_use.toml"
    scenario.write_text(text)
    pm = get_plugin_manager()
    pm.register(Plugin())
    Recording.requests = []
    out = tool_model.parent / "run"
    turnloom.run(turnloom.load_scenario(scenario), out=out, progress=False, plugin_manager=pm)
    return out


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_run_used_tools_and_scored_one(run_dir: Path) -> None:
    recs = rows(run_dir / "conversations.jsonl")
    assert [r["scores"]["tau-reward"]["reward"] for r in recs] == [1.0] * CONVERSATIONS


def test_sft_messages_are_openai_tool_calling_and_render_with_tools(
        run_dir: Path, hf_tokenizer: Any) -> None:
    export_run(run_dir, "sft-messages", {"participant": "agent", "file": "agent.jsonl"})
    out = rows(run_dir / "agent.jsonl")
    assert len(out) == CONVERSATIONS
    for row in out:
        messages, tools = row["messages"], row["tools"]
        assert {t["function"]["name"] for t in tools} >= {"get_order", "cancel_order"}
        calls = [c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        results = [m for m in messages if m["role"] == "tool"]
        assert calls and all(c["type"] == "function" and isinstance(c["function"]["arguments"], str)
                             for c in calls)
        assert [m["tool_call_id"] for m in results] == [c["id"] for c in calls]
        text = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        assert "<tools>" in text and '"name": "cancel_order"' in text
        assert text.count('<tool_call>\n{"name": "') == len(calls)
        assert text.count("<tool_response>") == len(results)


def test_sft_messages_parquet_keeps_tool_calls(run_dir: Path, hf_tokenizer: Any) -> None:
    datasets = pytest.importorskip("datasets")
    export_run(run_dir, "sft-messages", {"participant": "agent", "format": "parquet",
                                         "file": "agent.parquet"})
    ds = datasets.load_dataset("parquet", data_files=str(run_dir / "agent.parquet"),
                               split="train")
    jsonl = rows(run_dir / "agent.jsonl") if (run_dir / "agent.jsonl").exists() else None
    row = ds[0]
    calls = [m for m in row["messages"] if m["tool_calls"]]
    assert calls and calls[0]["tool_calls"][0]["function"]["name"] == "find_customer_by_email"
    assert [m["tool_call_id"] for m in row["messages"] if m["role"] == "tool"]
    tools = json.loads(row["tools"])  # free-form JSON: a string in Parquet
    # null fields dropped, the rows render exactly as the JSON lines rows do
    messages = [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]
    text = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    if jsonl is not None:
        first = jsonl[0]
        assert text == hf_tokenizer.apply_chat_template(first["messages"], tools=first["tools"],
                                                        tokenize=False)


def test_sft_tokens_extend_the_agents_prompts_and_mask_all_but_its_own_tokens(
        run_dir: Path, tool_model: Path, hf_tokenizer: Any) -> None:
    export_run(run_dir, "sft-tokens", {"participant": "agent", "file": "tokens.jsonl"})
    out = {r["conversation_id"]: r for r in rows(run_dir / "tokens.jsonl")}
    recs = {r["conversation_id"]: r for r in rows(run_dir / "conversations.jsonl")}
    assert len(out) == CONVERSATIONS
    for cid, row in out.items():
        ids, mask = row["input_ids"], row["loss_mask"]
        # the whole view as transformers renders it with the tools
        rec = recs[cid]
        export_run(run_dir, "sft-messages", {"participant": "agent", "file": "m.jsonl",
                                             "filter": f"conversation_id == '{cid}'"})
        (view,) = rows(run_dir / "m.jsonl")
        text = hf_tokenizer.apply_chat_template(view["messages"], tools=view["tools"],
                                                tokenize=False)
        assert ids == hf_tokenizer(text, add_special_tokens=False).input_ids
        # every prompt the agent was sent for this conversation is a prefix of the row
        case = re.search(r"\(case shop-\d+\)", rec["messages"][1]["content"]).group(0)
        sent = [r.input_ids for r in Recording.requests
                if case in hf_tokenizer.decode(r.input_ids) and "# Tools" in
                hf_tokenizer.decode(r.input_ids)]
        assert len(sent) == sum(t["participant"] == "agent" for t in rec["turns"])
        for prompt in sent:
            assert ids[:len(prompt)] == prompt
        trained = hf_tokenizer.decode([i for i, m in zip(ids, mask) if m])
        untrained = hf_tokenizer.decode([i for i, m in zip(ids, mask) if not m])
        agent_said = [m for m in view["messages"] if m["role"] == "assistant"]
        for m in agent_said:
            if m["content"]:
                assert m["content"] in trained
            for c in m.get("tool_calls") or []:
                assert c["function"]["arguments"] in trained  # tool calls are trained
        for m in view["messages"]:
            if m["role"] in ("tool", "user"):
                assert m["content"] not in trained and m["content"] in untrained
        assert trained.count("<|im_end|>") == len(agent_said)  # each own turn's end
